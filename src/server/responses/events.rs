//! Running a prepared turn on the engine: collected into the final response object, or
//! streamed as OpenAI's typed events (`event: <type>` + `data: {…, "sequence_number"}`):
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta`…, then — after the turn
//! is committed — `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done` and `response.completed` (or `response.incomplete`:
//! `max_output_tokens`, or `content_filter` when the moderation guard cut the answer);
//! an engine or store failure ends the stream with `response.failed`. With tools, the
//! text deltas carry the answer's content only (no call markup), the message item opens
//! with its first delta, and each `function_call` output item is reported after the
//! commit (`output_item.added`, `function_call_arguments.delta` / `.done`,
//! `output_item.done`).
//!
//! Invariants: sequence numbers start at 0 and increase by one per event; the turn is
//! committed before any event that reports it done, so a client that saw
//! `response.completed` can chain from it on any replica; dropping the stream (client
//! gone) drops the generation, which aborts the sequence, and nothing is committed.

use std::convert::Infallible;
use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};

use crate::dialog::{Dialog, PreparedTurn, Status, TurnOutcome, TurnUsage};
use crate::engine::stream::{TokenEvent, Usage};
use crate::error::{http_error, ApiError};
use crate::request::FinishReason;
use crate::server::generate::{check_finish, Generation};
use crate::server::response::SSE_KEEPALIVE;
use crate::tools::hermes::{HermesParser, ToolEvent};
use crate::tools::split_answer;

/// A turn on the engine and what committing it needs.
pub struct TurnRun {
    pub gen: Generation,
    pub turn: PreparedTurn,
    pub dialog: Dialog,
}

/// The answer so far.
#[derive(Default)]
struct Answer {
    text: String,
    usage: Usage,
    finish: Option<FinishReason>,
    /// The turn has active tools: the answer is split into content and calls.
    tools: bool,
}

impl Answer {
    fn add(&mut self, ev: &TokenEvent) {
        self.text.push_str(&ev.text);
        self.usage = ev.usage;
        self.finish = self.finish.or(ev.finish_reason);
    }

    fn outcome(self) -> Result<TurnOutcome, ApiError> {
        let reason = self
            .finish
            .ok_or_else(|| ApiError::Internal("the answer ended without a finish reason".into()))?;
        let status = match check_finish(reason)? {
            FinishReason::Length => Status::Incomplete("max_output_tokens"),
            FinishReason::ContentFilter => Status::Incomplete("content_filter"),
            _ => Status::Completed,
        };
        let (text, calls) = if self.tools {
            let (content, calls) = split_answer(&self.text);
            (content.unwrap_or_default(), calls)
        } else {
            (self.text, Vec::new())
        };
        Ok(TurnOutcome {
            text,
            calls,
            status,
            usage: TurnUsage {
                input_tokens: self.usage.prompt_tokens,
                cached_tokens: self.usage.cached_tokens,
                output_tokens: self.usage.completion_tokens,
            },
        })
    }
}

impl TurnRun {
    async fn next(&mut self) -> Option<Result<TokenEvent, ApiError>> {
        match self.gen.choices.first_mut() {
            Some(choice) => choice.next().await,
            None => None,
        }
    }

    /// Whether the turn's answer is parsed for tool calls.
    fn has_tools(&self) -> bool {
        self.turn.fields.tools.as_ref().is_some_and(|t| t.active())
    }

    /// Runs the turn to its end, commits it and returns the final response object.
    pub async fn complete(mut self) -> Result<Value, ApiError> {
        let mut answer = Answer {
            tools: self.has_tools(),
            ..Answer::default()
        };
        while let Some(ev) = self.next().await {
            answer.add(&ev?);
        }
        let outcome = answer.outcome()?;
        let committed = self.dialog.commit_turn(self.turn, outcome).await;
        // A failed commit is the request's outcome (the log shows the client's status).
        committed.map_err(|e| self.gen.record.fail_with(e.into()))
    }
}

/// One typed SSE event.
fn event(kind: &str, seq: &mut u64, mut data: Value) -> String {
    data["type"] = json!(kind);
    data["sequence_number"] = json!(*seq);
    *seq += 1;
    format!("event: {kind}\ndata: {data}\n\n")
}

enum Phase {
    Opening,
    Generating,
    Done,
}

struct EventStream {
    run: Option<TurnRun>,
    answer: Answer,
    seq: u64,
    phase: Phase,
    keepalive: Duration,
    /// With tools: the parser that keeps call markup out of the text deltas.
    parser: Option<HermesParser>,
    /// The message item's `added` events went out.
    message_open: bool,
}

/// The SSE body of `run`.
pub fn event_stream(
    run: TurnRun,
    keepalive: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let tools = run.has_tools();
    let state = EventStream {
        run: Some(run),
        answer: Answer {
            tools,
            ..Answer::default()
        },
        seq: 0,
        phase: Phase::Opening,
        keepalive,
        parser: tools.then(HermesParser::new),
        message_open: false,
    };
    stream::unfold(state, |mut state| async move {
        let text = state.next_text().await?;
        Some((Ok(Bytes::from(text)), state))
    })
}

impl EventStream {
    fn item_ids(&self) -> (String, String) {
        self.run.as_ref().map_or_else(Default::default, |r| {
            (r.turn.output_id.clone(), r.turn.response_id.clone())
        })
    }

    async fn next_text(&mut self) -> Option<String> {
        match self.phase {
            Phase::Opening => {
                self.phase = Phase::Generating;
                Some(self.opening())
            }
            Phase::Generating => loop {
                let run = self.run.as_mut()?;
                let next = tokio::time::timeout(self.keepalive, run.next()).await;
                match next {
                    Err(_elapsed) => return Some(SSE_KEEPALIVE.to_string()),
                    Ok(None) => return Some(self.finish().await),
                    Ok(Some(Err(e))) => return Some(self.fail(&e)),
                    Ok(Some(Ok(ev))) => {
                        self.answer.add(&ev);
                        let text = self.content_of(&ev);
                        if !text.is_empty() {
                            return Some(self.delta(&text));
                        }
                    }
                }
            },
            Phase::Done => None,
        }
    }

    fn opening(&mut self) -> String {
        let Some(run) = &self.run else {
            return String::new();
        };
        let snapshot = run.turn.snapshot(&Status::InProgress);
        let seq = &mut self.seq;
        let mut out = event("response.created", seq, json!({ "response": snapshot }));
        out += &event("response.in_progress", seq, json!({ "response": snapshot }));
        if self.parser.is_none() {
            out += &self.open_message();
        }
        out
    }

    /// The content text of `ev` (with tools: what the parser lets through).
    fn content_of(&mut self, ev: &TokenEvent) -> String {
        let Some(parser) = self.parser.as_mut() else {
            return ev.text.clone();
        };
        let mut events = parser.push(&ev.text);
        if ev.finish_reason.is_some() {
            events.extend(parser.finish());
        }
        events
            .into_iter()
            .filter_map(|e| match e {
                ToolEvent::Content(text) => Some(text),
                _ => None,
            })
            .collect()
    }

    /// `output_item.added` and `content_part.added` of the message item (once).
    fn open_message(&mut self) -> String {
        if self.message_open {
            return String::new();
        }
        self.message_open = true;
        let (item_id, _) = self.item_ids();
        let seq = &mut self.seq;
        let mut out = event(
            "response.output_item.added",
            seq,
            json!({"output_index": 0, "item": {"id": item_id, "type": "message",
                "status": "in_progress", "role": "assistant", "content": []}}),
        );
        out += &event(
            "response.content_part.added",
            seq,
            json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
        );
        out
    }

    fn delta(&mut self, text: &str) -> String {
        let (item_id, _) = self.item_ids();
        let opening = self.open_message();
        opening
            + &event(
                "response.output_text.delta",
                &mut self.seq,
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                "delta": text, "logprobs": []}),
            )
    }

    /// Commits the turn, then reports it done.
    async fn finish(&mut self) -> String {
        let Some(run) = self.run.take() else {
            return String::new();
        };
        self.phase = Phase::Done;
        let outcome = match std::mem::take(&mut self.answer).outcome() {
            Ok(outcome) => outcome,
            Err(e) => return self.failed(&run.turn, &e),
        };
        let turn = run.turn.clone();
        let body = match run.dialog.commit_turn(run.turn, outcome).await {
            Ok(body) => body,
            Err(e) => return self.failed(&turn, &run.gen.record.fail_with(e.into())),
        };
        let mut out = String::new();
        let items = body["output"].as_array().cloned().unwrap_or_default();
        for (index, item) in items.iter().enumerate() {
            out += &match item["type"].as_str() {
                Some("function_call") => self.call_done(index, item),
                _ => self.message_done(index, item),
            };
        }
        let seq = &mut self.seq;
        let kind = match body["status"].as_str() {
            Some("incomplete") => "response.incomplete",
            _ => "response.completed",
        };
        out + &event(kind, seq, json!({ "response": body }))
    }

    /// The events that close the message item at `index` (opening it first if no delta
    /// did).
    fn message_done(&mut self, index: usize, item: &Value) -> String {
        let mut out = self.open_message();
        let part = item["content"][0].clone();
        let ids = json!({"item_id": item["id"], "output_index": index, "content_index": 0});
        let with = |mut v: Value, extra: Value| {
            if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(extra.clone());
            }
            v
        };
        let seq = &mut self.seq;
        out += &event(
            "response.output_text.done",
            seq,
            with(ids.clone(), json!({"text": part["text"], "logprobs": []})),
        );
        out += &event(
            "response.content_part.done",
            seq,
            with(ids, json!({ "part": part })),
        );
        out + &event(
            "response.output_item.done",
            seq,
            json!({"output_index": index, "item": item}),
        )
    }

    /// The events of a `function_call` item at `index`: added, its arguments (one
    /// delta), done.
    fn call_done(&mut self, index: usize, item: &Value) -> String {
        let seq = &mut self.seq;
        let mut added = item.clone();
        added["arguments"] = json!("");
        added["status"] = json!("in_progress");
        let ids = json!({"item_id": item["id"], "output_index": index});
        let mut delta = ids.clone();
        delta["delta"] = item["arguments"].clone();
        let mut done = ids;
        done["arguments"] = item["arguments"].clone();
        let mut out = event(
            "response.output_item.added",
            seq,
            json!({"output_index": index, "item": added}),
        );
        out += &event("response.function_call_arguments.delta", seq, delta);
        out += &event("response.function_call_arguments.done", seq, done);
        out + &event(
            "response.output_item.done",
            seq,
            json!({"output_index": index, "item": item}),
        )
    }

    fn fail(&mut self, err: &ApiError) -> String {
        self.phase = Phase::Done;
        match self.run.take() {
            Some(run) => self.failed(&run.turn, err),
            None => String::new(),
        }
    }

    /// `response.failed` for `turn`.
    fn failed(&mut self, turn: &PreparedTurn, err: &ApiError) -> String {
        tracing::warn!(id = %turn.response_id, error = %err, "response stream failed");
        let message = http_error(err).body["error"]["message"]
            .as_str()
            .unwrap_or("the response failed")
            .to_string();
        let snapshot = turn.snapshot(&Status::Failed(message));
        event(
            "response.failed",
            &mut self.seq,
            json!({ "response": snapshot }),
        )
    }
}
