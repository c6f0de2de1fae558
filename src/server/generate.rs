//! Running a `ValidRequest` on the engine: one `RequestStream` per choice
//! (`prompts × n`; choices of one prompt share its KV blocks through the prefix cache),
//! and collecting them into a non-streamed response.
//!
//! Invariants: a `Generation` owns its admission `Permit` and its streams, so dropping it
//! at any point (client gone, error) aborts every unfinished sequence and returns its
//! admission slots. Choice `p * n + c` is choice `c` of prompt `p` (OpenAI's order).

use std::sync::Arc;

use super::response::{ChoiceOutput, ResponseMeta};
use super::state::{AppState, Permit};
use super::validate::ValidRequest;
use crate::engine::handle::EngineHandle;
use crate::engine::request::FinishReason;
use crate::engine::stream::{RequestStream, TokenEvent, Usage};
use crate::error::ApiError;

/// One choice being generated.
pub struct ChoiceStream {
    /// Index in `choices` (`prompt * n + choice`).
    pub index: usize,
    pub stream: RequestStream,
}

/// The submitted sequences of one request and what answering it needs.
pub struct Generation {
    pub meta: ResponseMeta,
    pub engine: EngineHandle,
    pub state: Arc<AppState>,
    pub choices: Vec<ChoiceStream>,
    /// Echoed prompt text per prompt (completions with `echo`).
    pub echo: Vec<Option<String>>,
    pub n: usize,
    pub logprobs: bool,
    pub permit: Permit,
}

/// Submits every choice of `valid`; on any refusal the ones already submitted are aborted
/// (dropped) and the error returned.
pub fn submit(
    engine: &EngineHandle,
    state: Arc<AppState>,
    valid: ValidRequest,
    meta: ResponseMeta,
    permit: Permit,
) -> Result<Generation, ApiError> {
    let mut choices = Vec::with_capacity(valid.prompts.len() * valid.n);
    for (p, prompt) in valid.prompts.iter().enumerate() {
        for c in 0..valid.n {
            let stream = engine.submit(prompt.token_ids.clone(), valid.sampling_for(p, c))?;
            choices.push(ChoiceStream {
                index: p * valid.n + c,
                stream,
            });
        }
    }
    Ok(Generation {
        meta,
        engine: engine.clone(),
        state,
        choices,
        echo: valid.prompts.into_iter().map(|p| p.echo).collect(),
        n: valid.n,
        logprobs: valid.logprobs,
        permit,
    })
}

/// The finish of a sequence as the client sees it: `abort` only happens when the engine
/// shuts down under a request, which the client gets as a 503-class error.
pub fn check_finish(reason: FinishReason) -> Result<FinishReason, ApiError> {
    match reason {
        FinishReason::Abort => Err(ApiError::Draining),
        other => Ok(other),
    }
}

/// Sums per-choice usage: each prompt's tokens (and cache hits) count once, every
/// choice's completion tokens count.
pub fn total_usage(per_choice: &[Usage], n: usize) -> Usage {
    let mut total = Usage::default();
    for (i, u) in per_choice.iter().enumerate() {
        if i % n.max(1) == 0 {
            total.prompt_tokens += u.prompt_tokens;
            total.cached_tokens += u.cached_tokens;
        }
        total.completion_tokens += u.completion_tokens;
    }
    total
}

impl Generation {
    /// Waits for every choice and builds the whole response. Dropping this future (the
    /// client left) drops the streams, which aborts their sequences.
    pub async fn collect(mut self) -> Result<serde_json::Value, ApiError> {
        let mut outputs = Vec::with_capacity(self.choices.len());
        let mut usages = Vec::with_capacity(self.choices.len());
        for choice in &mut self.choices {
            let echo = self.echo[choice.index / self.n.max(1)]
                .as_deref()
                .unwrap_or("");
            let mut out = ChoiceOutput {
                index: choice.index,
                text: echo.to_string(),
                echo_len: echo.len(),
                ..ChoiceOutput::default()
            };
            let mut usage = Usage::default();
            while let Some(event) = choice.stream.next().await {
                let event: TokenEvent = event?;
                out.text.push_str(&event.text);
                out.token_ids.extend_from_slice(&event.token_ids);
                out.logprobs.extend(event.logprobs.unwrap_or_default());
                usage = event.usage;
                if let Some(reason) = event.finish_reason {
                    self.state.metrics.record_finished(reason.as_str());
                    out.finish_reason = Some(check_finish(reason)?);
                }
            }
            if out.finish_reason.is_none() {
                return Err(ApiError::Internal(
                    "a sequence ended without a finish reason".into(),
                ));
            }
            outputs.push(out);
            usages.push(usage);
        }
        let usage = total_usage(&usages, self.n);
        let tokenizer = &self.engine.model().tokenizer;
        Ok(self.meta.full(&outputs, &usage, tokenizer, self.logprobs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_each_prompt_once_and_every_completion() {
        let u = |p, c, k| Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: k,
        };
        // two prompts (10 and 20 tokens), n = 2
        let total = total_usage(&[u(10, 3, 0), u(10, 4, 10), u(20, 5, 0), u(20, 6, 16)], 2);
        assert_eq!(total, u(30, 18, 0));
        assert!(matches!(
            check_finish(FinishReason::Abort),
            Err(ApiError::Draining)
        ));
        assert_eq!(
            check_finish(FinishReason::Length).ok(),
            Some(FinishReason::Length)
        );
    }
}
