//! The `Scheduler`: request queues and the per-step scheduling decision.
//!
//! Owns every unfinished request, the FCFS `waiting` queue and the ordered `running`
//! set, and the [`KvCacheManager`]. One rule (docs/architecture.md): each step a request
//! is given `min(num_tokens - num_computed_tokens, budget)` tokens (also capped by
//! `long_prefill_token_threshold`), running requests first in order, then waiting ones
//! FCFS while the token budget, `max_num_seqs` and free blocks allow. A waiting request
//! that does not fit stops admission (no skipping ahead). A running request that cannot
//! get blocks preempts the newest running request (by recompute) until it fits or is
//! itself preempted; no request is admitted in a step that preempted.
//!
//! Speculative decoding (`config.speculative`): a running request in decode may be given
//! draft tokens from the n-gram drafter (`propose_draft`); it is then scheduled for its
//! last token plus the draft, which count against the token budget, its blocks and the
//! step's logit rows (`SchedulerConfig::max_logit_rows`; rows are kept for every running
//! and waiting request first). `update_from_output` keeps the accepted prefix only.
//!
//! Each scheduled request also goes into the output as the runner needs it (see
//! `output`): whole (`NewRequestData`) when admitted, as a delta (`CachedRequestData`)
//! while running. `Request::num_runner_tokens` says how many of its tokens the runner
//! holds, so each delta carries exactly the tokens it lacks.
//!
//! Invariants (checked every step in debug builds by `check_invariants`): scheduled
//! tokens ≤ `max_num_batched_tokens`; running ≤ `max_num_seqs`; every scheduled request
//! has blocks for `start_pos + num_tokens` tokens and the runner holds all its tokens
//! once the output is applied; each request is in exactly one of `waiting` / `running`;
//! waiting requests hold no blocks, have no computed tokens and nothing in the runner.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::config::{SchedulerConfig, SchedulerError};
use super::output::{CachedRequestData, NewRequestData, ScheduledRequest, SchedulerOutput};
use crate::kvcache::block_pool::BlockId;
use crate::kvcache::manager::{KvCacheManager, PrefixCacheStats};
use crate::request::{Request, RequestId, RequestStatus, TokenId};
use crate::spec_decode::{self, ngram, SpecDecodeStats};

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
    /// Speculative decoding: drafts, draft tokens and accepted tokens since start.
    pub spec_decode: SpecDecodeStats,
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
    /// Finished or aborted since the last `schedule()` (the runner drops them).
    pub(super) finished_req_ids: Vec<RequestId>,
    pub(super) num_preemptions: u64,
    pub(super) spec_stats: SpecDecodeStats,
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
            finished_req_ids: Vec::new(),
            num_preemptions: 0,
            spec_stats: SpecDecodeStats::default(),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues `req` (status Waiting, nothing computed). The request was validated before
    /// it got here (`server::validate`): a non-empty prompt that fits `max_model_len`
    /// (a valid config makes the pool hold `max_model_len` tokens, so it fits alone),
    /// `max_tokens >= 1` and an id not in use are asserted in debug builds only.
    pub fn add_request(&mut self, mut req: Request) {
        let req_id = req.id;
        let prompt_len = req.prompt_token_ids.len();
        debug_assert!(prompt_len > 0, "request {req_id}: empty prompt");
        debug_assert!(
            prompt_len <= self.config.max_model_len,
            "request {req_id}: prompt of {prompt_len} tokens > max_model_len {}",
            self.config.max_model_len
        );
        debug_assert!(
            req.sampling.max_tokens > 0,
            "request {req_id}: max_tokens 0"
        );
        debug_assert!(
            !self.requests.contains_key(&req_id),
            "request {req_id} is already queued or running"
        );
        req.output_token_ids.clear();
        req.num_computed_tokens = 0;
        req.num_cached_tokens = 0;
        req.num_runner_tokens = 0;
        req.status = RequestStatus::Waiting;
        self.requests.insert(req_id, req);
        self.waiting.push_back(req_id);
    }

    /// Decides this step's batch. See the module doc for the rules.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput {
            finished_req_ids: std::mem::take(&mut self.finished_req_ids),
            ..SchedulerOutput::default()
        };
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
        // Logit rows left for draft tokens once every running and waiting request has
        // its own (so drafts never delay an admission).
        let mut spare_rows = self
            .config
            .max_logit_rows()
            .saturating_sub(self.running.len() + self.waiting.len());
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let req_id = self.running[i];
            let req = &self.requests[&req_id];
            let (start_pos, num_tokens) = (req.num_computed_tokens, req.num_tokens());
            let draft = self.propose_draft(req, *budget, spare_rows);
            let n = match draft.len() {
                0 => self.chunk_len(num_tokens - start_pos, *budget),
                d => 1 + d,
            };
            debug_assert!(n > 0, "running request {req_id} has nothing to compute");
            let num_held = self.kv.block_ids(req_id).len();
            if !self.allocate_or_preempt(req_id, n, out) {
                break; // it preempted itself: it was the last running request
            }
            let num_draft = draft.len();
            if num_draft > 0 {
                spare_rows -= num_draft;
                out.scheduled_spec_decode_tokens.insert(req_id, draft);
            }
            out.scheduled_cached_reqs.push(CachedRequestData {
                req_id,
                new_token_ids: self.runner_delta(req_id),
                new_block_ids: self.kv.block_ids(req_id)[num_held..].to_vec(),
            });
            out.scheduled.push(ScheduledRequest {
                req_id,
                start_pos,
                num_tokens: n,
                sample: start_pos + n - num_draft == num_tokens,
            });
            *budget -= n;
            i += 1;
        }
    }

    /// The draft tokens to verify for `req` this step: none unless speculation is on,
    /// the request is in decode (only its last token uncomputed) and may speculate
    /// (`spec_decode::speculates`). At most `num_speculative_tokens`, and few enough that
    /// the step fits `budget` and `spare_rows` logit rows and that accepting them all plus
    /// the bonus token stays within `max_tokens` and `max_model_len`.
    fn propose_draft(&self, req: &Request, budget: usize, spare_rows: usize) -> Vec<TokenId> {
        let Some(spec) = &self.config.speculative else {
            return Vec::new();
        };
        let num_tokens = req.num_tokens();
        if req.num_computed_tokens + 1 != num_tokens || !spec_decode::speculates(&req.sampling) {
            return Vec::new();
        }
        let num_output = req.output_token_ids.len();
        let max_draft = spec
            .num_speculative_tokens
            .min(budget.saturating_sub(1))
            .min(spare_rows)
            .min(req.sampling.max_tokens.saturating_sub(num_output + 1))
            .min(self.config.max_model_len.saturating_sub(num_tokens + 1));
        ngram::propose(
            &req.prompt_token_ids,
            &req.output_token_ids,
            spec,
            max_draft,
        )
    }

    /// The tokens of running `req_id` the runner does not hold yet (the one sampled in
    /// its previous step, if any); from now on it holds them all.
    fn runner_delta(&mut self, req_id: RequestId) -> Vec<TokenId> {
        let Some(req) = self.requests.get_mut(&req_id) else {
            return Vec::new();
        };
        let num_prompt = req.prompt_token_ids.len();
        debug_assert!(
            req.num_runner_tokens >= num_prompt,
            "running request {req_id}: the runner lacks part of its prompt"
        );
        let new =
            req.output_token_ids[req.num_runner_tokens.max(num_prompt) - num_prompt..].to_vec();
        req.num_runner_tokens = req.num_tokens();
        new
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
            req.num_runner_tokens = 0; // the runner drops it (`out.preempted`)
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
                req.num_runner_tokens = req.num_tokens();
                out.scheduled_new_reqs.push(NewRequestData {
                    req_id,
                    prompt_token_ids: Arc::clone(&req.prompt_token_ids),
                    output_token_ids: req.output_token_ids.clone(),
                    block_ids: self.kv.block_ids(req_id).to_vec(),
                    prompt_logprobs: req.sampling.prompt_logprobs,
                    lora: req.sampling.lora.clone(),
                });
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
            spec_decode: self.spec_stats,
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
            assert_eq!(
                req.num_runner_tokens, 0,
                "waiting request {id} in the runner"
            );
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
            self.check_output(out);
        }
        self.kv.check_invariants();
    }

    /// The invariants of the step `out` just scheduled: budget, chunks, blocks, and the
    /// runner's view (each scheduled request new xor cached, holding all its tokens).
    fn check_output(&self, out: &SchedulerOutput) {
        let cfg = &self.config;
        let total: usize = out.scheduled.iter().map(|s| s.num_tokens).sum();
        assert_eq!(total, out.total_num_tokens, "total_num_tokens");
        assert!(
            total <= cfg.max_num_batched_tokens,
            "token budget overdrawn"
        );
        let new: HashSet<RequestId> = out.scheduled_new_reqs.iter().map(|r| r.req_id).collect();
        let cached: HashSet<RequestId> =
            out.scheduled_cached_reqs.iter().map(|r| r.req_id).collect();
        assert_eq!(
            new.len() + cached.len(),
            out.scheduled.len(),
            "each scheduled request is new or cached, once"
        );
        for s in &out.scheduled {
            let req = &self.requests[&s.req_id];
            let end = s.start_pos + s.num_tokens;
            let num_draft = out.draft(s.req_id).len();
            assert!(
                s.num_tokens > 0 && end <= req.num_tokens() + num_draft,
                "bad chunk {s:?}"
            );
            assert!(
                num_draft == 0 || (s.sample && s.start_pos + 1 == req.num_tokens()),
                "draft for a request not in decode {s:?}"
            );
            assert_eq!(s.start_pos, req.num_computed_tokens, "start_pos {s:?}");
            let held = self.kv.block_ids(s.req_id).len() * cfg.block_size;
            assert!(
                held >= end,
                "request {} holds {held} slots < {end}",
                s.req_id
            );
            assert!(
                new.contains(&s.req_id) != cached.contains(&s.req_id),
                "request {} must be new xor cached",
                s.req_id
            );
            assert_eq!(
                req.num_runner_tokens,
                req.num_tokens(),
                "runner tokens {s:?}"
            );
        }
        let rows = out.scheduled.iter().filter(|s| s.sample).count()
            + out
                .scheduled_spec_decode_tokens
                .values()
                .map(Vec::len)
                .sum::<usize>();
        assert!(rows <= cfg.max_logit_rows(), "{rows} logit rows");
        for id in out.scheduled_spec_decode_tokens.keys() {
            assert!(
                cached.contains(id),
                "draft for {id}, not a scheduled running request"
            );
        }
        for id in out.preempted.iter().chain(&out.finished_req_ids) {
            assert!(
                !new.contains(id) && !cached.contains(id),
                "request {id} scheduled and dropped in one step"
            );
        }
    }
}
