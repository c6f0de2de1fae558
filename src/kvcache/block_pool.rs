//! The pool of KV blocks: reference counts, the LRU free queue and the prefix-cache map.
//!
//! Owns every block id `0..num_blocks`. A block is either in use (`ref_cnt > 0`, held by
//! one or more block tables) or free (`ref_cnt == 0`, in the free queue). A free block
//! may still carry its content hash: it stays findable through `cached` and can be
//! revived by a prefix-cache hit ([`BlockPool::touch`]) until it is taken from the head
//! of the free queue for reuse, which evicts its hash.
//!
//! The free queue is an intrusive doubly-linked list over block ids, so allocate, free
//! and touch are O(1) per block.
//!
//! Invariants ([`BlockPool::check_invariants`]): a block is in the free queue iff its
//! `ref_cnt` is 0; the queue's length is `num_free`; `cached[h] == b` implies
//! `blocks[b].hash == Some(h)`, and every hashed block is the one `cached` maps its
//! hash to.

use std::collections::HashMap;

use super::hash::BlockHash;

/// Index of a KV block in the cache tensors, `0..num_blocks`.
pub type BlockId = u32;

/// "No block" in the free-queue links.
const NIL: BlockId = BlockId::MAX;

/// Bookkeeping of one block.
#[derive(Debug, Clone)]
struct BlockMeta {
    /// Number of block tables holding this block.
    ref_cnt: u32,
    /// Content hash while the block is registered in the prefix cache.
    hash: Option<BlockHash>,
    /// Free-queue neighbours (`NIL` at the ends or when not in the queue).
    prev: BlockId,
    next: BlockId,
}

/// Ref-counted blocks, an LRU queue of free blocks and the hash → block map.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<BlockMeta>,
    /// Least recently freed block: evicted first.
    free_head: BlockId,
    /// Most recently freed block.
    free_tail: BlockId,
    num_free: usize,
    /// Prefix cache: full-block content hash → the block holding it.
    cached: HashMap<BlockHash, BlockId>,
}

impl BlockPool {
    /// A pool of `num_blocks` free, unhashed blocks queued in id order.
    pub fn new(num_blocks: usize) -> Self {
        assert!(
            num_blocks < NIL as usize,
            "num_blocks {num_blocks} does not fit in a block id"
        );
        let blocks = (0..num_blocks as BlockId)
            .map(|id| BlockMeta {
                ref_cnt: 0,
                hash: None,
                prev: if id == 0 { NIL } else { id - 1 },
                next: if id as usize + 1 == num_blocks {
                    NIL
                } else {
                    id + 1
                },
            })
            .collect();
        let last = num_blocks.checked_sub(1).map_or(NIL, |l| l as BlockId);
        Self {
            blocks,
            free_head: if num_blocks == 0 { NIL } else { 0 },
            free_tail: last,
            num_free: num_blocks,
            cached: HashMap::new(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks with `ref_cnt == 0` (cached or not): what allocation can use.
    pub fn num_free_blocks(&self) -> usize {
        self.num_free
    }

    /// Fraction of blocks in use, 0.0..=1.0.
    pub fn usage(&self) -> f32 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free as f32 / self.blocks.len() as f32
    }

    pub fn ref_cnt(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].ref_cnt
    }

    pub fn block_hash(&self, id: BlockId) -> Option<BlockHash> {
        self.blocks[id as usize].hash
    }

    /// Number of hashes registered in the prefix cache.
    pub fn num_cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// The block holding content `hash`, if it is still cached (in use or free).
    pub fn get_cached_block(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Takes `n` blocks from the head of the free queue (least recently freed first),
    /// evicting their hashes, each with `ref_cnt = 1`. `None` (and no change) when fewer
    /// than `n` blocks are free.
    pub fn get_new_blocks(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.free_head;
            self.unlink(id);
            self.evict_hash(id);
            self.blocks[id as usize].ref_cnt = 1;
            out.push(id);
        }
        Some(out)
    }

    /// Adds one reference to each block (a prefix-cache hit). A free block leaves the
    /// free queue, which revives it with its hash intact.
    pub fn touch(&mut self, ids: &[BlockId]) {
        for &id in ids {
            if self.blocks[id as usize].ref_cnt == 0 {
                self.unlink(id);
            }
            self.blocks[id as usize].ref_cnt += 1;
        }
    }

    /// Drops one reference from each block, in the given order; blocks reaching 0 go to
    /// the tail of the free queue in that order (so the first is evicted first).
    pub fn free_blocks(&mut self, ids: impl IntoIterator<Item = BlockId>) {
        for id in ids {
            let meta = &mut self.blocks[id as usize];
            assert!(meta.ref_cnt > 0, "double free of block {id}");
            meta.ref_cnt -= 1;
            if meta.ref_cnt == 0 {
                self.push_tail(id);
            }
        }
    }

    /// Registers `hash` as the content of the in-use block `id`. Returns false (and
    /// leaves the block unhashed) when another block already holds this content: the
    /// cache keeps one block per hash.
    pub fn cache_block(&mut self, id: BlockId, hash: BlockHash) -> bool {
        let meta = &self.blocks[id as usize];
        debug_assert!(meta.ref_cnt > 0, "caching free block {id}");
        if meta.hash == Some(hash) {
            return true;
        }
        debug_assert!(meta.hash.is_none(), "block {id} already has another hash");
        if self.cached.contains_key(&hash) {
            return false;
        }
        self.cached.insert(hash, id);
        self.blocks[id as usize].hash = Some(hash);
        true
    }

    /// Forgets every cached hash (blocks in use keep their data, they just can no longer
    /// be found by content). Returns how many entries were dropped.
    pub fn reset_prefix_cache(&mut self) -> usize {
        let dropped = self.cached.len();
        for (_, id) in self.cached.drain() {
            self.blocks[id as usize].hash = None;
        }
        dropped
    }

    /// Free block ids from head (next evicted) to tail. O(num_free); for tests/debug.
    pub fn free_queue_order(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.num_free);
        let mut id = self.free_head;
        while id != NIL {
            out.push(id);
            id = self.blocks[id as usize].next;
        }
        out
    }

    fn evict_hash(&mut self, id: BlockId) {
        if let Some(hash) = self.blocks[id as usize].hash.take() {
            let removed = self.cached.remove(&hash);
            debug_assert_eq!(removed, Some(id), "cache map out of sync for block {id}");
        }
    }

    fn unlink(&mut self, id: BlockId) {
        let (prev, next) = {
            let m = &self.blocks[id as usize];
            (m.prev, m.next)
        };
        if prev == NIL {
            debug_assert_eq!(self.free_head, id, "block {id} is not in the free queue");
            self.free_head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.free_tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let m = &mut self.blocks[id as usize];
        m.prev = NIL;
        m.next = NIL;
        self.num_free -= 1;
    }

    fn push_tail(&mut self, id: BlockId) {
        let old_tail = self.free_tail;
        {
            let m = &mut self.blocks[id as usize];
            m.prev = old_tail;
            m.next = NIL;
        }
        if old_tail == NIL {
            self.free_head = id;
        } else {
            self.blocks[old_tail as usize].next = id;
        }
        self.free_tail = id;
        self.num_free += 1;
    }

    /// Panics with a description of the first broken invariant. O(num_blocks).
    pub fn check_invariants(&self) {
        let order = self.free_queue_order();
        assert_eq!(order.len(), self.num_free, "free queue length");
        let mut in_queue = vec![false; self.blocks.len()];
        let mut prev = NIL;
        for &id in &order {
            assert!(!in_queue[id as usize], "block {id} twice in free queue");
            in_queue[id as usize] = true;
            assert_eq!(self.blocks[id as usize].prev, prev, "bad prev link at {id}");
            prev = id;
        }
        assert_eq!(self.free_tail, prev, "free tail");
        for (id, meta) in self.blocks.iter().enumerate() {
            assert_eq!(
                in_queue[id],
                meta.ref_cnt == 0,
                "block {id}: ref_cnt {} but in_queue {}",
                meta.ref_cnt,
                in_queue[id]
            );
            if let Some(hash) = meta.hash {
                assert_eq!(self.cached.get(&hash), Some(&(id as BlockId)), "block {id}");
            }
        }
        for (hash, &id) in &self.cached {
            assert_eq!(
                self.blocks[id as usize].hash,
                Some(*hash),
                "cache map → {id}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvcache::hash::ExtraKeys;

    fn h(x: u32) -> BlockHash {
        BlockHash::new(None, &[x], ExtraKeys::default())
    }

    #[test]
    fn alloc_free_and_ref_counts() {
        let mut pool = BlockPool::new(4);
        assert_eq!(pool.num_free_blocks(), 4);
        let a = pool.get_new_blocks(3).expect("3 free");
        assert_eq!(a, vec![0, 1, 2]);
        assert!(a.iter().all(|&b| pool.ref_cnt(b) == 1));
        assert_eq!(pool.num_free_blocks(), 1);
        assert!(pool.get_new_blocks(2).is_none(), "only one block left");
        assert_eq!(pool.num_free_blocks(), 1, "failed alloc changed nothing");
        pool.touch(&a[..2]);
        assert_eq!(pool.ref_cnt(0), 2);
        pool.free_blocks([0, 1, 2]);
        assert_eq!((pool.ref_cnt(0), pool.ref_cnt(2)), (1, 0));
        assert_eq!(pool.num_free_blocks(), 2);
        pool.free_blocks([1, 0]);
        assert_eq!(pool.num_free_blocks(), 4);
        assert_eq!(pool.free_queue_order(), vec![3, 2, 1, 0]);
        pool.check_invariants();
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut pool = BlockPool::new(2);
        let a = pool.get_new_blocks(1).expect("free");
        pool.free_blocks(a.clone());
        pool.free_blocks(a);
    }

    #[test]
    fn lru_eviction_order_and_hash_eviction() {
        let mut pool = BlockPool::new(4);
        let blocks = pool.get_new_blocks(4).expect("4 free");
        for &b in &blocks {
            assert!(pool.cache_block(b, h(b)));
        }
        // Freed in the order 2, 0, 3, 1: evicted in that order.
        pool.free_blocks([2, 0, 3, 1]);
        assert_eq!(pool.num_cached_blocks(), 4, "free blocks stay cached");
        let first = pool.get_new_blocks(2).expect("free");
        assert_eq!(first, vec![2, 0]);
        assert_eq!(pool.get_cached_block(h(2)), None, "evicted");
        assert_eq!(pool.get_cached_block(h(0)), None, "evicted");
        assert_eq!(pool.get_cached_block(h(3)), Some(3), "still cached");
        assert_eq!(pool.block_hash(2), None);
        pool.check_invariants();
    }

    #[test]
    fn cached_free_block_revived_by_hit() {
        let mut pool = BlockPool::new(3);
        let blocks = pool.get_new_blocks(3).expect("free");
        assert!(pool.cache_block(blocks[1], h(7)));
        pool.free_blocks(blocks.iter().rev().copied()); // queue: 2, 1, 0
        let hit = pool.get_cached_block(h(7)).expect("cached");
        assert_eq!(hit, 1);
        pool.touch(&[hit]); // revived from the middle of the queue
        assert_eq!(pool.ref_cnt(1), 1);
        assert_eq!(pool.free_queue_order(), vec![2, 0]);
        // Allocating everything else does not evict the revived block.
        assert_eq!(pool.get_new_blocks(2), Some(vec![2, 0]));
        assert_eq!(pool.get_cached_block(h(7)), Some(1));
        assert!(pool.get_new_blocks(1).is_none());
        pool.check_invariants();
    }

    #[test]
    fn one_block_per_hash() {
        let mut pool = BlockPool::new(2);
        let b = pool.get_new_blocks(2).expect("free");
        assert!(pool.cache_block(b[0], h(1)));
        assert!(pool.cache_block(b[0], h(1)), "re-registering is a no-op");
        assert!(
            !pool.cache_block(b[1], h(1)),
            "duplicate content stays unhashed"
        );
        assert_eq!(pool.block_hash(b[1]), None);
        assert_eq!(pool.get_cached_block(h(1)), Some(b[0]));
        pool.check_invariants();
    }

    #[test]
    fn usage_and_reset() {
        let mut pool = BlockPool::new(4);
        assert_eq!(pool.usage(), 0.0);
        let b = pool.get_new_blocks(3).expect("free");
        assert!((pool.usage() - 0.75).abs() < 1e-6);
        pool.cache_block(b[0], h(0));
        pool.free_blocks(b);
        assert_eq!(pool.usage(), 0.0, "cached free blocks count as free");
        assert_eq!(pool.reset_prefix_cache(), 1);
        assert_eq!(pool.get_cached_block(h(0)), None);
        pool.check_invariants();
        assert_eq!(BlockPool::new(0).usage(), 0.0);
    }
}
