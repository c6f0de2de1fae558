//! The sampler: turns one request's logits row into one token, per request and
//! batch-invariant; plus output-side stop-string matching (`stop`).
//!
//! Order (vLLM v1 `Sampler.forward`):
//! 0. structured output: tokens the request's grammar does not allow get `-inf` (vLLM
//!    applies its grammar bitmask to the logits before the sampler too);
//! 1. logprobs of the RAW row, if requested (`log_softmax` before any processing; so
//!    for a constrained request, of the masked distribution);
//! 2. min_tokens (EOS unless `ignore_eos`, and stop token ids, get `-inf`), logit_bias;
//! 3. repetition penalty (prompt + output), then frequency/presence (output only);
//! 4. `temperature < 1e-5` (or NaN): greedy argmax, ties to the lowest id, no rng draw;
//!    else divide by temperature, min_p, top_k, top_p, one inverse-CDF draw.
//!
//! Invariants:
//! - The result depends only on this row, the params, the token history and this
//!   request's `SeqRng`; nothing is shared between requests except scratch buffers,
//!   which carry no information between calls. So a request samples the same tokens
//!   alone or in any batch, in any order.
//! - The rng advances exactly once per non-greedy token and never otherwise.
//! - Scratch buffers grow to a high-water mark (at most `vocab` entries each) and are
//!   reused; the only per-call allocation is the returned top-logprobs list.

mod logprobs;
mod penalties;
mod rng;
pub mod stop;
mod truncation;

pub use logprobs::prompt_logprob;
pub use rng::SeqRng;
pub use stop::{StopCheck, StopStringMatcher};

use crate::request::{SampledToken, SamplingParams, TokenId};
use crate::structured::TokenMask;
use logprobs::RawLogprobs;
use penalties::TokenCounts;

/// Temperatures below this are greedy (vLLM's `_SAMPLING_EPS`).
pub const GREEDY_TEMPERATURE_EPS: f32 = 1e-5;

/// Reusable buffers for [`sample`]; one per engine thread is enough (they hold no state
/// between calls, so any request may use any scratch).
#[derive(Debug, Default)]
pub struct SamplerScratch {
    /// `[vocab]` token counts, all zeros between calls.
    counts: TokenCounts,
    /// Token ids surviving top_k/top_p (at most `vocab`).
    candidates: Vec<TokenId>,
    /// Raw row and its top entries while logprobs are requested.
    raw_logprobs: RawLogprobs,
}

impl SamplerScratch {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Samples the next token of one request.
///
/// `logits: [vocab]` is this request's row; it is used as scratch and holds garbage
/// afterwards. `prompt_ids` / `output_ids` are the request's tokens so far, `eos_ids`
/// the model's EOS ids. Ids outside `0..vocab` anywhere in the inputs are ignored (the
/// server validates them). An empty row yields token 0.
pub fn sample(
    logits: &mut [f32],
    params: &SamplingParams,
    prompt_ids: &[TokenId],
    output_ids: &[TokenId],
    eos_ids: &[TokenId],
    rng: &mut SeqRng,
    scratch: &mut SamplerScratch,
) -> SampledToken {
    let history = History {
        prompt_ids,
        output_ids,
        eos_ids,
    };
    sample_masked(logits, params, &history, None, rng, scratch)
}

/// A request's tokens so far and the model's EOS ids (what `sample` reads besides the row).
pub struct History<'a> {
    pub prompt_ids: &'a [TokenId],
    pub output_ids: &'a [TokenId],
    pub eos_ids: &'a [TokenId],
}

/// [`sample`] under a structured-output mask: only tokens `mask` allows can come out.
/// When the grammar allows nothing but EOS, `min_tokens` yields to it (the grammar is
/// complete); should the processors still leave no allowed token finite, the first
/// allowed id is taken (greedy, no rng draw).
pub fn sample_masked(
    logits: &mut [f32],
    params: &SamplingParams,
    history: &History<'_>,
    mask: Option<&TokenMask>,
    rng: &mut SeqRng,
    scratch: &mut SamplerScratch,
) -> SampledToken {
    if let Some(mask) = mask {
        mask.apply(logits);
    }
    if let Some(k) = params.logprobs {
        scratch.raw_logprobs.capture(logits, k);
    }
    let min_tokens = match mask {
        Some(mask) if mask.only_eos() => 0,
        _ => params.min_tokens,
    };
    apply_processors(logits, params, history, min_tokens, scratch);
    let mut token_id = if is_greedy(params.temperature) {
        truncation::argmax(logits)
    } else {
        truncation::sample_random(logits, params, rng, &mut scratch.candidates)
    };
    // Only when no allowed token had a finite logit left can a masked-out one come out.
    if let Some(mask) = mask.filter(|m| !m.allows(token_id)) {
        let first = (0..logits.len() as TokenId).find(|&t| mask.allows(t));
        token_id = first.unwrap_or(token_id);
    }
    SampledToken {
        token_id,
        logprobs: params
            .logprobs
            .map(|_| scratch.raw_logprobs.finish(token_id)),
    }
}

/// Whether `temperature` means greedy decoding (also for NaN and negative values).
pub fn is_greedy(temperature: f32) -> bool {
    // NaN compares false, so it is greedy too.
    temperature.is_nan() || temperature < GREEDY_TEMPERATURE_EPS
}

/// Steps 2–3: the processors that can change the argmax, in vLLM v1's order.
fn apply_processors(
    logits: &mut [f32],
    params: &SamplingParams,
    history: &History<'_>,
    min_tokens: usize,
    scratch: &mut SamplerScratch,
) {
    let History {
        prompt_ids,
        output_ids,
        eos_ids,
    } = *history;
    penalties::apply_min_tokens(
        logits,
        min_tokens,
        output_ids.len(),
        params.ignore_eos,
        eos_ids,
        &params.stop_token_ids,
    );
    penalties::apply_logit_bias(logits, &params.logit_bias);
    penalties::apply_repetition_penalty(
        logits,
        params.repetition_penalty,
        prompt_ids,
        output_ids,
        &mut scratch.counts,
    );
    penalties::apply_presence_frequency(
        logits,
        params.presence_penalty,
        params.frequency_penalty,
        output_ids,
        &mut scratch.counts,
    );
}

#[cfg(test)]
mod masked_tests;
#[cfg(test)]
mod spec_tests;
#[cfg(test)]
mod tests;
