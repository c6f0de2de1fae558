//! The compile cache: spec key → `Guide`, at most `capacity` entries, the least recently
//! used one out first. Eviction scans the entries (the capacity is small).

use std::collections::HashMap;

use super::Guide;

pub(super) struct CompileCache {
    capacity: usize,
    /// Key → guide and the tick it was last used.
    entries: HashMap<String, (Guide, u64)>,
    tick: u64,
}

impl CompileCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            tick: 0,
        }
    }

    pub(super) fn get(&mut self, key: &str) -> Option<Guide> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(guide, used)| {
            *used = tick;
            guide.clone()
        })
    }

    pub(super) fn insert(&mut self, key: String, guide: Guide) {
        self.tick += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (guide, self.tick));
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
