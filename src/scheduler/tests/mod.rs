//! Scheduler tests against a fake runner that keeps a simulated KV cache: every token
//! computed in a step is written to its slot through the block table, and every
//! sampling position reads the whole context back (asserting it is intact) and samples
//! a token that depends on it. Wrong block tables, blocks freed while in use, or bad
//! prefix-cache hits therefore fail loudly or change the outputs.
//!
//! Like the real runner, the fake one knows tokens and block tables only from the
//! `SchedulerOutput`s (through the runner's own `RequestStates`), and checks at every
//! step that what they gave it equals the scheduler's own books.

mod admission;
mod lifecycle;
mod spec;

use std::collections::HashMap;

use super::output::{ModelRunnerOutput, SchedulerOutput};
use super::{Scheduler, SchedulerConfig};
use crate::request::{FinishReason, Request, RequestId, SampledToken, SamplingParams, TokenId};
use crate::runner::requests::{RequestState, RequestStates};

/// EOS id used by the tests; the default fake sampler only emits ids < 1000.
pub(super) const EOS: TokenId = 2000;

/// What a fake sampling position knows: its request, the context it reads (its length,
/// how much of it is output, and a checksum of the context as read back from KV).
pub(super) struct SampleCtx {
    pub req_id: RequestId,
    pub num_tokens: usize,
    pub num_output: usize,
    pub checksum: u64,
}

/// Picks the next token of a sampling position.
pub(super) type SampleFn = Box<dyn Fn(&SampleCtx) -> TokenId>;

pub(super) fn cfg(block_size: usize, num_blocks: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: budget,
        max_model_len: 64,
        block_size,
        num_blocks,
        enable_prefix_caching: true,
        long_prefill_token_threshold: 0,
        speculative: None,
    }
}

/// The task's deterministic sampler, `(req_id*31 + pos) % 1000`, plus the context
/// checksum so the token depends on what the KV cache really holds.
pub(super) fn default_sampler() -> SampleFn {
    Box::new(|c| ((c.req_id * 31 + c.num_tokens as u64 + c.checksum) % 1000) as TokenId)
}

/// Emits `script[i]` as the i-th output token (then 1, 2, 3...).
pub(super) fn scripted(script: Vec<TokenId>) -> SampleFn {
    Box::new(move |c| {
        let i = c.num_output;
        script.get(i).copied().unwrap_or(i as TokenId)
    })
}

/// Emits `cycle[pos % cycle.len()]` at context length `pos`: output that repeats itself,
/// so the n-gram drafter's drafts are accepted.
pub(super) fn cyclic(cycle: Vec<TokenId>) -> SampleFn {
    Box::new(move |c| cycle[c.num_tokens % cycle.len()])
}

pub(super) struct FakeRunner {
    /// One entry per KV slot: `[num_blocks * block_size]`.
    slots: Vec<Option<TokenId>>,
    block_size: usize,
    sampler: SampleFn,
    /// The requests as the outputs described them.
    requests: RequestStates,
}

impl FakeRunner {
    pub(super) fn new(config: &SchedulerConfig, sampler: SampleFn) -> Self {
        Self {
            slots: vec![None; config.num_blocks * config.block_size],
            block_size: config.block_size,
            sampler,
            requests: RequestStates::default(),
        }
    }

    fn slot(block_size: usize, table: &[u32], pos: usize) -> usize {
        let block = table[pos / block_size] as usize;
        block * block_size + pos % block_size
    }

    /// Applies `out` to the runner's requests and checks them against the scheduler's
    /// books; then writes all scheduled tokens, draft tokens included (like one forward
    /// pass), then samples: each sampling position reads its context back from the
    /// slots. A request with a draft is verified like the engine does it: row `j` (after
    /// `j` draft tokens) is sampled while the draft holds.
    pub(super) fn execute(&mut self, s: &Scheduler, out: &SchedulerOutput) -> ModelRunnerOutput {
        self.requests.update(out);
        for sr in &out.scheduled {
            let held = held(&self.requests, s, sr.req_id);
            for pos in sr.start_pos..sr.start_pos + sr.num_tokens {
                let slot = Self::slot(self.block_size, held.block_ids(), pos);
                self.slots[slot] = Some(token_at(held, out.draft(sr.req_id), pos));
            }
        }
        let mut sampled = Vec::new();
        for sr in out.scheduled.iter().filter(|sr| sr.sample) {
            let held = held(&self.requests, s, sr.req_id);
            let draft = out.draft(sr.req_id);
            let req = s.request(sr.req_id).expect("scheduled request exists");
            let mut tokens = Vec::new();
            for j in 0..=draft.len() {
                let num_tokens = req.num_tokens() + j;
                let mut checksum = 0u64;
                for pos in 0..num_tokens {
                    let got = self.slots[Self::slot(self.block_size, held.block_ids(), pos)];
                    let want = token_at(held, draft, pos);
                    assert_eq!(got, Some(want), "req {} pos {pos}", sr.req_id);
                    checksum = checksum.wrapping_mul(1_000_003) ^ u64::from(want);
                }
                let ctx = SampleCtx {
                    req_id: sr.req_id,
                    num_tokens,
                    num_output: req.output_token_ids.len() + j,
                    checksum,
                };
                let token_id = (self.sampler)(&ctx);
                tokens.push(SampledToken {
                    token_id,
                    logprobs: None,
                });
                if draft.get(j) != Some(&token_id) {
                    break;
                }
            }
            sampled.push((sr.req_id, tokens));
        }
        ModelRunnerOutput { sampled }
    }
}

/// Token at `pos` of a held request whose step appends `draft`.
fn token_at(held: &RequestState, draft: &[TokenId], pos: usize) -> TokenId {
    match pos.checked_sub(held.num_tokens()) {
        None => held.token_at(pos),
        Some(i) => draft[i],
    }
}

/// The runner's copy of scheduled request `id`, asserted equal to the scheduler's tokens
/// and block table.
fn held<'a>(requests: &'a RequestStates, s: &Scheduler, id: RequestId) -> &'a RequestState {
    let held = requests
        .get(id)
        .expect("scheduled request held by the runner");
    let req = s.request(id).expect("scheduled request exists");
    assert_eq!(held.block_ids(), s.block_table(id), "req {id}: block table");
    let tokens: Vec<TokenId> = (0..held.num_tokens()).map(|p| held.token_at(p)).collect();
    let truth: Vec<TokenId> = req.all_token_ids().collect();
    assert_eq!(tokens, truth, "req {id}: tokens");
    held
}

/// Everything observed while driving a scheduler to completion.
#[derive(Debug, Default)]
pub(super) struct Run {
    pub tokens: HashMap<RequestId, Vec<TokenId>>,
    pub finish: HashMap<RequestId, FinishReason>,
    pub cached: HashMap<RequestId, usize>,
    pub finish_order: Vec<RequestId>,
    pub steps: Vec<SchedulerOutput>,
}

impl Run {
    /// Index of the first step that scheduled `id`.
    pub fn first_step(&self, id: RequestId) -> usize {
        let found = self
            .steps
            .iter()
            .position(|o| o.scheduled.iter().any(|s| s.req_id == id));
        found.expect("request was scheduled")
    }
}

/// One schedule → execute → update round, checking the step-level limits and the
/// scheduler's own invariants after each half (in every build, not only debug ones).
pub(super) fn step(s: &mut Scheduler, runner: &mut FakeRunner, run: &mut Run) {
    let out = s.schedule();
    s.check_invariants(Some(&out));
    let c = s.config().clone();
    assert!(out.total_num_tokens <= c.max_num_batched_tokens, "budget");
    assert!(out.scheduled.len() <= c.max_num_seqs, "max_num_seqs");
    assert!(s.num_running() <= c.max_num_seqs, "max_num_seqs");
    assert!(
        !out.scheduled.is_empty(),
        "no progress with unfinished requests"
    );
    for id in &out.preempted {
        let req = s.request(*id).expect("preempted request kept");
        assert_eq!(req.num_computed_tokens, 0);
        assert!(s.block_table(*id).is_empty(), "preempted {id} holds blocks");
    }
    let model_out = runner.execute(s, &out);
    let outputs = s.update_from_output(&out, &model_out);
    s.check_invariants(None);
    for o in outputs {
        run.tokens
            .entry(o.req_id)
            .or_default()
            .extend(&o.new_token_ids);
        run.cached.insert(o.req_id, o.num_cached_tokens);
        if let Some(reason) = o.finish_reason {
            assert!(s.request(o.req_id).is_none(), "finished request dropped");
            run.finish.insert(o.req_id, reason);
            run.finish_order.push(o.req_id);
        }
    }
    run.steps.push(out);
}

pub(super) fn drive(s: &mut Scheduler, runner: &mut FakeRunner) -> Run {
    let mut run = Run::default();
    while s.has_unfinished_requests() {
        assert!(run.steps.len() < 10_000, "scheduler did not finish");
        step(s, runner, &mut run);
    }
    assert_eq!(s.num_free_blocks(), s.config().num_blocks, "blocks leaked");
    assert_eq!(s.kv_usage(), 0.0);
    run
}

/// `len` prompt tokens that differ between requests (ids < 1000, never EOS).
pub(super) fn prompt(id: RequestId, len: usize) -> Vec<TokenId> {
    (0..len)
        .map(|i| ((id as usize * 7 + i * 13) % 1000) as TokenId)
        .collect()
}

pub(super) fn request(id: RequestId, tokens: Vec<TokenId>, max_tokens: usize) -> Request {
    Request::new(id, tokens, SamplingParams::greedy(max_tokens), vec![EOS])
}

/// Runs `reqs` through a scheduler with `config`, using the default sampler.
pub(super) fn run_all(config: SchedulerConfig, reqs: Vec<Request>) -> Run {
    let mut s = Scheduler::new(config.clone()).expect("valid config");
    for r in reqs {
        s.add_request(r);
    }
    let mut runner = FakeRunner::new(&config, default_sampler());
    drive(&mut s, &mut runner)
}

/// Each request alone in a roomy scheduler: the outputs every schedule must reproduce.
pub(super) fn reference(reqs: &[(RequestId, Vec<TokenId>, usize)]) -> Run {
    let mut merged = Run::default();
    for (id, p, max_tokens) in reqs {
        let run = run_all(
            cfg(16, 64, 4096),
            vec![request(*id, p.clone(), *max_tokens)],
        );
        merged.tokens.extend(run.tokens);
        merged.finish.extend(run.finish);
    }
    merged
}

pub(super) fn to_requests(reqs: &[(RequestId, Vec<TokenId>, usize)]) -> Vec<Request> {
    reqs.iter()
        .map(|(id, p, m)| request(*id, p.clone(), *m))
        .collect()
}
