//! Running a `ValidRequest` on the engine: one `RequestStream` per choice
//! (`prompts × n`), and collecting them into a non-streamed response.
//!
//! Choices of one prompt share its KV blocks: choice 0 is submitted at once, the others
//! when choice 0's first event arrives — by then its prompt's full blocks are computed
//! and registered in the prefix cache, so they start from cache hits instead of
//! recomputing the prompt in the same step.
//!
//! Invariants: a `Generation` owns its admission `Permit` and its streams, so dropping it
//! at any point (client gone, error) aborts every unfinished sequence and returns its
//! admission slots. Choice `p * n + c` is choice `c` of prompt `p` (OpenAI's order).
//! Every event and error of every choice passes through `ChoiceStream::next`, which
//! hands it to the request's `RequestRecord` (metrics, outcome, log line, and the
//! request's exchange in the conversation log).

use std::sync::Arc;

use tokio::sync::watch;

use super::content_filter::{annotate_response, ChoiceGuard};
use super::observe::RequestRecord;
use super::response::{ChoiceOutput, LogprobShape, ResponseMeta};
use super::state::{AppState, Permit};
use super::validate::{ValidPrompt, ValidRequest};
use crate::audit::Exchange;
use crate::dialog::PreparedTurn;
use crate::engine::handle::EngineHandle;
use crate::engine::stream::{RequestStream, TokenEvent, Usage};
use crate::error::ApiError;
use crate::request::{FinishReason, SamplingParams, TokenId};
use crate::safety::Screen;
use crate::tools::split_answer;

/// Where a choice is: waiting for its prompt's blocks, or running.
enum ChoiceState {
    Waiting {
        prompt_blocks_ready: watch::Receiver<bool>,
        prompt: Vec<TokenId>,
        sampling: SamplingParams,
        engine: EngineHandle,
    },
    Running(RequestStream),
    Failed,
}

/// One choice being generated.
pub struct ChoiceStream {
    /// The moderation guard of its output (only with a policy that has output rules).
    guard: Option<ChoiceGuard>,
    /// Index in `choices` (`prompt * n + choice`).
    pub index: usize,
    state: ChoiceState,
    /// Choice 0 of a prompt with `n` > 1: tells the others its prompt is cached.
    announce: Option<watch::Sender<bool>>,
    /// The request's shared record (set once every choice is submitted or queued).
    record: Option<Arc<RequestRecord>>,
}

impl ChoiceStream {
    /// The next event of this choice (submitting it first when it was waiting); `None`
    /// after its finishing event or error. Each event and error is recorded.
    pub async fn next(&mut self) -> Option<Result<TokenEvent, ApiError>> {
        let event = self.next_unrecorded().await;
        if let Some(record) = &self.record {
            match &event {
                Some(Ok(ev)) => record.observe(self.index, ev),
                Some(Err(err)) => record.fail(err),
                None => {}
            }
        }
        event
    }

    async fn next_unrecorded(&mut self) -> Option<Result<TokenEvent, ApiError>> {
        if let ChoiceState::Waiting { .. } = self.state {
            let ChoiceState::Waiting {
                mut prompt_blocks_ready,
                prompt,
                sampling,
                engine,
            } = std::mem::replace(&mut self.state, ChoiceState::Failed)
            else {
                return None;
            };
            // A closed channel (choice 0 gone) also releases the wait.
            let _ = prompt_blocks_ready.wait_for(|ready| *ready).await;
            match engine.submit(prompt, sampling) {
                Ok(stream) => self.state = ChoiceState::Running(stream),
                Err(e) => return Some(Err(e.into())),
            }
        }
        let ChoiceState::Running(stream) = &mut self.state else {
            return None;
        };
        let event = stream.next().await;
        if let Some(announce) = self.announce.take() {
            let _ = announce.send(true);
        }
        match (event, &mut self.guard) {
            (Some(Ok(ev)), Some(guard)) => Some(Ok(guard.apply(ev, || stream.cut()))),
            (event, _) => event.map(|e| e.map_err(ApiError::from)),
        }
    }
}

/// The submitted sequences of one request and what answering it needs.
pub struct Generation {
    pub meta: ResponseMeta,
    pub engine: EngineHandle,
    pub state: Arc<AppState>,
    pub choices: Vec<ChoiceStream>,
    /// Echoed prompt text per prompt (completions with `echo`).
    pub echo: Vec<Option<String>>,
    /// Token ids per prompt (for responses with prompt logprobs; else empty).
    pub prompt_ids: Vec<Vec<TokenId>>,
    pub n: usize,
    pub logprobs: LogprobShape,
    pub permit: Permit,
    /// Settled when the last of this and the choices' clones drops.
    pub record: Arc<RequestRecord>,
    /// The request's moderation (policy snapshot and hits), when a policy is loaded.
    pub screen: Option<Arc<Screen>>,
    /// Parse each choice's answer for tool calls (chat with tools).
    pub tool_calls: bool,
}

/// What watches a request besides its metrics: its id, its moderation, and its exchange
/// in the conversation log.
pub struct Oversight {
    pub request_id: String,
    /// The request's moderation (`None`: no policy).
    pub screen: Option<Arc<Screen>>,
    /// Logged when the request settles (`None`: the log is off).
    pub exchange: Option<Exchange>,
}

/// Submits choice 0 of every prompt of `valid` and queues the other choices behind it;
/// on any refusal the ones already submitted are aborted (dropped) and the error returned.
/// With a `screen`, every choice's output goes through its moderation guard; with an
/// `exchange`, the request is logged when it settles (whatever ends it).
pub fn submit(
    engine: &EngineHandle,
    state: Arc<AppState>,
    valid: ValidRequest,
    meta: ResponseMeta,
    permit: Permit,
    oversight: Oversight,
) -> Result<Generation, ApiError> {
    let Oversight {
        request_id,
        screen,
        exchange,
    } = oversight;
    let mut choices = Vec::with_capacity(valid.prompts.len() * valid.n);
    for (p, prompt) in valid.prompts.iter().enumerate() {
        let first = engine.submit(prompt.token_ids.clone(), valid.sampling_for(p, 0))?;
        let (announce, ready) = watch::channel(false);
        choices.push(ChoiceStream {
            guard: screen
                .as_ref()
                .and_then(|s| ChoiceGuard::new(s, p * valid.n)),
            index: p * valid.n,
            state: ChoiceState::Running(first),
            announce: (valid.n > 1).then_some(announce),
            record: None,
        });
        for c in 1..valid.n {
            choices.push(ChoiceStream {
                guard: screen
                    .as_ref()
                    .and_then(|s| ChoiceGuard::new(s, p * valid.n + c)),
                index: p * valid.n + c,
                state: ChoiceState::Waiting {
                    prompt_blocks_ready: ready.clone(),
                    prompt: prompt.token_ids.clone(),
                    sampling: valid.sampling_for(p, c),
                    engine: engine.clone(),
                },
                announce: None,
                record: None,
            });
        }
    }
    let prompts = state.config.log_requests.then(|| {
        let tokenizer = &engine.model().tokenizer;
        valid
            .prompts
            .iter()
            .map(|p| {
                tokenizer
                    .decode(&p.token_ids, false)
                    .unwrap_or_else(|e| format!("<undecodable prompt: {e}>"))
            })
            .collect()
    });
    let record = Arc::new(
        RequestRecord::new(
            state.clone(),
            request_id,
            valid.model.clone(),
            choices.len(),
            valid.n,
            prompts,
        )
        .with_audit(exchange, screen.clone()),
    );
    for choice in &mut choices {
        choice.record = Some(record.clone());
    }
    let logprobs = LogprobShape {
        sampled: valid.logprobs,
        echo: valid
            .echo_logprobs
            .then(|| valid.sampling.logprobs.unwrap_or(0)),
        prompt: valid.prompt_logprobs,
    };
    let keep_ids = logprobs.echo.is_some() || logprobs.prompt.is_some();
    let (echo, prompt_ids) = valid
        .prompts
        .into_iter()
        .map(|p| (p.echo, if keep_ids { p.token_ids } else { Vec::new() }))
        .unzip();
    Ok(Generation {
        meta,
        engine: engine.clone(),
        state,
        choices,
        echo,
        prompt_ids,
        n: valid.n,
        logprobs,
        permit,
        record,
        screen,
        tool_calls: valid.tool_calls,
    })
}

/// Submits a prepared dialog turn (one prompt, one choice, `sampling` with the turn's
/// output budget): the Responses API and the chat socket run turns through this.
pub fn submit_turn(
    engine: &EngineHandle,
    state: Arc<AppState>,
    turn: &PreparedTurn,
    sampling: SamplingParams,
    permit: Permit,
    oversight: Oversight,
) -> Result<Generation, ApiError> {
    let meta = ResponseMeta {
        id: turn.response_id.clone(),
        created: turn.created_at.max(0) as u64,
        model: turn.fields.model.clone(),
        endpoint: super::response::Endpoint::Chat,
        include_usage: false,
    };
    let request = ValidRequest {
        model: turn.fields.model.clone(),
        prompts: vec![ValidPrompt {
            token_ids: turn.prompt.token_ids.clone(),
            max_tokens: turn.prompt.max_tokens,
            echo: None,
        }],
        n: 1,
        sampling,
        stream: true,
        include_usage: false,
        logprobs: false,
        prompt_logprobs: None,
        echo_logprobs: false,
        tool_calls: false,
    };
    submit(engine, state, request, meta, permit, oversight)
}

/// The finish of a sequence as the client sees it: `abort` only happens when the engine
/// shuts down under a request, which the client gets as `ApiError::Interrupted` (the
/// request ran: never a retry-safe refusal).
pub fn check_finish(reason: FinishReason) -> Result<FinishReason, ApiError> {
    match reason {
        FinishReason::Abort => Err(ApiError::Interrupted),
        other => Ok(other),
    }
}

impl Generation {
    /// Waits for every choice (concurrently) and builds the whole response. Dropping this
    /// future (the client left) drops the streams, which aborts their sequences.
    pub async fn collect(mut self) -> Result<serde_json::Value, ApiError> {
        let n = self.n.max(1);
        let (echo, prompt_ids) = (&self.echo, &self.prompt_ids);
        let results = futures_util::future::try_join_all(self.choices.iter_mut().map(|choice| {
            let prompt = choice.index / n;
            let echo = echo[prompt].as_deref().unwrap_or("");
            let ids = prompt_ids.get(prompt).map_or(&[][..], Vec::as_slice);
            collect_choice(choice, echo, ids)
        }))
        .await?;
        let (mut outputs, usages): (Vec<ChoiceOutput>, Vec<Usage>) = results.into_iter().unzip();
        if self.tool_calls {
            for out in &mut outputs {
                let (content, calls) = split_answer(&out.text);
                out.text = content.unwrap_or_default();
                out.tool_calls = Some(calls);
            }
        }
        let usage = Usage::total(&usages, self.n);
        let tokenizer = &self.engine.model().tokenizer;
        let mut response = self.meta.full(&outputs, &usage, tokenizer, self.logprobs);
        if let Some(screen) = &self.screen {
            annotate_response(&mut response, screen);
        }
        Ok(response)
    }
}

/// Drains one choice into its output and final usage (`prompt_ids`: its prompt's ids
/// when the response carries prompt logprobs, else empty).
async fn collect_choice(
    choice: &mut ChoiceStream,
    echo: &str,
    prompt_ids: &[TokenId],
) -> Result<(ChoiceOutput, Usage), ApiError> {
    let mut out = ChoiceOutput {
        index: choice.index,
        text: echo.to_string(),
        echo_len: echo.len(),
        prompt_ids: prompt_ids.to_vec(),
        ..ChoiceOutput::default()
    };
    let mut usage = Usage::default();
    while let Some(event) = choice.next().await {
        let event = event?;
        out.text.push_str(&event.text);
        out.token_ids.extend_from_slice(&event.token_ids);
        out.logprobs.extend(event.logprobs.unwrap_or_default());
        if let Some(prompt_logprobs) = event.prompt_logprobs {
            out.prompt_logprobs = prompt_logprobs;
        }
        usage = event.usage;
        if let Some(reason) = event.finish_reason {
            out.finish_reason = Some(check_finish(reason)?);
        }
    }
    if out.finish_reason.is_none() {
        return Err(ApiError::Internal(
            "a sequence ended without a finish reason".into(),
        ));
    }
    Ok((out, usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abort_is_an_interruption_for_the_client() {
        assert!(matches!(
            check_finish(FinishReason::Abort),
            Err(ApiError::Interrupted)
        ));
        assert_eq!(
            check_finish(FinishReason::Length).ok(),
            Some(FinishReason::Length)
        );
    }
}
