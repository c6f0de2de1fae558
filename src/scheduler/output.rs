//! What the scheduler hands to the runner each step, and what comes back.

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
    pub finish_reason: Option<FinishReason>,
    pub num_prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
}
