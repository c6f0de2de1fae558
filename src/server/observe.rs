//! What the HTTP side records about generation requests: per-event metrics, the outcome
//! (success, or a failure by reason) and one log line per finished request.
//!
//! A `RequestRecord` is shared by a `Generation` and its choice streams; every event of
//! every choice passes through `observe`. The record is settled when its last holder
//! drops it — whatever ended the request (response complete, engine error, client
//! gone) — so each admitted request is counted and logged exactly once:
//! - every choice finished normally → success (200);
//! - an error was seen → a failure by the error's HTTP status;
//! - otherwise the client left first → `aborted_client` (logged as status 499).
//!
//! Requests refused before admission never get a record: the middleware counts them
//! (`gate`), telling them apart by the `Admitted` marker a handler sets.
//!
//! This is also where the conversation log hears of every admitted exchange, exactly
//! once: a record given an `audit::Exchange` (`with_audit`) finishes it when it settles,
//! with the text each choice sent, its finish reason, the token counts and the
//! request's moderation hits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpMessage, HttpRequest};

use super::state::AppState;
use crate::audit::{ChoiceOutcome, Exchange, ExchangeOutcome};
use crate::engine::stream::{TokenEvent, Usage};
use crate::error::{http_error, ApiError};
use crate::metrics::FailureReason;
use crate::request::FinishReason;
use crate::safety::{Screen, Stage};

/// The `target` of the per-request log line.
pub const REQUEST_LOG_TARGET: &str = "tessera::request";

/// Status logged for a request whose client went away (nginx's "client closed request").
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// Routes whose requests are generation requests (counted in the failure metric).
pub const GENERATION_ROUTES: &[&str] =
    &["/v1/chat/completions", "/v1/completions", "/v1/responses"];

/// Request extension: the request was admitted and has a `RequestRecord`.
#[derive(Debug, Clone, Copy)]
pub struct Admitted;

/// Marks `req` as admitted (its outcome is recorded by its `RequestRecord`).
pub fn mark_admitted(req: &HttpRequest) {
    req.extensions_mut().insert(Admitted);
}

/// Whether `req` was admitted.
pub fn is_admitted(req: &HttpRequest) -> bool {
    req.extensions().get::<Admitted>().is_some()
}

/// One choice's progress, as far as the record needs it.
#[derive(Debug, Clone, Default)]
struct ChoiceProgress {
    usage: Usage,
    finish: Option<FinishReason>,
    ttft: Option<Duration>,
    /// Generated text (kept with `--log-requests` and for the conversation log).
    text: String,
}

#[derive(Debug, Default)]
struct Progress {
    choices: Vec<ChoiceProgress>,
    /// HTTP status of the first error seen.
    error: Option<u16>,
}

/// The shared record of one admitted generation request.
pub struct RequestRecord {
    state: Arc<AppState>,
    request_id: String,
    model: String,
    started: Instant,
    /// Sequences per prompt.
    n: usize,
    /// Prompt texts, kept only with `--log-requests`.
    prompts: Option<Vec<String>>,
    progress: Mutex<Progress>,
    /// The exchange to log when the request settles (`None`: the log is off).
    audit: Option<Exchange>,
    /// The request's moderation, whose hits go into the log.
    screen: Option<Arc<Screen>>,
}

impl RequestRecord {
    /// A record for `num_choices` sequences (`n` per prompt). `prompts` is logged (pass
    /// `Some` only with `--log-requests`).
    pub fn new(
        state: Arc<AppState>,
        request_id: String,
        model: String,
        num_choices: usize,
        n: usize,
        prompts: Option<Vec<String>>,
    ) -> Self {
        Self {
            state,
            request_id,
            model,
            started: Instant::now(),
            n,
            prompts,
            progress: Mutex::new(Progress {
                choices: vec![ChoiceProgress::default(); num_choices],
                error: None,
            }),
            audit: None,
            screen: None,
        }
    }

    /// Logs `exchange` (with `screen`'s hits) when the request settles.
    pub fn with_audit(mut self, exchange: Option<Exchange>, screen: Option<Arc<Screen>>) -> Self {
        self.audit = exchange;
        self.screen = screen;
        self
    }

    /// Records one event of choice `index`.
    pub fn observe(&self, index: usize, ev: &TokenEvent) {
        self.state.metrics.observe_event(ev);
        if ev.finish_reason == Some(FinishReason::Abort) {
            // The engine aborts a sequence only when it shuts down under it.
            self.fail(&ApiError::Interrupted);
        }
        let keep_text = self.prompts.is_some() || self.audit.is_some();
        let Ok(mut progress) = self.progress.lock() else {
            return;
        };
        if let Some(choice) = progress.choices.get_mut(index) {
            choice.usage = ev.usage;
            choice.ttft = choice.ttft.or(ev.timing.time_to_first_token);
            choice.finish = choice.finish.or(ev.finish_reason);
            if keep_text {
                choice.text.push_str(&ev.text);
            }
        }
    }

    /// Records that the request failed with `err` (the first error counts).
    pub fn fail(&self, err: &ApiError) {
        if let Ok(mut progress) = self.progress.lock() {
            progress.error.get_or_insert(http_error(err).status);
        }
    }

    /// `fail`, passing `err` on.
    pub fn fail_with(&self, err: ApiError) -> ApiError {
        self.fail(&err);
        err
    }

    /// Counts the outcome and writes the log line; the status it settled on.
    fn settle(&self, progress: &Progress) -> u16 {
        let all_done = progress.choices.iter().all(|c| {
            matches!(
                c.finish,
                Some(FinishReason::Stop | FinishReason::Length | FinishReason::ContentFilter)
            )
        });
        let status = match progress.error {
            Some(status) => status,
            None if all_done => 200,
            None => STATUS_CLIENT_CLOSED,
        };
        let failure = match status {
            200 => None,
            STATUS_CLIENT_CLOSED => Some(FailureReason::AbortedClient),
            other => Some(FailureReason::from_status(other)),
        };
        if let Some(reason) = failure {
            self.state.metrics.record_failure(reason);
        }
        self.log(progress, status);
        status
    }

    /// The exchange's outcome for the conversation log.
    fn outcome(&self, progress: &mut Progress, status: u16) -> ExchangeOutcome {
        let usages: Vec<Usage> = progress.choices.iter().map(|c| c.usage).collect();
        let usage = Usage::total(&usages, self.n);
        ExchangeOutcome {
            status,
            choices: progress
                .choices
                .iter_mut()
                .map(|c| ChoiceOutcome {
                    text: std::mem::take(&mut c.text),
                    finish_reason: c.finish.map(FinishReason::as_str),
                })
                .collect(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_tokens: usage.cached_tokens,
        }
    }

    fn log(&self, progress: &Progress, status: u16) {
        let usages: Vec<Usage> = progress.choices.iter().map(|c| c.usage).collect();
        let usage = Usage::total(&usages, self.n);
        let ttft_ms = progress.choices.iter().filter_map(|c| c.ttft).min().map(ms);
        let mut reasons: Vec<&str> = progress
            .choices
            .iter()
            .filter_map(|c| c.finish.map(FinishReason::as_str))
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        let finish_reason = reasons.join(",");
        let prompt = self.prompts.as_deref().map(joined);
        let outputs: Option<Vec<String>> = self
            .prompts
            .as_ref()
            .map(|_| progress.choices.iter().map(|c| c.text.clone()).collect());
        let output = outputs.as_deref().map(joined);
        tracing::info!(
            target: REQUEST_LOG_TARGET,
            request_id = %self.request_id,
            model = %self.model,
            prompt_tokens = usage.prompt_tokens,
            generation_tokens = usage.completion_tokens,
            cached_tokens = usage.cached_tokens,
            ttft_ms,
            e2e_ms = ms(self.started.elapsed()),
            finish_reason = %finish_reason,
            status,
            prompt,
            output,
            "request finished"
        );
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let mut progress = match self.progress.get_mut() {
            Ok(p) => std::mem::take(p),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        let status = self.settle(&progress);
        if let Some(exchange) = self.audit.take() {
            let outcome = self.outcome(&mut progress, status);
            let mut hits = Vec::new();
            if let Some(screen) = &self.screen {
                hits = screen.hits(Stage::Input, None);
                hits.extend(screen.hits(Stage::Output, None));
            }
            exchange.finish(&outcome, &hits);
        }
    }
}

/// Milliseconds with 0.1 ms resolution.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// One text as is; several as a JSON array of strings.
fn joined(texts: &[String]) -> String {
    match texts {
        [one] => one.clone(),
        many => serde_json::to_string(many).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_times_are_formatted_for_the_log() {
        assert_eq!(joined(&["a".into()]), "a");
        assert_eq!(joined(&["a".into(), "b\"".into()]), r#"["a","b\""]"#);
        assert_eq!(ms(Duration::from_micros(12_345)), 12.3);
    }
}
