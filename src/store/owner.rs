//! `Owner`: whose data a row is. Stored rows carry the SHA-256 of the API key that made
//! them (hex, domain-separated), never the key: a database dump reveals no key, and a key
//! sees exactly the rows it made. Without `--api-key` every request is one anonymous
//! owner.
//!
//! API keys are random secrets, not passwords, so an unsalted hash is enough: it cannot
//! be reversed, and equal keys must map to equal owners across replicas.

use sha2::{Digest, Sha256};

/// Owner of requests made without API keys configured.
const ANONYMOUS: &str = "anonymous";

/// Prefix hashed before the key, so this hash never equals another use of SHA-256(key).
const DOMAIN: &[u8] = b"tessera-owner-v1\0";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    /// The owner of requests when no API keys are configured.
    pub fn anonymous() -> Self {
        Owner(ANONYMOUS.to_string())
    }

    /// The owner of requests authenticated with `api_key`.
    pub fn of_key(api_key: &str) -> Self {
        let mut hash = Sha256::new();
        hash.update(DOMAIN);
        hash.update(api_key.as_bytes());
        let digest = hash.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Owner(format!("key-{hex}"))
    }

    /// The stored form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_hashes_never_keys() {
        let a = Owner::of_key("sk-secret-a");
        assert_eq!(a, Owner::of_key("sk-secret-a"));
        assert_ne!(a, Owner::of_key("sk-secret-b"));
        assert!(!a.as_str().contains("secret"));
        assert_eq!(a.as_str().len(), "key-".len() + 64);
        assert_ne!(a, Owner::anonymous());
    }
}
