//! Server-sent events for a streamed `Generation`, framed exactly as OpenAI does: the
//! opening chunk of each choice (`role`, or the echoed prompt; before them a
//! `prompt_filter_results` chunk when a moderation input rule matched), content chunks as
//! tokens arrive, exactly one `finish_reason` chunk per choice (with
//! `content_filter_results` when an output rule matched it; `tool_calls` when a chat
//! answer parsed for tools made calls, which stream as `delta.tool_calls` chunks while
//! no call markup reaches `content`), the `choices: []` usage chunk
//! when asked for, then `data: [DONE]`. A keep-alive comment goes out whenever nothing
//! else did for `keepalive` (e.g. while the request waits in the queue).
//!
//! Invariants: the body stream owns the `Generation`; when the client disconnects actix
//! drops the body, which drops every `RequestStream` (aborting its sequence in the
//! engine) and the admission permit. An engine error ends the stream with one
//! `data: {"error": …}` event and `[DONE]`, never a hang.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::stream::{self, SelectAll, Stream, StreamExt};

use serde_json::Map;

use super::content_filter::{finish_fields, prompt_filter_results};
use super::generate::{check_finish, Generation};
use super::response::{finish_str, sse_data, ResponseMeta, SSE_DONE, SSE_KEEPALIVE};
use crate::engine::stream::{TokenEvent, Usage};
use crate::error::{http_error, ApiError};
use crate::model::tokenizer::Tokenizer;
use crate::tools::hermes::{HermesParser, ToolEvent};
use crate::tools::new_call_id;

type ChoiceEvents = Pin<Box<dyn Stream<Item = (usize, Result<TokenEvent, ApiError>)>>>;

struct SseState {
    gen: Generation,
    events: SelectAll<ChoiceEvents>,
    /// Sent first (opening chunks), before waiting on the engine.
    opening: Option<String>,
    /// Latest cumulative usage per choice.
    usages: Vec<Usage>,
    /// Bytes of text sent per choice (completions' `text_offset`).
    offsets: Vec<usize>,
    /// Per choice, its tool-call parser (chat with tools).
    tools: Vec<Option<HermesParser>>,
    keepalive: Duration,
    done: bool,
}

/// The chunk of one parsed piece of a choice's answer (content, or a tool call's start
/// with a fresh `call_…` id, or more of its arguments).
fn tool_event_chunk(
    meta: &ResponseMeta,
    index: usize,
    event: ToolEvent,
    tok: &Tokenizer,
) -> String {
    match event {
        ToolEvent::Content(text) => meta.delta_chunk(index, &text, &[], None, 0, tok),
        ToolEvent::CallStart { index: call, name } => {
            meta.tool_call_chunk(index, call, Some((&new_call_id(), &name)), "")
        }
        ToolEvent::Arguments { index: call, text } => {
            meta.tool_call_chunk(index, call, None, &text)
        }
    }
}

/// The SSE body of `gen`.
pub fn sse_body(
    mut gen: Generation,
    keepalive: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let count = gen.choices.len();
    let mut opening = String::new();
    if let Some(results) = gen.screen.as_deref().and_then(prompt_filter_results) {
        let fields = Map::from_iter([("prompt_filter_results".to_string(), results)]);
        opening.push_str(&gen.meta.annotation_chunk(fields));
    }
    let mut offsets = vec![0; count];
    let mut events: SelectAll<ChoiceEvents> = SelectAll::new();
    for choice in std::mem::take(&mut gen.choices) {
        let index = choice.index;
        let echo = gen.echo[index / gen.n.max(1)].as_deref();
        // With echo logprobs, the echo goes out with the first event (which brings them).
        let echo_now = echo.filter(|_| gen.logprobs.echo.is_none());
        if let Some(chunk) = gen.meta.opening_chunk(index, echo_now) {
            opening.push_str(&chunk);
        }
        offsets[index] = echo.map_or(0, str::len);
        let per_choice = stream::unfold(choice, move |mut c| async move {
            c.next().await.map(|event| ((index, event), c))
        });
        events.push(Box::pin(per_choice));
    }
    let tool_calls = gen.tool_calls;
    let state = SseState {
        gen,
        events,
        opening: Some(opening).filter(|o| !o.is_empty()),
        usages: vec![Usage::default(); count],
        offsets,
        tools: (0..count)
            .map(|_| tool_calls.then(HermesParser::new))
            .collect(),
        keepalive,
        done: false,
    };
    stream::unfold(state, |mut state| async move {
        let text = state.next_text().await?;
        Some((Ok(Bytes::from(text)), state))
    })
}

impl SseState {
    /// The next bytes to send; `None` after `[DONE]`.
    async fn next_text(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        if let Some(opening) = self.opening.take() {
            return Some(opening);
        }
        loop {
            let next = tokio::time::timeout(self.keepalive, self.events.next()).await;
            let (index, event) = match next {
                Err(_elapsed) => return Some(SSE_KEEPALIVE.to_string()),
                Ok(None) => return Some(self.finish()),
                Ok(Some(item)) => item,
            };
            match event.and_then(|ev| self.render(index, ev)) {
                Ok(text) if text.is_empty() => continue,
                Ok(text) => return Some(text),
                Err(err) => return Some(self.fail(&err)),
            }
        }
    }

    /// Chunks for one token event of choice `index`.
    fn render(&mut self, index: usize, ev: TokenEvent) -> Result<String, ApiError> {
        self.usages[index] = ev.usage;
        let meta = &self.gen.meta;
        let tokenizer = &self.gen.engine.model().tokenizer;
        let mut out = String::new();
        if let (Some(k), Some(prompt_logprobs)) = (self.gen.logprobs.echo, &ev.prompt_logprobs) {
            let prompt = index / self.gen.n.max(1);
            let text = self.gen.echo[prompt].as_deref().unwrap_or("");
            let ids = &self.gen.prompt_ids[prompt];
            out.push_str(&meta.echo_chunk(index, text, ids, prompt_logprobs, k, tokenizer));
        }
        let sampled = self.gen.logprobs.sampled;
        if let Some(parser) = self.tools[index].as_mut() {
            let mut events = parser.push(&ev.text);
            if ev.finish_reason.is_some() {
                events.extend(parser.finish());
            }
            for event in events {
                out.push_str(&tool_event_chunk(meta, index, event, tokenizer));
            }
            if let Some(logprobs) = ev.logprobs.as_deref().filter(|_| sampled) {
                let lp = meta.delta_chunk(index, "", &ev.token_ids, Some(logprobs), 0, tokenizer);
                out.push_str(&lp);
            }
        } else if !ev.text.is_empty() || (sampled && !ev.token_ids.is_empty()) {
            let logprobs = ev.logprobs.as_deref().filter(|_| sampled);
            let offset = self.offsets[index];
            out.push_str(&meta.delta_chunk(
                index,
                &ev.text,
                &ev.token_ids,
                logprobs,
                offset,
                tokenizer,
            ));
            self.offsets[index] += ev.text.len();
        }
        if let Some(reason) = ev.finish_reason {
            let fields = finish_fields(self.gen.screen.as_deref(), index);
            let made_calls = self.tools[index].as_ref().is_some_and(|p| p.calls() > 0);
            let reason = finish_str(check_finish(reason)?, made_calls);
            out.push_str(&meta.finish_chunk_with(index, reason, fields));
        }
        Ok(out)
    }

    /// Every choice finished: the usage chunk (if asked for) and `[DONE]`.
    fn finish(&mut self) -> String {
        self.done = true;
        let mut out = String::new();
        if self.gen.meta.include_usage {
            out.push_str(
                &self
                    .gen
                    .meta
                    .usage_chunk(&Usage::total(&self.usages, self.gen.n)),
            );
        }
        out.push_str(SSE_DONE);
        out
    }

    /// An error event and `[DONE]`; the other choices are aborted as the state drops.
    fn fail(&mut self, err: &ApiError) -> String {
        self.done = true;
        tracing::warn!(id = %self.gen.meta.id, error = %err, "stream ended by an error");
        self.events = SelectAll::new();
        format!("{}{SSE_DONE}", sse_data(&http_error(err).body))
    }
}
