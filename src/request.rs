//! The request vocabulary every layer shares, below all of them (vLLM v1's
//! `vllm/v1/request.py`): ids, sampling parameters, finish reasons, sampled tokens and
//! their logprobs, and `Request`, one sequence as the scheduler and the KV cache manager
//! see it. The server validates into these types; nothing here imports another module of
//! the crate but `structured` (the compiled grammar a request may be constrained to,
//! itself importing nothing of the crate).
//!
//! Invariant of `Request`: `num_computed_tokens <= num_tokens()`; tokens
//! `[num_computed_tokens, num_tokens())` still have to be run through the model. That one
//! rule covers prefill, chunked prefill, decode, prefix-cache hits and recompute after
//! preemption (which resets `num_computed_tokens` to 0). The prompt, the sampling
//! parameters and the EOS ids are shared (`Arc`) with the engine's sampler and the
//! runner, never copied per step.

use std::sync::Arc;
use std::time::Instant;

/// Engine-wide unique id of one sequence.
pub type RequestId = u64;

/// Token id in the model's vocabulary.
pub type TokenId = u32;

pub use crate::model::lora::{AdapterId, LoraRef};

/// How a request's tokens are chosen and when generation stops.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0.0 means greedy (argmax).
    pub temperature: f32,
    /// 0 means disabled.
    pub top_k: usize,
    /// 1.0 means disabled.
    pub top_p: f32,
    /// 0.0 means disabled.
    pub min_p: f32,
    /// 1.0 means disabled; applied to prompt and output tokens (vLLM/HF semantics).
    pub repetition_penalty: f32,
    /// 0.0 means disabled; applied to output tokens only (OpenAI semantics).
    pub presence_penalty: f32,
    /// 0.0 means disabled; applied to output tokens only (OpenAI semantics).
    pub frequency_penalty: f32,
    /// Added to the logit of each listed token before any other processing.
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Fixes the request's random stream: same seed, same text, alone or batched.
    pub seed: Option<u64>,
    /// Generation stops after emitting one of these (the token is included in the output).
    pub stop_token_ids: Vec<TokenId>,
    /// Generation stops when the text contains one of these (not emitted).
    pub stop: Vec<String>,
    /// Maximum number of generated tokens.
    pub max_tokens: usize,
    /// EOS and stop token ids are suppressed until this many tokens exist.
    pub min_tokens: usize,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
    /// `None`: no logprobs. `Some(k)`: the sampled token's logprob and the top `k` (≤ 20).
    pub logprobs: Option<usize>,
    /// `None`: none. `Some(k)`: the logprob of every prompt token after the first (raw
    /// logits of the position before it), its rank and the top `k` (≤ 20). Such a request
    /// takes no prefix-cache hits: a cached block has no logits.
    pub prompt_logprobs: Option<usize>,
    /// Structured output: every token is sampled from the grammar's allowed set, and EOS
    /// only where the grammar accepts (`crate::structured`). `None`: unconstrained.
    pub guide: Option<crate::structured::Guide>,
    /// The LoRA adapter the model runs with for this request (selected by `model`), its
    /// weights held until the request ends (an unload does not take them away);
    /// `None`: the base model.
    pub lora: Option<LoraRef>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            max_tokens: 16,
            min_tokens: 0,
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
            guide: None,
            lora: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// `max_tokens` or the model's context length was reached.
    Length,
    /// Cancelled by the client or by the engine (e.g. on shutdown).
    Abort,
    /// Cut by the output guard of the moderation policy (`crate::safety`), above the
    /// engine; the engine itself never finishes a request so.
    ContentFilter,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    Waiting,
    Running,
    /// Lost its KV blocks; back in the waiting queue, will be recomputed.
    Preempted,
    Finished(FinishReason),
}

/// The log-probabilities of one sampled position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// Log-probability of the sampled token.
    pub logprob: f32,
    /// The `k` most likely tokens, most likely first.
    pub top: Vec<(TokenId, f32)>,
}

/// The log-probability of one prompt token given the tokens before it (from the raw
/// logits of the previous position).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLogprob {
    pub logprob: f32,
    /// 1 for the most likely token; tokens with an equal logit count ahead (vLLM's rank).
    pub rank: usize,
    /// The `k` most likely tokens at that position, most likely first; with
    /// [`PROMPT_LOGPROBS_FULL_ROW`], every token in id order.
    pub top: Vec<(TokenId, f32)>,
}

/// One sampled token as the sampler returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub token_id: TokenId,
    pub logprobs: Option<TokenLogprobs>,
}

/// Token at absolute position `pos` of a sequence whose tokens are `prompt` then `output`
/// (the scheduler's `Request` and the runner's copy of it both store them so).
pub fn token_at(prompt: &[TokenId], output: &[TokenId], pos: usize) -> TokenId {
    match pos.checked_sub(prompt.len()) {
        None => prompt[pos],
        Some(i) => output[i],
    }
}

/// One sequence being served.
#[derive(Debug)]
pub struct Request {
    pub id: RequestId,
    pub prompt_token_ids: Arc<[TokenId]>,
    pub output_token_ids: Vec<TokenId>,
    /// Tokens whose K/V are in the cache (computed or taken from the prefix cache).
    pub num_computed_tokens: usize,
    /// Prompt tokens served from the prefix cache at first schedule.
    pub num_cached_tokens: usize,
    /// Leading tokens the model runner holds for this request: sent in the step that
    /// admitted it, then as deltas (`scheduler::output`). 0 while it is not admitted.
    pub num_runner_tokens: usize,
    pub sampling: Arc<SamplingParams>,
    /// The model's EOS token ids (ignored when `sampling.ignore_eos`).
    pub eos_token_ids: Arc<[TokenId]>,
    pub status: RequestStatus,
    pub arrival: Instant,
    /// Number of times this request lost its blocks.
    pub num_preemptions: usize,
}

impl Request {
    pub fn new(
        id: RequestId,
        prompt_token_ids: impl Into<Arc<[TokenId]>>,
        sampling: impl Into<Arc<SamplingParams>>,
        eos_token_ids: impl Into<Arc<[TokenId]>>,
    ) -> Self {
        Self {
            id,
            prompt_token_ids: prompt_token_ids.into(),
            output_token_ids: Vec::new(),
            num_computed_tokens: 0,
            num_cached_tokens: 0,
            num_runner_tokens: 0,
            sampling: sampling.into(),
            eos_token_ids: eos_token_ids.into(),
            status: RequestStatus::Waiting,
            arrival: Instant::now(),
            num_preemptions: 0,
        }
    }

    /// Prompt plus generated tokens.
    pub fn num_tokens(&self) -> usize {
        self.prompt_token_ids.len() + self.output_token_ids.len()
    }

    /// Token at absolute position `pos` (prompt first, then output).
    pub fn token_at(&self, pos: usize) -> TokenId {
        token_at(&self.prompt_token_ids, &self.output_token_ids, pos)
    }

    /// All tokens, prompt first.
    pub fn all_token_ids(&self) -> impl Iterator<Item = TokenId> + '_ {
        self.prompt_token_ids
            .iter()
            .chain(self.output_token_ids.iter())
            .copied()
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.status, RequestStatus::Finished(_))
    }
}

/// Largest `top_logprobs` OpenAI accepts.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// `prompt_logprobs` asking for every token's log-probability at every prompt position,
/// in token-id order (`PromptLogprob::top` is the whole row). In-process only (the
/// perplexity tool's KL divergence); the HTTP routes accept 0..=20.
pub const PROMPT_LOGPROBS_FULL_ROW: usize = usize::MAX;

/// A sampling value the sampler cannot honour: the field, the rule and the value given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{field}` {problem}. Given: {given}")]
pub struct InvalidParam {
    pub field: &'static str,
    pub problem: String,
    pub given: String,
}

impl SamplingParams {
    /// The sampler's rules for its parameters; messages name field, limit and value.
    /// Applied once, by the front end's validator (`server::validate`), before a request
    /// is submitted: below that, the engine only asserts them in debug builds.
    pub fn validate(&self) -> Result<(), InvalidParam> {
        let bad = |field: &'static str, problem: &str, given: String| {
            Err(InvalidParam {
                field,
                problem: problem.to_string(),
                given,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", "must be >= 0", self.temperature.to_string());
        }
        // 0 keeps only the most likely token (OpenAI accepts [0, 1]).
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p", "must be in [0, 1]", self.top_p.to_string());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", "must be in [0, 1]", self.min_p.to_string());
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                "must be > 0",
                self.repetition_penalty.to_string(),
            );
        }
        for (field, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(field, "must be in [-2, 2]", v.to_string());
            }
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "must be >= 1", "0".to_string());
        }
        if self.min_tokens > self.max_tokens {
            return bad(
                "min_tokens",
                &format!("must be <= max_tokens ({})", self.max_tokens),
                self.min_tokens.to_string(),
            );
        }
        if let Some(k) = self.logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return bad("top_logprobs", "must be <= 20", k.to_string());
        }
        if let Some(k) = self
            .prompt_logprobs
            .filter(|&k| k > MAX_TOP_LOGPROBS && k != PROMPT_LOGPROBS_FULL_ROW)
        {
            return bad("prompt_logprobs", "must be <= 20", k.to_string());
        }
        if self.guide.is_some() && self.ignore_eos {
            // Past a complete match the grammar allows nothing but EOS.
            return bad(
                "ignore_eos",
                "must be false with structured output",
                "true".to_string(),
            );
        }
        if self.stop.iter().any(String::is_empty) {
            return bad(
                "stop",
                "must not contain empty strings",
                format!("{:?}", self.stop),
            );
        }
        Ok(())
    }
}
