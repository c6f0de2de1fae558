//! What the scheduler hands to the runner each step, and what comes back.

use std::time::Instant;

use crate::engine::request::{FinishReason, RequestId, SampledToken, TokenId};

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

/// The scheduler's decision for one engine step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerOutput {
    /// Requests run this step, in batch order (running requests first, then newly admitted).
    pub scheduled: Vec<ScheduledRequest>,
    /// Sum of `num_tokens` over `scheduled` (≤ `max_num_batched_tokens`).
    pub total_num_tokens: usize,
    /// Requests that lost their blocks this step (back in the waiting queue).
    pub preempted: Vec<RequestId>,
}

/// What the runner + sampler produced for a step: one sampled token for each scheduled
/// request with `sample == true`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRunnerOutput {
    pub sampled: Vec<(RequestId, SampledToken)>,
}

/// What one request gained in a step, for the output side.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    pub req_id: RequestId,
    pub new_token_ids: Vec<TokenId>,
    /// Logprobs for each of `new_token_ids`, when requested.
    pub logprobs: Option<Vec<crate::engine::request::TokenLogprobs>>,
    /// The prompt's log-probabilities (`prompt_logprobs`): set by the engine on the
    /// request's first output, one entry per prompt token after the first.
    pub prompt_logprobs: Option<Vec<crate::engine::request::PromptLogprob>>,
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
