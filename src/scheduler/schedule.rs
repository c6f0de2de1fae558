//! The `Scheduler`: request queues and the per-step scheduling decision.
//!
//! Owns every unfinished request, the FCFS `waiting` queue and the ordered `running`
//! set, and the [`KvCacheManager`]. One rule (DESIGN.md): each step a request is given
//! `min(num_tokens - num_computed_tokens, budget)` tokens (also capped by
//! `long_prefill_token_threshold`), running requests first in order, then waiting ones
//! FCFS while the token budget, `max_num_seqs` and free blocks allow. A waiting request
//! that does not fit stops admission (no skipping ahead). A running request that cannot
//! get blocks preempts the newest running request (by recompute) until it fits or is
//! itself preempted; no request is admitted in a step that preempted.
//!
//! Invariants (checked every step in debug builds by `check_invariants`): scheduled
//! tokens ≤ `max_num_batched_tokens`; running ≤ `max_num_seqs`; every scheduled request
//! has blocks for `start_pos + num_tokens` tokens; each request is in exactly one of
//! `waiting` / `running`; waiting requests hold no blocks and have no computed tokens.

use std::collections::{HashMap, HashSet, VecDeque};

use super::config::{SchedulerConfig, SchedulerError};
use super::output::{ScheduledRequest, SchedulerOutput};
use crate::engine::request::{Request, RequestId, RequestStatus};
use crate::kvcache::block_pool::BlockId;
use crate::kvcache::manager::{KvCacheManager, PrefixCacheStats};

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SchedulerStats {
    pub num_running: usize,
    pub num_waiting: usize,
    /// Fraction of KV blocks in use, 0.0..=1.0.
    pub kv_usage: f32,
    /// Preemptions since start.
    pub num_preemptions: u64,
    /// Prefix-cache queries and hits since start, in tokens.
    pub prefix_cache: PrefixCacheStats,
}

/// Continuous-batching scheduler over a paged KV cache (vLLM v1 contract).
#[derive(Debug)]
pub struct Scheduler {
    pub(super) config: SchedulerConfig,
    pub(super) kv: KvCacheManager,
    /// Every unfinished request, waiting or running.
    pub(super) requests: HashMap<RequestId, Request>,
    /// FCFS; preempted requests go back to the front.
    pub(super) waiting: VecDeque<RequestId>,
    /// Oldest admission first; the last one is preempted first.
    pub(super) running: Vec<RequestId>,
    pub(super) num_preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate()?;
        let kv = KvCacheManager::new(
            config.num_blocks,
            config.block_size,
            config.enable_prefix_caching,
        );
        Ok(Self {
            config,
            kv,
            requests: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            num_preemptions: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues `req` (status Waiting, nothing computed). Refuses requests that could
    /// never run: empty prompt, prompt longer than `max_model_len` (a valid config makes
    /// the pool hold `max_model_len` tokens, so every accepted prompt fits alone),
    /// `max_tokens == 0`, or an id already in use.
    pub fn add_request(&mut self, mut req: Request) -> Result<(), SchedulerError> {
        let req_id = req.id;
        let prompt_len = req.prompt_token_ids.len();
        if prompt_len == 0 {
            return Err(SchedulerError::EmptyPrompt { req_id });
        }
        let max_model_len = self.config.max_model_len;
        if prompt_len > max_model_len {
            return Err(SchedulerError::PromptTooLong {
                req_id,
                prompt_len,
                max_model_len,
            });
        }
        if req.sampling.max_tokens == 0 {
            return Err(SchedulerError::ZeroMaxTokens { req_id });
        }
        if self.requests.contains_key(&req_id) {
            return Err(SchedulerError::DuplicateRequestId { req_id });
        }
        req.output_token_ids.clear();
        req.num_computed_tokens = 0;
        req.num_cached_tokens = 0;
        req.status = RequestStatus::Waiting;
        self.requests.insert(req_id, req);
        self.waiting.push_back(req_id);
        Ok(())
    }

    /// Decides this step's batch. See the module doc for the rules.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;
        self.schedule_running(&mut budget, &mut out);
        if out.preempted.is_empty() {
            self.schedule_waiting(&mut budget, &mut out);
        }
        out.total_num_tokens = self.config.max_num_batched_tokens - budget;
        #[cfg(debug_assertions)]
        self.check_invariants(Some(&out));
        out
    }

    /// Tokens to give a request with `remaining` uncomputed tokens.
    fn chunk_len(&self, remaining: usize, budget: usize) -> usize {
        let threshold = self.config.long_prefill_token_threshold;
        let n = remaining.min(budget);
        if threshold > 0 {
            n.min(threshold)
        } else {
            n
        }
    }

    fn schedule_running(&mut self, budget: &mut usize, out: &mut SchedulerOutput) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let req_id = self.running[i];
            let req = &self.requests[&req_id];
            let (start_pos, num_tokens) = (req.num_computed_tokens, req.num_tokens());
            let n = self.chunk_len(num_tokens - start_pos, *budget);
            debug_assert!(n > 0, "running request {req_id} has nothing to compute");
            if !self.allocate_or_preempt(req_id, n, out) {
                break; // it preempted itself: it was the last running request
            }
            out.scheduled.push(ScheduledRequest {
                req_id,
                start_pos,
                num_tokens: n,
                sample: start_pos + n == num_tokens,
            });
            *budget -= n;
            i += 1;
        }
    }

    /// Allocates blocks for `n` more tokens of running `req_id`, preempting the newest
    /// running requests while it does not fit. False when `req_id` itself was preempted.
    fn allocate_or_preempt(
        &mut self,
        req_id: RequestId,
        n: usize,
        out: &mut SchedulerOutput,
    ) -> bool {
        loop {
            if self
                .kv
                .allocate_slots(&self.requests[&req_id], n, None)
                .is_some()
            {
                return true;
            }
            let Some(victim) = self.running.pop() else {
                unreachable!("request {req_id} is running, so `running` is not empty");
            };
            self.preempt(victim);
            out.preempted.push(victim);
            if victim == req_id {
                return false;
            }
        }
    }

    /// Recompute preemption: blocks freed, progress reset, front of the waiting queue.
    /// Output tokens are kept and recomputed with the prompt on readmission.
    fn preempt(&mut self, req_id: RequestId) {
        self.kv.free(req_id);
        if let Some(req) = self.requests.get_mut(&req_id) {
            req.status = RequestStatus::Preempted;
            req.num_computed_tokens = 0;
            req.num_preemptions += 1;
        }
        self.waiting.push_front(req_id);
        self.num_preemptions += 1;
        tracing::debug!(req_id, "preempted (recompute)");
    }

    fn schedule_waiting(&mut self, budget: &mut usize, out: &mut SchedulerOutput) {
        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(&req_id) = self.waiting.front() else {
                break;
            };
            let req = &self.requests[&req_id];
            let (hits, num_hit_tokens) = self.kv.get_computed_blocks(req);
            let num_tokens = req.num_tokens();
            let n = self.chunk_len(num_tokens - num_hit_tokens, *budget);
            if self.kv.allocate_slots(req, n, Some(&hits)).is_none() {
                break; // FCFS: later requests wait behind this one
            }
            self.waiting.pop_front();
            self.running.push(req_id);
            if let Some(req) = self.requests.get_mut(&req_id) {
                if req.status == RequestStatus::Waiting {
                    req.num_cached_tokens = num_hit_tokens; // first schedule only
                }
                req.status = RequestStatus::Running;
                req.num_computed_tokens = num_hit_tokens;
            }
            out.scheduled.push(ScheduledRequest {
                req_id,
                start_pos: num_hit_tokens,
                num_tokens: n,
                sample: num_hit_tokens + n == num_tokens,
            });
            *budget -= n;
        }
    }

    /// An unfinished request (finished ones are dropped in `update_from_output`).
    pub fn request(&self, req_id: RequestId) -> Option<&Request> {
        self.requests.get(&req_id)
    }

    /// The block table the runner reads for `req_id` (empty when it holds no blocks).
    pub fn block_table(&self, req_id: RequestId) -> &[BlockId] {
        self.kv.block_ids(req_id)
    }

    pub fn block_size(&self) -> usize {
        self.config.block_size
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn has_unfinished_requests(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Fraction of KV blocks in use, 0.0..=1.0.
    pub fn kv_usage(&self) -> f32 {
        self.kv.usage()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.kv.num_free_blocks()
    }

    /// Forgets all prefix-cache content; returns how many cached blocks were dropped.
    pub fn reset_prefix_cache(&mut self) -> usize {
        self.kv.reset_prefix_cache()
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            kv_usage: self.kv.usage(),
            num_preemptions: self.num_preemptions,
            prefix_cache: self.kv.prefix_cache_stats(),
        }
    }

    /// Panics on the first broken invariant. `out`: the step just scheduled, if any.
    /// O(requests + num_blocks); called every step in debug builds.
    pub fn check_invariants(&self, out: Option<&SchedulerOutput>) {
        let cfg = &self.config;
        assert!(
            self.running.len() <= cfg.max_num_seqs,
            "running > max_num_seqs"
        );
        let mut seen = HashSet::with_capacity(self.requests.len());
        for id in self.waiting.iter().chain(&self.running) {
            assert!(
                seen.insert(*id),
                "request {id} queued twice (waiting/running)"
            );
        }
        assert_eq!(seen.len(), self.requests.len(), "request not in any queue");
        for id in &self.waiting {
            let req = &self.requests[id];
            let ok = matches!(
                req.status,
                RequestStatus::Waiting | RequestStatus::Preempted
            );
            assert!(ok, "waiting request {id} has status {:?}", req.status);
            assert_eq!(req.num_computed_tokens, 0, "waiting request {id}");
            assert!(
                self.kv.block_ids(*id).is_empty(),
                "waiting {id} holds blocks"
            );
        }
        for id in &self.running {
            let status = self.requests[id].status;
            assert_eq!(status, RequestStatus::Running, "running request {id}");
        }
        if let Some(out) = out {
            let total: usize = out.scheduled.iter().map(|s| s.num_tokens).sum();
            assert_eq!(total, out.total_num_tokens, "total_num_tokens");
            assert!(
                total <= cfg.max_num_batched_tokens,
                "token budget overdrawn"
            );
            for s in &out.scheduled {
                let req = &self.requests[&s.req_id];
                let end = s.start_pos + s.num_tokens;
                assert!(
                    s.num_tokens > 0 && end <= req.num_tokens(),
                    "bad chunk {s:?}"
                );
                assert_eq!(s.start_pos, req.num_computed_tokens, "start_pos {s:?}");
                let held = self.kv.block_ids(s.req_id).len() * cfg.block_size;
                assert!(
                    held >= end,
                    "request {} holds {held} slots < {end}",
                    s.req_id
                );
            }
        }
        self.kv.check_invariants();
    }
}
