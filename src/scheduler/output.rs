//! What the scheduler hands to the runner each step, and what comes back (vLLM v1's
//! `SchedulerOutput` / `ModelRunnerOutput`).
//!
//! A `SchedulerOutput` is self-contained: with the outputs of all earlier steps it is
//! everything the runner needs. A request admitted this step (first schedule, or again
//! after a preemption) comes as `NewRequestData` with its tokens (the prompt shared, not
//! copied), its whole block table and whether it wants prompt logprobs; a request the runner already holds comes as
//! `CachedRequestData` with only what changed since it was last scheduled: the token it
//! sampled and the blocks added. Preempted and finished requests are named so the runner
//! drops its copy. Invariant: every request in `scheduled` appears in exactly one of
//! `scheduled_new_reqs` / `scheduled_cached_reqs`, and never in `preempted` or
//! `finished_req_ids` of the same output.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub use crate::kvcache::block_pool::BlockId;
use crate::request::{
    FinishReason, LoraRef, PromptLogprob, RequestId, SampledToken, TokenId, TokenLogprobs,
};

/// One request's share of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledRequest {
    pub req_id: RequestId,
    /// Position of the first token computed this step (= the request's
    /// `num_computed_tokens` when scheduled).
    pub start_pos: usize,
    /// Number of tokens computed this step (≥ 1).
    pub num_tokens: usize,
    /// True when this chunk reaches the request's last token, so a new token is sampled
    /// from the logits of its final position. False for a non-final prefill chunk.
    pub sample: bool,
}

/// A request the runner does not hold yet: admitted for the first time, or again after
/// a preemption made the runner drop it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequestData {
    pub req_id: RequestId,
    /// The prompt, shared with the scheduler's request.
    pub prompt_token_ids: Arc<[TokenId]>,
    /// Tokens generated before a preemption (empty for a request never run).
    pub output_token_ids: Vec<TokenId>,
    /// The request's whole block table.
    pub block_ids: Vec<BlockId>,
    /// `Some(k)`: the request wants prompt logprobs with the top `k`, so the runner
    /// computes logits for its prompt rows too (`SamplingParams::prompt_logprobs`).
    pub prompt_logprobs: Option<usize>,
    /// The LoRA adapter its rows run with (`SamplingParams::lora`).
    pub lora: Option<LoraRef>,
}

/// What changed for a request the runner holds since it was last scheduled.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedRequestData {
    pub req_id: RequestId,
    /// Tokens appended since: the one sampled in its previous step (empty after a
    /// non-final prefill chunk).
    pub new_token_ids: Vec<TokenId>,
    /// Blocks appended to its block table this step (usually none).
    pub new_block_ids: Vec<BlockId>,
}

/// The scheduler's decision for one engine step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerOutput {
    /// Requests run this step, in batch order (running requests first, then newly admitted).
    pub scheduled: Vec<ScheduledRequest>,
    /// The requests of `scheduled` the runner does not hold yet.
    pub scheduled_new_reqs: Vec<NewRequestData>,
    /// The requests of `scheduled` the runner holds, with what changed.
    pub scheduled_cached_reqs: Vec<CachedRequestData>,
    /// Draft tokens of the requests that speculate this step (vLLM's
    /// `scheduled_spec_decode_tokens`): such a request's `ScheduledRequest` covers its last
    /// token plus these (`num_tokens = 1 + draft.len()`), and the runner computes logits
    /// at each of those positions. Only requests in decode appear here, never empty.
    pub scheduled_spec_decode_tokens: HashMap<RequestId, Vec<TokenId>>,
    /// Sum of `num_tokens` over `scheduled` (≤ `max_num_batched_tokens`).
    pub total_num_tokens: usize,
    /// Requests that lost their blocks this step (back in the waiting queue).
    pub preempted: Vec<RequestId>,
    /// Requests finished or aborted since the previous `schedule()`.
    pub finished_req_ids: Vec<RequestId>,
}

/// What the runner + sampler produced for a step, for each scheduled request with
/// `sample == true`: its sampled token, or with a draft the accepted draft tokens then
/// one more (vLLM's `sampled_token_ids`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRunnerOutput {
    pub sampled: Vec<(RequestId, Vec<SampledToken>)>,
}

impl SchedulerOutput {
    /// The draft tokens scheduled for `req_id` this step (empty when it does not speculate).
    pub fn draft(&self, req_id: RequestId) -> &[TokenId] {
        self.scheduled_spec_decode_tokens
            .get(&req_id)
            .map_or(&[], Vec::as_slice)
    }
}

/// What one request gained in a step, for the output side.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    pub req_id: RequestId,
    pub new_token_ids: Vec<TokenId>,
    /// Logprobs for each of `new_token_ids`, when requested.
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// The prompt's log-probabilities (`prompt_logprobs`): `None` from the scheduler; the
    /// engine, which scores the prompt rows, sets it on the request's first output, one
    /// entry per prompt token after the first.
    pub prompt_logprobs: Option<Vec<PromptLogprob>>,
    pub finish_reason: Option<FinishReason>,
    pub num_prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
}

/// When a `RequestOutput` came to be, on the engine's clock (for latency metrics). The
/// engine reads the clock once per step, never per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputTiming {
    /// When the request was first scheduled (`None`: it never ran, e.g. aborted while
    /// waiting). Preemption does not reset it.
    pub first_scheduled: Option<Instant>,
    /// End of the step that produced the output (for an abort: when it was aborted).
    pub produced: Instant,
}
