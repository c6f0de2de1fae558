//! The hot cache: the recent histories of busy dialogs in memory, so a turn does not
//! load its whole history from the database (`--dialog-cache-size`, bytes).
//!
//! An entry is keyed by a conversation id or a response id and carries a `Stamp` that
//! says which stored state it is: a conversation's `version` (bumped by every write, on
//! any replica), or a response's chain of stored ancestors (changed when one is
//! deleted). A reader compares the stamp with the database's (one cheap query) before
//! trusting the entry.
//!
//! Invariants: the bytes of all entries stay within the limit (least recently used
//! entries are evicted first; an entry larger than the limit is not kept); an entry is
//! only ever read by the owner it was made for.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::items::Message;
use crate::store::Owner;

/// Which stored state an entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stamp {
    Conversation { version: i64 },
    Chain { response_ids: Arc<Vec<String>> },
}

/// A dialog's history (its context for the next turn) as of `stamp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub owner: Owner,
    pub stamp: Stamp,
    pub messages: Arc<Vec<Message>>,
}

impl Context {
    fn size(&self, key: &str) -> usize {
        let stamp = match &self.stamp {
            Stamp::Conversation { .. } => 8,
            Stamp::Chain { response_ids } => response_ids.iter().map(|id| id.len() + 24).sum(),
        };
        key.len() + stamp + self.messages.iter().map(Message::size).sum::<usize>() + 128
    }
}

#[derive(Default)]
struct Lru {
    entries: HashMap<String, (Arc<Context>, u64, usize)>,
    /// Last-use tick → key.
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
}

pub struct HotCache {
    limit: usize,
    lru: Mutex<Lru>,
}

impl HotCache {
    /// A cache of at most `limit` bytes (0 disables it).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            lru: Mutex::new(Lru::default()),
        }
    }

    /// The entry for `key` if `owner` made it; marks it used.
    pub fn get(&self, key: &str, owner: &Owner) -> Option<Arc<Context>> {
        let mut lru = self.lru.lock().ok()?;
        let lru = &mut *lru;
        lru.tick += 1;
        let tick = lru.tick;
        let (history, used, _) = lru.entries.get_mut(key)?;
        if &history.owner != owner {
            return None;
        }
        lru.order.remove(used);
        *used = tick;
        lru.order.insert(tick, key.to_string());
        Some(history.clone())
    }

    /// Stores `history` under `key`, evicting the least recently used entries to fit.
    pub fn put(&self, key: &str, history: Arc<Context>) {
        let size = history.size(key);
        let Ok(mut lru) = self.lru.lock() else {
            return;
        };
        lru.remove(key);
        if size > self.limit {
            return;
        }
        while lru.bytes + size > self.limit {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            lru.remove(&oldest);
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.order.insert(tick, key.to_string());
        lru.entries.insert(key.to_string(), (history, tick, size));
        lru.bytes += size;
    }

    /// Forgets `key` (its stored state changed in a way the cache cannot follow).
    pub fn remove(&self, key: &str) {
        if let Ok(mut lru) = self.lru.lock() {
            lru.remove(key);
        }
    }

    /// (entries, bytes) held now.
    pub fn usage(&self) -> (usize, usize) {
        self.lru
            .lock()
            .map(|l| (l.entries.len(), l.bytes))
            .unwrap_or_default()
    }
}

impl Lru {
    fn remove(&mut self, key: &str) {
        if let Some((_, used, size)) = self.entries.remove(key) {
            self.order.remove(&used);
            self.bytes -= size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialog::items::Role;

    fn history(owner: &Owner, text_len: usize) -> Arc<Context> {
        Arc::new(Context {
            owner: owner.clone(),
            stamp: Stamp::Conversation { version: 1 },
            messages: Arc::new(vec![Message::new(Role::User, "x".repeat(text_len), 0)]),
        })
    }

    #[test]
    fn least_recently_used_entries_go_first_and_bytes_stay_bounded() {
        let owner = Owner::anonymous();
        let one = history(&owner, 1000).size("conv_a");
        let cache = HotCache::new(one * 2 + one / 2);
        cache.put("conv_a", history(&owner, 1000));
        cache.put("conv_b", history(&owner, 1000));
        assert!(cache.get("conv_a", &owner).is_some()); // a is now newer than b
        cache.put("conv_c", history(&owner, 1000));
        assert!(
            cache.get("conv_b", &owner).is_none(),
            "b was least recently used"
        );
        assert!(cache.get("conv_a", &owner).is_some());
        assert!(cache.get("conv_c", &owner).is_some());
        assert_eq!(cache.usage(), (2, one * 2));
        cache.put("conv_huge", history(&owner, one * 4));
        assert!(
            cache.get("conv_huge", &owner).is_none(),
            "larger than the limit"
        );
        cache.remove("conv_a");
        assert_eq!(cache.usage(), (1, one));
    }

    #[test]
    fn entries_are_private_to_their_owner() {
        let cache = HotCache::new(1 << 20);
        cache.put("conv_a", history(&Owner::of_key("k1"), 10));
        assert!(cache.get("conv_a", &Owner::of_key("k2")).is_none());
        assert!(cache.get("conv_a", &Owner::of_key("k1")).is_some());
    }
}
