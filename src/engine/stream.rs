//! `RequestStream`: the consumer side of one request. It turns the engine's token ids into
//! text with the incremental detokenizer and applies stop strings, off the engine thread.
//! A stop string ends the stream (its text is not emitted) and aborts the request in the
//! engine; dropping an unfinished stream aborts it too.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use super::core::EngineEvent;
use super::detokenizer::IncrementalDetokenizer;
use super::handle::Command;
use super::request::{FinishReason, RequestId, TokenId, TokenLogprobs};
use super::sampler::StopStringMatcher;
use crate::error::EngineError;
use crate::model::ModelAssets;

/// Token accounting of a request so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// New output of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub token_ids: Vec<TokenId>,
    /// Text that became final with these tokens (may be empty while UTF-8 or a possible
    /// stop string is held back).
    pub text: String,
    pub logprobs: Option<Vec<TokenLogprobs>>,
    pub finish_reason: Option<FinishReason>,
    pub usage: Usage,
}

pub struct RequestStream {
    id: RequestId,
    events: UnboundedReceiver<EngineEvent>,
    commands: Sender<Command>,
    model: Arc<ModelAssets>,
    detok: IncrementalDetokenizer,
    stops: StopStringMatcher,
    usage: Usage,
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
        let out = match ev {
            EngineEvent::Error(e) => {
                self.finished = true;
                return Some(Err(e));
            }
            EngineEvent::Output(out) => out,
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
        Some(Ok(TokenEvent {
            token_ids: out.new_token_ids[..kept].to_vec(),
            text,
            logprobs: out.logprobs.map(|mut l| {
                l.truncate(kept);
                l
            }),
            finish_reason: finish,
            usage: self.usage,
        }))
        .filter(|ev| !(ev.as_ref().is_ok_and(is_empty_event)))
    }
}

fn is_empty_event(ev: &TokenEvent) -> bool {
    ev.token_ids.is_empty() && ev.text.is_empty() && ev.finish_reason.is_none()
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}
