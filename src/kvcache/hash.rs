//! Content hashes of full KV blocks, the keys of the prefix cache.
//!
//! A block's hash chains its parent's hash (the block before it in the sequence), its
//! token ids and optional extra keys (e.g. a cache salt), so two blocks get the same
//! hash only when their whole prefix is equal. Only FULL blocks are ever hashed.
//!
//! The hash is a 64-bit multiply-xorshift mix written here (no `RandomState`), so it is
//! the same across runs and processes. With `n` cached blocks the chance of any
//! collision is about `n² / 2^65` (≈ 3e-8 for a million blocks).

use crate::request::TokenId;

/// Seed of the chain for the first block of a sequence (no parent).
const ROOT_SEED: u64 = 0x243F_6A88_85A3_08D3;
/// Odd 64-bit multipliers (from wyhash / splitmix64).
const MUL_A: u64 = 0xA076_1D64_78BD_642F;
const MUL_B: u64 = 0xE703_7ED1_A0B4_28DB;
/// Marks the start of the extra keys so `tokens ++ [k]` and `tokens` + key `k` differ.
const EXTRA_KEY_TAG: u64 = 0x5851_F42D_4C95_7F2D;
/// Marks the adapter key, so a salt `s` and an adapter `s` differ.
const LORA_KEY_TAG: u64 = 0x1405_7B7E_F767_814F;

/// The chained hash of one full block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

/// Optional inputs of a block hash besides its tokens (vLLM's "extra keys").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtraKeys {
    /// Isolates one tenant's cache entries from another's; `None` shares with everyone.
    pub salt: Option<u64>,
    /// The LoRA adapter the block's K/V were computed under (`None`: the base model):
    /// the same tokens give other K/V under another adapter, so they never share a block.
    pub lora: Option<u64>,
}

/// splitmix64 finalizer: every input bit affects every output bit.
fn finalize(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Folds one 64-bit word into the running state.
fn absorb(state: u64, word: u64) -> u64 {
    let mixed = (state ^ word).wrapping_mul(MUL_A);
    (mixed ^ (mixed >> 29)).wrapping_mul(MUL_B).rotate_left(23)
}

impl BlockHash {
    /// Hash of a full block `tokens` whose predecessor block hashed to `parent`
    /// (`None` for the first block of a sequence).
    pub fn new(parent: Option<BlockHash>, tokens: &[TokenId], extra: ExtraKeys) -> Self {
        let mut state = match parent {
            Some(BlockHash(p)) => absorb(ROOT_SEED, p ^ MUL_B),
            None => ROOT_SEED,
        };
        state = absorb(state, tokens.len() as u64);
        // Two token ids per word: [len] tokens → [len.div_ceil(2)] words.
        for pair in tokens.chunks(2) {
            let lo = u64::from(pair[0]);
            let hi = pair.get(1).map_or(u64::MAX >> 32, |&t| u64::from(t));
            state = absorb(state, lo | (hi << 32));
        }
        if let Some(salt) = extra.salt {
            state = absorb(absorb(state, EXTRA_KEY_TAG), salt);
        }
        if let Some(lora) = extra.lora {
            state = absorb(absorb(state, LORA_KEY_TAG), lora);
        }
        BlockHash(finalize(state))
    }
}

/// Hashes of the full blocks of `tokens`, extending `hashes` (which already holds the
/// hashes of the first `hashes.len()` blocks) up to `tokens.len() / block_size` blocks.
/// The salt applies to the first block only; it then flows down the chain.
pub fn extend_block_hashes(
    hashes: &mut Vec<BlockHash>,
    tokens: impl Iterator<Item = TokenId>,
    num_tokens: usize,
    block_size: usize,
    extra: ExtraKeys,
) {
    let num_full = num_tokens / block_size;
    if hashes.len() >= num_full {
        return;
    }
    let mut block: Vec<TokenId> = Vec::with_capacity(block_size);
    let skip = hashes.len() * block_size;
    let wanted = num_full * block_size - skip;
    for token in tokens.skip(skip).take(wanted) {
        block.push(token);
        if block.len() == block_size {
            let parent = hashes.last().copied();
            let keys = if parent.is_none() {
                extra
            } else {
                ExtraKeys::default()
            };
            hashes.push(BlockHash::new(parent, &block, keys));
            block.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_EXTRA: ExtraKeys = ExtraKeys {
        salt: None,
        lora: None,
    };

    #[test]
    fn deterministic_and_token_sensitive() {
        let a = BlockHash::new(None, &[1, 2, 3, 4], NO_EXTRA);
        assert_eq!(a, BlockHash::new(None, &[1, 2, 3, 4], NO_EXTRA));
        // A fixed value pins the function across runs and builds.
        assert_eq!(a, BlockHash(7_184_935_986_870_534_772));
        assert_ne!(a, BlockHash::new(None, &[1, 2, 4, 3], NO_EXTRA));
        assert_ne!(a, BlockHash::new(None, &[1, 2, 3, 5], NO_EXTRA));
        assert_ne!(a, BlockHash::new(None, &[1, 2, 3], NO_EXTRA));
        // Token 0 must not vanish into the padding of an odd-length block.
        assert_ne!(
            BlockHash::new(None, &[7], NO_EXTRA),
            BlockHash::new(None, &[7, 0], NO_EXTRA)
        );
    }

    #[test]
    fn parent_and_salt_change_the_hash() {
        let p1 = BlockHash::new(None, &[9, 9], NO_EXTRA);
        let p2 = BlockHash::new(None, &[8, 8], NO_EXTRA);
        let tokens = [5, 6];
        let under_p1 = BlockHash::new(Some(p1), &tokens, NO_EXTRA);
        assert_ne!(under_p1, BlockHash::new(Some(p2), &tokens, NO_EXTRA));
        assert_ne!(under_p1, BlockHash::new(None, &tokens, NO_EXTRA));
        let salted = ExtraKeys {
            salt: Some(1),
            lora: None,
        };
        assert_ne!(
            BlockHash::new(None, &tokens, salted),
            BlockHash::new(None, &tokens, NO_EXTRA)
        );
        assert_ne!(
            BlockHash::new(None, &tokens, salted),
            BlockHash::new(
                None,
                &tokens,
                ExtraKeys {
                    salt: Some(2),
                    lora: None,
                }
            )
        );
    }

    #[test]
    fn no_collisions_over_many_small_blocks() {
        let mut seen = std::collections::HashSet::new();
        for a in 0..200u32 {
            for b in 0..200u32 {
                assert!(seen.insert(BlockHash::new(None, &[a, b], NO_EXTRA)));
            }
        }
    }

    #[test]
    fn chain_equal_prefixes_share_hashes() {
        let bs = 4;
        let a: Vec<TokenId> = (0..14).collect(); // 3 full blocks
        let mut b = a.clone();
        b[9] = 100; // differs in block 2 (tokens 8..12)
        let (mut ha, mut hb) = (Vec::new(), Vec::new());
        extend_block_hashes(&mut ha, a.iter().copied(), a.len(), bs, NO_EXTRA);
        extend_block_hashes(&mut hb, b.iter().copied(), b.len(), bs, NO_EXTRA);
        assert_eq!(ha.len(), 3);
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
        // Block 1's hash chains block 0's.
        assert_eq!(ha[1], BlockHash::new(Some(ha[0]), &a[4..8], NO_EXTRA));
    }

    #[test]
    fn extend_is_incremental() {
        let bs = 3;
        let tokens: Vec<TokenId> = (10..30).collect();
        let mut all_at_once = Vec::new();
        extend_block_hashes(&mut all_at_once, tokens.iter().copied(), 20, bs, NO_EXTRA);
        let mut stepwise = Vec::new();
        for n in 0..=20 {
            extend_block_hashes(&mut stepwise, tokens.iter().copied(), n, bs, NO_EXTRA);
        }
        assert_eq!(all_at_once.len(), 6);
        assert_eq!(all_at_once, stepwise);
    }

    #[test]
    fn salt_isolates_whole_chain() {
        let tokens: Vec<TokenId> = (0..8).collect();
        let (mut plain, mut salted) = (Vec::new(), Vec::new());
        extend_block_hashes(&mut plain, tokens.iter().copied(), 8, 4, NO_EXTRA);
        let extra = ExtraKeys {
            salt: Some(42),
            lora: None,
        };
        extend_block_hashes(&mut salted, tokens.iter().copied(), 8, 4, extra);
        assert_ne!(plain[0], salted[0]);
        assert_ne!(plain[1], salted[1]);
    }

    #[test]
    fn adapter_key_isolates_whole_chain_and_differs_from_salt() {
        let tokens: Vec<TokenId> = (0..8).collect();
        let keyed = |salt, lora| {
            let mut hashes = Vec::new();
            let extra = ExtraKeys { salt, lora };
            extend_block_hashes(&mut hashes, tokens.iter().copied(), 8, 4, extra);
            hashes
        };
        let (base, one, two) = (
            keyed(None, None),
            keyed(None, Some(1)),
            keyed(None, Some(2)),
        );
        for i in 0..2 {
            assert_ne!(base[i], one[i]);
            assert_ne!(one[i], two[i]);
        }
        assert_ne!(keyed(Some(1), None), one);
    }
}
