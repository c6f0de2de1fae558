//! Running a prepared turn on the engine: collected into the final response object, or
//! streamed as OpenAI's typed events (`event: <type>` + `data: {…, "sequence_number"}`):
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta`…, then — after the turn
//! is committed — `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done` and `response.completed` (or `response.incomplete`:
//! `max_output_tokens`, or `content_filter` when the moderation guard cut the answer);
//! an engine or store failure ends the stream with `response.failed`.
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
        Ok(TurnOutcome {
            text: self.text,
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

    /// Runs the turn to its end, commits it and returns the final response object.
    pub async fn complete(mut self) -> Result<Value, ApiError> {
        let mut answer = Answer::default();
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
}

/// The SSE body of `run`.
pub fn event_stream(
    run: TurnRun,
    keepalive: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let state = EventStream {
        run: Some(run),
        answer: Answer::default(),
        seq: 0,
        phase: Phase::Opening,
        keepalive,
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
                        if !ev.text.is_empty() {
                            return Some(self.delta(&ev.text));
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
        let item_id = run.turn.output_id.clone();
        let seq = &mut self.seq;
        let mut out = event("response.created", seq, json!({ "response": snapshot }));
        out += &event("response.in_progress", seq, json!({ "response": snapshot }));
        out += &event(
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
        event(
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
        let item = body["output"][0].clone();
        let part = item["content"][0].clone();
        let ids = json!({"item_id": item["id"], "output_index": 0, "content_index": 0});
        let with = |mut v: Value, extra: Value| {
            if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(extra.clone());
            }
            v
        };
        let seq = &mut self.seq;
        let mut out = event(
            "response.output_text.done",
            seq,
            with(ids.clone(), json!({"text": part["text"], "logprobs": []})),
        );
        out += &event(
            "response.content_part.done",
            seq,
            with(ids, json!({ "part": part })),
        );
        out += &event(
            "response.output_item.done",
            seq,
            json!({"output_index": 0, "item": item}),
        );
        let kind = match body["status"].as_str() {
            Some("incomplete") => "response.incomplete",
            _ => "response.completed",
        };
        out + &event(kind, seq, json!({ "response": body }))
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
