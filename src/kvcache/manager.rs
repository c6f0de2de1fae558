//! Per-request block tables over the [`BlockPool`], with automatic prefix caching.
//!
//! Owns the mapping request → ordered block ids (the block table the runner reads:
//! token at position `p` lives in slot `p % block_size` of block `table[p / block_size]`)
//! and the chained hashes of each request's full blocks.
//!
//! A full block's hash is registered in the pool only once its K/V are computed
//! (`cache_full_blocks`, after a step), so a prefix-cache hit never points at a block
//! whose content is still being written.
//!
//! Invariants ([`KvCacheManager::check_invariants`]): every block's `ref_cnt` equals the
//! number of block tables holding it; a table holds enough blocks for every token the
//! scheduler has handed out; the pool invariants hold.

use std::collections::HashMap;

use super::block_pool::{BlockId, BlockPool};
use super::hash::{extend_block_hashes, BlockHash, ExtraKeys};
use crate::request::{Request, RequestId};

/// Blocks found in the prefix cache for a request (plus the hashes computed to find
/// them). Opaque outside this module: hand it back to [`KvCacheManager::allocate_slots`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KvBlocks {
    block_ids: Vec<BlockId>,
    /// Hashes of all full blocks of the request's tokens at lookup time.
    hashes: Vec<BlockHash>,
}

impl KvBlocks {
    pub fn num_blocks(&self) -> usize {
        self.block_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.block_ids.is_empty()
    }
}

/// Prefix-cache counters, in tokens (vLLM's `PrefixCacheStats`). A query is counted
/// each time a request without blocks is admitted (again after a preemption).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    pub num_requests: u64,
    /// Tokens looked up (the request's whole length at admission).
    pub queries: u64,
    /// Tokens served from the cache.
    pub hits: u64,
}

/// One request's blocks.
#[derive(Debug, Default)]
struct RequestBlocks {
    block_ids: Vec<BlockId>,
    /// Chained hashes of the request's first `hashes.len()` full blocks.
    hashes: Vec<BlockHash>,
    /// Leading blocks already registered in the prefix cache (or found there).
    num_cached_blocks: usize,
}

/// Block tables, allocation and prefix-cache lookups (vLLM's `KVCacheManager`).
#[derive(Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    enable_prefix_caching: bool,
    tables: HashMap<RequestId, RequestBlocks>,
    stats: PrefixCacheStats,
}

impl KvCacheManager {
    /// `num_blocks` blocks of `block_size` tokens. Panics if `block_size == 0` or
    /// `num_blocks >= u32::MAX` (configs are validated before this).
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> Self {
        assert!(block_size > 0, "block_size must be > 0");
        Self {
            pool: BlockPool::new(num_blocks),
            block_size,
            enable_prefix_caching,
            tables: HashMap::new(),
            stats: PrefixCacheStats::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    /// Fraction of blocks in use, 0.0..=1.0 (free cached blocks count as free).
    pub fn usage(&self) -> f32 {
        self.pool.usage()
    }

    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn num_blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// The block table of `req_id` (empty when it holds no blocks).
    pub fn block_ids(&self, req_id: RequestId) -> &[BlockId] {
        self.tables
            .get(&req_id)
            .map_or(&[][..], |t| t.block_ids.as_slice())
    }

    /// The longest run of leading full blocks of `req` already in the prefix cache, and
    /// the number of tokens they cover. Never covers the request's last token: its
    /// logits are needed, so at least one token is always recomputed. Empty for a
    /// request that already holds blocks or when prefix caching is off. No hits for a
    /// request that wants prompt logprobs: they need the logits of every prompt position,
    /// which a cached block does not have (vLLM skips the cache for them too); its
    /// hashes are still returned so its full blocks are cached for others.
    pub fn get_computed_blocks(&self, req: &Request) -> (KvBlocks, usize) {
        let num_tokens = req.num_tokens();
        if !self.enable_prefix_caching || self.tables.contains_key(&req.id) || num_tokens == 0 {
            return (KvBlocks::default(), 0);
        }
        let mut hashes = Vec::with_capacity(num_tokens / self.block_size);
        let extra = extra_keys(req);
        extend_block_hashes(
            &mut hashes,
            req.all_token_ids(),
            num_tokens,
            self.block_size,
            extra,
        );
        let max_hit_blocks = if req.sampling.prompt_logprobs.is_some() {
            0
        } else {
            (num_tokens - 1) / self.block_size
        };
        let block_ids: Vec<BlockId> = hashes[..max_hit_blocks]
            .iter()
            .map_while(|&h| self.pool.get_cached_block(h))
            .collect();
        let num_hit_tokens = block_ids.len() * self.block_size;
        (KvBlocks { block_ids, hashes }, num_hit_tokens)
    }

    /// Makes `req`'s block table cover `num_computed_tokens + hits + num_new_tokens`
    /// tokens, where `hits` are the prefix-cache blocks in `new_computed` (only for a
    /// request that holds no blocks yet). Returns `None`, changing nothing, when the
    /// pool lacks free blocks (hit blocks sitting in the free queue count as used).
    pub fn allocate_slots(
        &mut self,
        req: &Request,
        num_new_tokens: usize,
        new_computed: Option<&KvBlocks>,
    ) -> Option<()> {
        let hits: &[BlockId] = new_computed.map_or(&[], |k| k.block_ids.as_slice());
        let num_held = self.tables.get(&req.id).map_or(0, |t| t.block_ids.len());
        debug_assert!(
            hits.is_empty() || (num_held == 0 && req.num_computed_tokens == 0),
            "prefix hits given for request {} that already has state",
            req.id
        );
        debug_assert!(
            new_computed.is_none_or(|k| self.hits_still_valid(k)),
            "stale prefix-cache hits for request {}",
            req.id
        );
        let num_computed = req.num_computed_tokens + hits.len() * self.block_size;
        let num_needed = self.num_blocks_for(num_computed + num_new_tokens);
        let num_new_blocks = num_needed.saturating_sub(num_held + hits.len());
        let num_revived = hits.iter().filter(|&&b| self.pool.ref_cnt(b) == 0).count();
        if num_new_blocks + num_revived > self.pool.num_free_blocks() {
            return None;
        }
        // Touch first: revived hits leave the free queue before anything is evicted.
        self.pool.touch(hits);
        let new_blocks = self.pool.get_new_blocks(num_new_blocks)?;
        let is_admission = !self.tables.contains_key(&req.id);
        let table = self.tables.entry(req.id).or_default();
        if is_admission {
            table.block_ids.extend_from_slice(hits);
            table.num_cached_blocks = hits.len();
            if let Some(k) = new_computed {
                table.hashes.clone_from(&k.hashes);
            }
            if self.enable_prefix_caching {
                self.stats.num_requests += 1;
                self.stats.queries += req.num_tokens() as u64;
                self.stats.hits += (hits.len() * self.block_size) as u64;
            }
        }
        table.block_ids.extend(new_blocks);
        Some(())
    }

    /// Registers in the prefix cache every block of `req` that is full of computed
    /// tokens (`req.num_computed_tokens`) and not registered yet.
    pub fn cache_full_blocks(&mut self, req: &Request) {
        if !self.enable_prefix_caching {
            return;
        }
        let Some(table) = self.tables.get_mut(&req.id) else {
            return;
        };
        let num_full = (req.num_computed_tokens / self.block_size).min(table.block_ids.len());
        if num_full <= table.num_cached_blocks {
            return;
        }
        extend_block_hashes(
            &mut table.hashes,
            req.all_token_ids(),
            num_full * self.block_size,
            self.block_size,
            extra_keys(req),
        );
        for i in table.num_cached_blocks..num_full {
            // False means another block already holds this content: keep ours private.
            self.pool.cache_block(table.block_ids[i], table.hashes[i]);
        }
        table.num_cached_blocks = num_full;
    }

    /// Releases all of `req_id`'s blocks (finish, abort or preemption). Blocks go to the
    /// free queue last-block-first, so a sequence's tail is evicted before its prefix.
    /// Returns false when the request held no blocks.
    pub fn free(&mut self, req_id: RequestId) -> bool {
        match self.tables.remove(&req_id) {
            Some(table) => {
                self.pool.free_blocks(table.block_ids.into_iter().rev());
                true
            }
            None => false,
        }
    }

    /// Forgets all cached content (e.g. after the weights change). Returns how many
    /// cached blocks were dropped.
    pub fn reset_prefix_cache(&mut self) -> usize {
        self.pool.reset_prefix_cache()
    }

    /// True when every hit block still holds the content it was found for.
    fn hits_still_valid(&self, k: &KvBlocks) -> bool {
        k.block_ids
            .iter()
            .zip(&k.hashes)
            .all(|(&b, &h)| self.pool.block_hash(b) == Some(h))
    }

    /// Panics with a description of the first broken invariant. O(num_blocks + tables).
    pub fn check_invariants(&self) {
        self.pool.check_invariants();
        let mut refs = vec![0u32; self.pool.num_blocks()];
        for (req_id, table) in &self.tables {
            assert!(
                table.num_cached_blocks <= table.block_ids.len(),
                "request {req_id}: more cached blocks than blocks"
            );
            for &b in &table.block_ids {
                refs[b as usize] += 1;
            }
        }
        for (b, &expected) in refs.iter().enumerate() {
            let actual = self.pool.ref_cnt(b as BlockId);
            assert_eq!(actual, expected, "block {b}: ref_cnt vs block tables");
        }
    }
}

/// What a request's block hashes chain besides its tokens: its LoRA adapter, so blocks
/// computed under different adapters (or an adapter and the base model) are never shared.
fn extra_keys(req: &Request) -> ExtraKeys {
    ExtraKeys {
        salt: None,
        lora: req.sampling.lora.as_ref().map(|l| u64::from(l.id.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{LoraRef, SamplingParams, TokenId};

    /// Same tokens under another adapter (or none) hit nothing; under the same one, hit.
    #[test]
    fn blocks_are_not_shared_across_adapters() {
        let mut m = KvCacheManager::new(16, 4, true);
        let with = |id: RequestId, lora: Option<u32>| {
            let params = SamplingParams {
                lora: lora.map(LoraRef::without_updates),
                ..SamplingParams::greedy(4)
            };
            Request::new(id, (0..10).collect::<Vec<TokenId>>(), params, vec![])
        };
        assert_eq!(run_prefill(&mut m, &mut with(1, None)), 0);
        assert_eq!(run_prefill(&mut m, &mut with(2, Some(1))), 0);
        assert_eq!(run_prefill(&mut m, &mut with(3, Some(2))), 0);
        assert_eq!(run_prefill(&mut m, &mut with(4, Some(1))), 8);
        assert_eq!(run_prefill(&mut m, &mut with(5, None)), 8);
    }

    fn req(id: RequestId, tokens: Vec<TokenId>) -> Request {
        Request::new(id, tokens, SamplingParams::greedy(4), vec![])
    }

    /// Allocates and "computes" the whole request, then registers its full blocks.
    fn run_prefill(m: &mut KvCacheManager, r: &mut Request) -> usize {
        let (hits, n_hit) = m.get_computed_blocks(r);
        let n_new = r.num_tokens() - n_hit;
        m.allocate_slots(r, n_new, Some(&hits)).expect("fits");
        r.num_computed_tokens = r.num_tokens();
        m.cache_full_blocks(r);
        m.check_invariants();
        n_hit
    }

    #[test]
    fn shared_prefix_is_hit_and_shared() {
        let mut m = KvCacheManager::new(8, 4, true);
        let mut a = req(1, (0..10).collect()); // blocks [0..4) [4..8) + partial
        assert_eq!(run_prefill(&mut m, &mut a), 0);
        let a_blocks = m.block_ids(1).to_vec();
        assert_eq!(a_blocks.len(), 3);

        let mut b_tokens: Vec<TokenId> = (0..8).collect();
        b_tokens.extend([50, 51, 52, 53, 54]);
        let b = req(2, b_tokens);
        let (hits, n_hit) = m.get_computed_blocks(&b);
        assert_eq!((hits.num_blocks(), n_hit), (2, 8));
        m.allocate_slots(&b, b.num_tokens() - n_hit, Some(&hits))
            .expect("fits");
        let b_blocks = m.block_ids(2).to_vec();
        assert_eq!(b_blocks[..2], a_blocks[..2], "prefix blocks shared");
        assert_eq!(b_blocks.len(), 4);
        assert!(!a_blocks.contains(&b_blocks[2]));
        assert_eq!(m.pool.ref_cnt(a_blocks[0]), 2);
        assert_eq!(m.pool.ref_cnt(a_blocks[2]), 1);
        let stats = m.prefix_cache_stats();
        assert_eq!((stats.num_requests, stats.queries, stats.hits), (2, 23, 8));
        m.check_invariants();

        // A diverging first block shares nothing.
        let c = req(3, (1..12).collect());
        assert_eq!(m.get_computed_blocks(&c).1, 0);

        assert!(m.free(1) && m.free(2));
        assert!(!m.free(2), "second free is a no-op");
        assert_eq!(m.num_free_blocks(), 8);
        m.check_invariants();
    }

    #[test]
    fn free_cached_blocks_are_revived() {
        let mut m = KvCacheManager::new(4, 4, true);
        let mut a = req(1, (0..9).collect());
        run_prefill(&mut m, &mut a);
        let a_blocks = m.block_ids(1).to_vec();
        m.free(1);
        assert_eq!(m.num_free_blocks(), 4);
        // Same prompt again: both full blocks come back from the free queue.
        let mut b = req(2, (0..9).collect());
        assert_eq!(run_prefill(&mut m, &mut b), 8);
        assert_eq!(m.block_ids(2)[..2], a_blocks[..2]);
        assert_eq!(m.num_free_blocks(), 1);
    }

    #[test]
    fn free_puts_the_sequence_tail_first_in_line_for_eviction() {
        let mut m = KvCacheManager::new(5, 4, true);
        let mut a = req(1, (0..12).collect());
        run_prefill(&mut m, &mut a);
        let table = m.block_ids(1).to_vec();
        assert_eq!(table, [0, 1, 2]);
        m.free(1);
        assert_eq!(m.pool.free_queue_order(), [3, 4, 2, 1, 0]);
        // Taking three blocks evicts the last block of the sequence and keeps its prefix.
        let b = req(2, (100..112).collect());
        m.allocate_slots(&b, 12, None).expect("fits");
        assert_eq!(m.block_ids(2), [3, 4, 2]);
        let probe = req(3, (0..13).collect());
        assert_eq!(m.get_computed_blocks(&probe).1, 8);
        m.check_invariants();
    }

    #[test]
    fn never_all_tokens_computed() {
        let mut m = KvCacheManager::new(8, 4, true);
        let mut a = req(1, (0..8).collect()); // exactly two full blocks
        run_prefill(&mut m, &mut a);
        let same = req(2, (0..8).collect());
        let (hits, n_hit) = m.get_computed_blocks(&same);
        assert_eq!(
            (hits.num_blocks(), n_hit),
            (1, 4),
            "last block is recomputed"
        );
        let longer = req(3, (0..9).collect());
        assert_eq!(m.get_computed_blocks(&longer).1, 8);
        let one_token = req(4, vec![0]);
        assert_eq!(m.get_computed_blocks(&one_token).1, 0);
    }

    #[test]
    fn only_computed_full_blocks_are_cached() {
        let mut m = KvCacheManager::new(8, 4, true);
        let mut a = req(1, (0..12).collect());
        m.allocate_slots(&a, 12, None).expect("fits");
        a.num_computed_tokens = 7; // first chunk: one full block computed
        m.cache_full_blocks(&a);
        let probe = req(2, (0..13).collect());
        assert_eq!(m.get_computed_blocks(&probe).1, 4);
        a.num_computed_tokens = 12;
        m.cache_full_blocks(&a);
        assert_eq!(m.get_computed_blocks(&probe).1, 12);
        m.check_invariants();
    }

    #[test]
    fn failed_allocation_changes_nothing() {
        let mut m = KvCacheManager::new(3, 4, true);
        let mut a = req(1, (0..8).collect());
        run_prefill(&mut m, &mut a);
        m.free(1); // 2 cached free blocks + 1 plain free block
                   // Hits a's first block (free, so it costs a free slot) and needs 3 more blocks.
        let b = req(2, (0..16).collect());
        let (hits, n_hit) = m.get_computed_blocks(&b);
        assert_eq!(n_hit, 8);
        assert!(m.allocate_slots(&b, 9, Some(&hits)).is_none());
        assert_eq!(m.num_free_blocks(), 3);
        assert!(m.block_ids(2).is_empty());
        assert_eq!(m.prefix_cache_stats().num_requests, 1, "no query recorded");
        m.check_invariants();
        // 8 new tokens need 2 new blocks + 2 revived hits = 4 > 3: still no.
        assert!(m.allocate_slots(&b, 8, Some(&hits)).is_none());
        // 4 new tokens: 1 new block + 2 revived = 3: fits.
        assert!(m.allocate_slots(&b, 4, Some(&hits)).is_some());
        assert_eq!(m.num_free_blocks(), 0);
        m.check_invariants();
    }

    #[test]
    fn incremental_allocation_grows_table() {
        let mut m = KvCacheManager::new(4, 4, false);
        let mut r = req(1, (0..5).collect());
        m.allocate_slots(&r, 3, None).expect("fits");
        assert_eq!(m.block_ids(1).len(), 1);
        r.num_computed_tokens = 3;
        m.allocate_slots(&r, 2, None).expect("fits");
        assert_eq!(m.block_ids(1).len(), 2);
        r.num_computed_tokens = 5;
        r.output_token_ids.extend([9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]); // 16 tokens
        assert!(m.allocate_slots(&r, 11, None).is_some());
        assert_eq!(m.block_ids(1).len(), 4);
        r.num_computed_tokens = 16;
        r.output_token_ids.push(1);
        assert!(m.allocate_slots(&r, 1, None).is_none(), "pool exhausted");
        assert_eq!(m.block_ids(1).len(), 4);
        assert!((m.usage() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn disabled_caching_never_hits_and_reset_forgets() {
        let mut off = KvCacheManager::new(8, 4, false);
        let mut a = req(1, (0..9).collect());
        run_prefill(&mut off, &mut a);
        assert_eq!(off.get_computed_blocks(&req(2, (0..9).collect())).1, 0);
        assert_eq!(off.prefix_cache_stats(), PrefixCacheStats::default());

        let mut on = KvCacheManager::new(8, 4, true);
        let mut a = req(1, (0..9).collect());
        run_prefill(&mut on, &mut a);
        assert_eq!(on.reset_prefix_cache(), 2);
        assert_eq!(on.get_computed_blocks(&req(2, (0..9).collect())).1, 0);
        on.check_invariants();
    }
}
