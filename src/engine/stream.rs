//! `RequestStream`: the consumer side of one request. It turns the engine's token ids into
//! text with the incremental detokenizer and applies stop strings, off the engine thread.
//! A stop string ends the stream (its text is not emitted) and aborts the request in the
//! engine; dropping an unfinished stream aborts it too.
//!
//! Each event also says which latencies it settles (`EventTiming`): token times are the
//! engine's step-end times (`OutputTiming::produced`), the request's arrival is when it
//! was submitted, and its end is when the finishing event reaches this consumer.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use super::core::{Command, EngineEvent};
use super::detokenizer::IncrementalDetokenizer;
use super::error::EngineError;
use super::sampler::StopStringMatcher;
use crate::model::ModelAssets;
use crate::request::{FinishReason, PromptLogprob, RequestId, TokenId, TokenLogprobs};
use crate::scheduler::output::OutputTiming;

/// Token accounting of a request so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    /// The usage of a request whose choices are `per_choice`, `n` per prompt (OpenAI's
    /// order: the choices of prompt 0, then of prompt 1, …): each prompt's tokens (and
    /// cache hits) count once, every choice's completion tokens count.
    pub fn total(per_choice: &[Usage], n: usize) -> Usage {
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
}

/// New output of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub token_ids: Vec<TokenId>,
    /// Text that became final with these tokens (may be empty while UTF-8 or a possible
    /// stop string is held back).
    pub text: String,
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// The prompt's logprobs (`prompt_logprobs`), on the request's first event only.
    pub prompt_logprobs: Option<Vec<PromptLogprob>>,
    pub finish_reason: Option<FinishReason>,
    pub usage: Usage,
    pub timing: EventTiming,
}

/// The latencies one event settles (for metrics and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EventTiming {
    /// Arrival → first token produced; on the event carrying the first token.
    pub time_to_first_token: Option<Duration>,
    /// Since the previous token was produced; on every later event with tokens.
    pub inter_token_latency: Option<Duration>,
    /// The whole request's phases; on the finishing event.
    pub request: Option<RequestTimings>,
}

/// A finished request's phases (vLLM v1's definitions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestTimings {
    /// Arrival → first scheduled (its whole life when it never ran).
    pub queue: Duration,
    /// First scheduled → first token (zero without a token).
    pub prefill: Duration,
    /// First token → last token.
    pub decode: Duration,
    /// Arrival → the finishing event reaching the consumer.
    pub e2e: Duration,
    /// Arrival → first token; `None` without a token.
    pub time_to_first_token: Option<Duration>,
    /// `decode / (tokens - 1)`, with at least two tokens.
    pub time_per_output_token: Option<Duration>,
}

/// The instants a request's latencies are computed from.
#[derive(Debug, Clone, Copy)]
struct TokenClock {
    arrival: Instant,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl TokenClock {
    fn new(arrival: Instant) -> Self {
        Self {
            arrival,
            first_scheduled: None,
            first_token: None,
            last_token: None,
        }
    }

    /// Notes one engine output (`has_tokens`: it delivers tokens to the client).
    fn on_output(&mut self, timing: &OutputTiming, has_tokens: bool) -> EventTiming {
        self.first_scheduled = self.first_scheduled.or(timing.first_scheduled);
        let mut ev = EventTiming::default();
        if has_tokens {
            match self.last_token {
                None => {
                    self.first_token = Some(timing.produced);
                    ev.time_to_first_token = Some(since(self.arrival, timing.produced));
                }
                Some(last) => ev.inter_token_latency = Some(since(last, timing.produced)),
            }
            self.last_token = Some(timing.produced);
        }
        ev
    }

    /// The phases of a request that ends now with `num_tokens` generated tokens.
    fn finish(&self, num_tokens: usize) -> RequestTimings {
        let now = Instant::now();
        let scheduled = self.first_scheduled.unwrap_or(now);
        let first = self.first_token.unwrap_or(now);
        let decode = match (self.first_token, self.last_token) {
            (Some(first), Some(last)) => since(first, last),
            _ => Duration::ZERO,
        };
        RequestTimings {
            queue: since(self.arrival, scheduled),
            prefill: self
                .first_token
                .map_or(Duration::ZERO, |_| since(scheduled, first)),
            decode,
            e2e: since(self.arrival, now),
            time_to_first_token: self.first_token.map(|t| since(self.arrival, t)),
            time_per_output_token: (num_tokens >= 2).then(|| decode / (num_tokens as u32 - 1)),
        }
    }
}

/// `later - earlier`, zero when the clock says otherwise.
fn since(earlier: Instant, later: Instant) -> Duration {
    later.saturating_duration_since(earlier)
}

pub struct RequestStream {
    id: RequestId,
    events: UnboundedReceiver<EngineEvent>,
    commands: Sender<Command>,
    model: Arc<ModelAssets>,
    detok: IncrementalDetokenizer,
    stops: StopStringMatcher,
    usage: Usage,
    clock: TokenClock,
    finished: bool,
}

impl RequestStream {
    pub(crate) fn new(
        id: RequestId,
        events: UnboundedReceiver<EngineEvent>,
        commands: Sender<Command>,
        model: Arc<ModelAssets>,
        stops: Vec<String>,
        num_prompt_tokens: usize,
        arrival: Instant,
    ) -> Self {
        Self {
            id,
            events,
            commands,
            model,
            detok: IncrementalDetokenizer::new(),
            stops: StopStringMatcher::new(stops),
            usage: Usage {
                prompt_tokens: num_prompt_tokens,
                ..Usage::default()
            },
            clock: TokenClock::new(arrival),
            finished: false,
        }
    }

    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` after the finishing event.
    pub async fn next(&mut self) -> Option<Result<TokenEvent, EngineError>> {
        while !self.finished {
            let ev = match self.events.recv().await {
                Some(ev) => ev,
                None => return Some(Err(self.engine_gone())),
            };
            if let Some(out) = self.process(ev) {
                return Some(out);
            }
        }
        None
    }

    /// `next` for synchronous callers (the CLI, tests).
    pub fn blocking_next(&mut self) -> Option<Result<TokenEvent, EngineError>> {
        while !self.finished {
            let ev = match self.events.blocking_recv() {
                Some(ev) => ev,
                None => return Some(Err(self.engine_gone())),
            };
            if let Some(out) = self.process(ev) {
                return Some(out);
            }
        }
        None
    }

    /// Drains the stream: all token ids, the full text and the finish reason.
    pub fn blocking_collect(
        mut self,
    ) -> Result<(Vec<TokenId>, String, FinishReason, Usage), EngineError> {
        let (mut ids, mut text) = (Vec::new(), String::new());
        while let Some(ev) = self.blocking_next() {
            let ev = ev?;
            ids.extend(ev.token_ids);
            text.push_str(&ev.text);
            if let Some(reason) = ev.finish_reason {
                return Ok((ids, text, reason, ev.usage));
            }
        }
        Err(self.engine_gone())
    }

    /// Ends the stream early for a reason decided above the engine (the moderation
    /// guard's `content_filter`): aborts the request, whose KV blocks are freed at the
    /// engine's next step. Returns the request's timings as of now, or `None` when the
    /// stream had already finished.
    pub fn cut(&mut self) -> Option<RequestTimings> {
        if self.finished {
            return None;
        }
        self.finished = true;
        let _ = self.commands.send(Command::Abort(self.id));
        Some(self.clock.finish(self.usage.completion_tokens))
    }

    /// Ends the stream with an internal error and aborts the request.
    fn fail(&mut self, message: String) -> EngineError {
        self.finished = true;
        let _ = self.commands.send(Command::Abort(self.id));
        EngineError::Internal(message)
    }

    fn engine_gone(&mut self) -> EngineError {
        self.finished = true;
        EngineError::Stopped
    }

    /// Turns one engine event into a client event (None: nothing to report yet).
    fn process(&mut self, ev: EngineEvent) -> Option<Result<TokenEvent, EngineError>> {
        let (out, engine_timing) = match ev {
            EngineEvent::Error(e) => {
                self.finished = true;
                return Some(Err(e));
            }
            EngineEvent::Output(out, timing) => (out, timing),
        };
        self.usage.cached_tokens = out.num_cached_tokens;
        let mut text = String::new();
        let mut finish = out.finish_reason;
        let mut kept = 0;
        for &tok in &out.new_token_ids {
            kept += 1;
            self.usage.completion_tokens += 1;
            let piece = match self.detok.push(&self.model.tokenizer, tok) {
                Ok(piece) => piece,
                Err(e) => return Some(Err(self.fail(e.to_string()))),
            };
            let check = self.stops.push(&piece);
            text.push_str(&check.emit);
            if check.matched.is_some() {
                finish = Some(FinishReason::Stop);
                let _ = self.commands.send(Command::Abort(self.id));
                break;
            }
        }
        if finish.is_some() && self.stops.matched().is_none() {
            // The end of the sequence: release held-back bytes and stop-string prefixes.
            match self.detok.finish(&self.model.tokenizer) {
                Ok(tail) => text.push_str(&self.stops.push(&tail).emit),
                Err(e) => return Some(Err(self.fail(e.to_string()))),
            }
            text.push_str(&self.stops.flush());
        }
        self.finished = finish.is_some();
        let mut timing = self.clock.on_output(&engine_timing, kept > 0);
        if self.finished {
            timing.request = Some(self.clock.finish(self.usage.completion_tokens));
        }
        Some(Ok(TokenEvent {
            token_ids: out.new_token_ids[..kept].to_vec(),
            text,
            logprobs: out.logprobs.map(|mut l| {
                l.truncate(kept);
                l
            }),
            prompt_logprobs: out.prompt_logprobs,
            finish_reason: finish,
            usage: self.usage,
            timing,
        }))
        .filter(|ev| !(ev.as_ref().is_ok_and(is_empty_event)))
    }
}

fn is_empty_event(ev: &TokenEvent) -> bool {
    ev.token_ids.is_empty()
        && ev.text.is_empty()
        && ev.finish_reason.is_none()
        && ev.prompt_logprobs.is_none()
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.commands.send(Command::Abort(self.id));
        }
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
        let total = Usage::total(&[u(10, 3, 0), u(10, 4, 10), u(20, 5, 0), u(20, 6, 16)], 2);
        assert_eq!(total, u(30, 18, 0));
    }
}
