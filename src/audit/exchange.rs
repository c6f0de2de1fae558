//! One exchange on its way into the log, route-agnostic: a front end (the HTTP routes,
//! the WebSocket chat) fills an `ExchangeMeta` with what it knows of the request,
//! starts an `Exchange`, and ends it exactly once — `finish` with the outcome, or
//! `refused` when moderation blocked the input before the engine saw it. Both consume
//! the exchange, so it cannot be logged twice; one dropped unfinished is not logged (a
//! request refused for other reasons — bad fields, capacity — is no exchange).
//!
//! The record's JSON: `input` `[{"role", "content"}]` (as the model saw it: masked
//! text masked), `output` `[{"index", "text", "finish_reason"}]` (what the client was
//! sent), `hits` `[{"stage", "category", "action", "index", "param", "text"}]` (`text`,
//! the matched text, is left out for `mask` hits: the mask hid it from the model, the
//! log keeps it hidden too).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::AuditLog;
use crate::safety::{Action, Hit};
use crate::store::AuditRecord;

/// One input message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputMessage {
    /// `system`, `user`, `assistant`, … (`prompt` for a completion prompt).
    pub role: String,
    pub content: String,
}

impl InputMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What a front end knows of an exchange before it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeMeta {
    pub request_id: String,
    /// The route (`/v1/chat/completions`, `/v1/chat/ws`, …).
    pub route: String,
    pub model: String,
    /// The API key's hash (`store::Owner`), never the key.
    pub api_key_id: String,
    pub client_addr: Option<String>,
    pub forwarded_for: Option<String>,
    pub conversation_id: Option<String>,
    pub response_id: Option<String>,
    pub previous_response_id: Option<String>,
    /// The dialog (conversation, or the first response of a chain); `None`: stateless.
    pub thread_id: Option<String>,
    pub input: Vec<InputMessage>,
}

/// How one choice ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChoiceOutcome {
    /// The text sent to the client.
    pub text: String,
    /// `None`: it did not finish (the client left, an error).
    pub finish_reason: Option<&'static str>,
}

/// How an exchange ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeOutcome {
    /// 200, 499 (the client left first), or the error's status.
    pub status: u16,
    pub choices: Vec<ChoiceOutcome>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

/// An exchange being served (see the module header).
pub struct Exchange {
    log: Arc<AuditLog>,
    pub meta: ExchangeMeta,
    started_ms: i64,
    /// `exch_` + this process's start sequence + random bits: the log reads in
    /// (`created_at_ms`, `id`) order, so two exchanges of one replica begun in the same
    /// millisecond read back in the order they began.
    id: String,
}

/// Exchanges begun in this process, for the ids' order within a millisecond.
static BEGUN: AtomicU64 = AtomicU64::new(0);

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("meta", &self.meta)
            .finish()
    }
}

impl Exchange {
    /// Starts an exchange now (its time is the log clock's).
    pub fn begin(log: &Arc<AuditLog>, meta: ExchangeMeta) -> Self {
        let seq = BEGUN.fetch_add(1, Ordering::Relaxed);
        Self {
            started_ms: log.now_ms(),
            id: format!("exch_{seq:016x}{:016x}", rand::random::<u64>()),
            log: log.clone(),
            meta,
        }
    }

    /// Logs the exchange with its outcome and every moderation hit it had.
    pub fn finish(self, outcome: &ExchangeOutcome, hits: &[Hit]) {
        let record = self.record(outcome, hits);
        self.log.submit(record, !hits.is_empty());
    }

    /// Logs an exchange whose input a moderation rule blocked (400 `content_filter`).
    pub fn refused(self, hits: &[Hit]) {
        let outcome = ExchangeOutcome {
            status: 400,
            ..ExchangeOutcome::default()
        };
        let mut record = self.record(&outcome, hits);
        record.finish_reason = Some("content_filter".into());
        self.log.submit(record, true);
    }

    fn record(&self, outcome: &ExchangeOutcome, hits: &[Hit]) -> AuditRecord {
        let m = &self.meta;
        let mut reasons: Vec<&str> = outcome
            .choices
            .iter()
            .filter_map(|c| c.finish_reason)
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        let mut categories: Vec<String> = hits.iter().map(|h| h.category.clone()).collect();
        categories.sort_unstable();
        categories.dedup();
        AuditRecord {
            id: self.id.clone(),
            request_id: m.request_id.clone(),
            created_at_ms: self.started_ms,
            route: m.route.clone(),
            model: m.model.clone(),
            api_key_id: m.api_key_id.clone(),
            conversation_id: m.conversation_id.clone(),
            response_id: m.response_id.clone(),
            previous_response_id: m.previous_response_id.clone(),
            thread_id: m.thread_id.clone(),
            client_addr: m.client_addr.clone(),
            forwarded_for: m.forwarded_for.clone(),
            status: i64::from(outcome.status),
            finish_reason: (!reasons.is_empty()).then(|| reasons.join(",")),
            prompt_tokens: outcome.prompt_tokens as i64,
            completion_tokens: outcome.completion_tokens as i64,
            cached_tokens: outcome.cached_tokens as i64,
            input: input_json(&m.input).to_string(),
            output: output_json(&outcome.choices).to_string(),
            hits: hits_json(hits).to_string(),
            categories,
        }
    }
}

fn input_json(input: &[InputMessage]) -> Value {
    Value::Array(
        input
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect(),
    )
}

fn output_json(choices: &[ChoiceOutcome]) -> Value {
    Value::Array(
        choices
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"index": i, "text": c.text, "finish_reason": c.finish_reason}))
            .collect(),
    )
}

fn hits_json(hits: &[Hit]) -> Value {
    Value::Array(
        hits.iter()
            .map(|h| {
                let text = (h.action != Action::Mask).then_some(h.text.as_str());
                json!({"stage": h.stage.as_str(), "category": h.category,
                    "action": h.action.as_str(), "index": h.index, "param": h.param,
                    "text": text})
            })
            .collect(),
    )
}
