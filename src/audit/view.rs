//! A logged exchange as JSON: the one shape the admin API answers and `tessera audit
//! export` writes (one object per line), and its way back (`parse`), so an export can
//! be read into the same records it was written from.
//!
//! Invariant: `parse(&to_json(x)) == x` for every stored exchange (input, output and
//! hits are kept as the JSON values they were stored as; times are unix milliseconds,
//! with an RFC 3339 `time` beside them for people).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::time::rfc3339;
use crate::store::{AuditRecord, ReviewReason, ReviewState, StoredExchange, Verdict};

/// `object` of a logged exchange.
pub const OBJECT: &str = "audit.exchange";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewView {
    /// `flagged`, `sampled` or `manual`.
    pub reason: String,
    pub queued_at_ms: i64,
    /// `null` until reviewed, then `ok` or `violation`.
    pub verdict: Option<String>,
    pub note: Option<String>,
    pub reviewer: Option<String>,
    pub reviewed_at_ms: Option<i64>,
}

/// The JSON of one logged exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeView {
    pub id: String,
    pub object: String,
    pub request_id: String,
    pub created_at_ms: i64,
    /// `created_at_ms` in RFC 3339 (UTC).
    pub time: String,
    pub route: String,
    pub model: String,
    pub api_key_id: String,
    pub conversation_id: Option<String>,
    pub response_id: Option<String>,
    pub previous_response_id: Option<String>,
    pub thread_id: Option<String>,
    pub client_addr: Option<String>,
    pub forwarded_for: Option<String>,
    pub status: i64,
    pub finish_reason: Option<String>,
    pub usage: UsageView,
    pub input: Value,
    pub output: Value,
    pub moderation_hits: Value,
    pub categories: Vec<String>,
    pub review: Option<ReviewView>,
}

fn stored_json(what: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "a logged exchange's {what} is not JSON; shown as text");
        Value::String(text.to_string())
    })
}

/// The view of a stored exchange.
pub fn view(ex: &StoredExchange) -> ExchangeView {
    let r = &ex.record;
    ExchangeView {
        id: r.id.clone(),
        object: OBJECT.into(),
        request_id: r.request_id.clone(),
        created_at_ms: r.created_at_ms,
        time: rfc3339(r.created_at_ms),
        route: r.route.clone(),
        model: r.model.clone(),
        api_key_id: r.api_key_id.clone(),
        conversation_id: r.conversation_id.clone(),
        response_id: r.response_id.clone(),
        previous_response_id: r.previous_response_id.clone(),
        thread_id: r.thread_id.clone(),
        client_addr: r.client_addr.clone(),
        forwarded_for: r.forwarded_for.clone(),
        status: r.status,
        finish_reason: r.finish_reason.clone(),
        usage: UsageView {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: r.cached_tokens,
        },
        input: stored_json("input", &r.input),
        output: stored_json("output", &r.output),
        moderation_hits: stored_json("hits", &r.hits),
        categories: r.categories.clone(),
        review: ex.review.as_ref().map(|v| ReviewView {
            reason: v.reason.as_str().into(),
            queued_at_ms: v.queued_at_ms,
            verdict: v.verdict.map(|v| v.as_str().into()),
            note: v.note.clone(),
            reviewer: v.reviewer.clone(),
            reviewed_at_ms: v.reviewed_at_ms,
        }),
    }
}

/// The JSON object of a stored exchange.
pub fn to_json(ex: &StoredExchange) -> Value {
    serde_json::to_value(view(ex)).unwrap_or(Value::Null)
}

/// A stored exchange back from its JSON (a line of an export).
pub fn parse(line: &str) -> Result<StoredExchange, String> {
    let v: ExchangeView = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let review = match v.review {
        None => None,
        Some(r) => Some(ReviewState {
            reason: ReviewReason::parse(&r.reason)
                .ok_or_else(|| format!("unknown review reason {:?}", r.reason))?,
            queued_at_ms: r.queued_at_ms,
            verdict: match r.verdict.as_deref() {
                None => None,
                Some(s) => Some(Verdict::parse(s).ok_or_else(|| format!("unknown verdict {s:?}"))?),
            },
            note: r.note,
            reviewer: r.reviewer,
            reviewed_at_ms: r.reviewed_at_ms,
        }),
    };
    let record = AuditRecord {
        id: v.id,
        request_id: v.request_id,
        created_at_ms: v.created_at_ms,
        route: v.route,
        model: v.model,
        api_key_id: v.api_key_id,
        conversation_id: v.conversation_id,
        response_id: v.response_id,
        previous_response_id: v.previous_response_id,
        thread_id: v.thread_id,
        client_addr: v.client_addr,
        forwarded_for: v.forwarded_for,
        status: v.status,
        finish_reason: v.finish_reason,
        prompt_tokens: v.usage.prompt_tokens,
        completion_tokens: v.usage.completion_tokens,
        cached_tokens: v.usage.cached_tokens,
        input: v.input.to_string(),
        output: v.output.to_string(),
        hits: v.moderation_hits.to_string(),
        categories: v.categories,
    };
    Ok(StoredExchange { record, review })
}

/// A list object of exchanges (`first_id`/`last_id` null when empty).
pub fn list(items: &[StoredExchange], has_more: bool) -> Value {
    let data: Vec<Value> = items.iter().map(to_json).collect();
    serde_json::json!({
        "object": "list",
        "data": data,
        "first_id": items.first().map(|e| e.record.id.clone()),
        "last_id": items.last().map(|e| e.record.id.clone()),
        "has_more": has_more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_round_trip_through_their_json() {
        let record = AuditRecord {
            id: "exch_1".into(),
            request_id: "r1".into(),
            created_at_ms: 1_767_225_600_123,
            route: "/v1/responses".into(),
            model: "smol".into(),
            api_key_id: "key-ab".into(),
            conversation_id: Some("conv_1".into()),
            thread_id: Some("conv_1".into()),
            client_addr: Some("127.0.0.1:5".into()),
            status: 200,
            finish_reason: Some("stop".into()),
            prompt_tokens: 9,
            completion_tokens: 3,
            input: r#"[{"content":"炸弹?","role":"user"}]"#.into(),
            output: r#"[{"finish_reason":"stop","index":0,"text":"no"}]"#.into(),
            hits: r#"[{"action":"flag","category":"x","index":0,"param":"input","stage":"input","text":"炸弹"}]"#.into(),
            categories: vec!["x".into()],
            ..AuditRecord::default()
        };
        let review = ReviewState {
            reason: ReviewReason::Flagged,
            queued_at_ms: 5,
            verdict: Some(Verdict::Violation),
            note: Some("n".into()),
            reviewer: Some("ann".into()),
            reviewed_at_ms: Some(6),
        };
        for review in [None, Some(review)] {
            let ex = StoredExchange {
                record: record.clone(),
                review,
            };
            let json = to_json(&ex);
            assert_eq!(json["time"], "2026-01-01T00:00:00.123Z");
            assert_eq!(json["input"][0]["content"], "炸弹?");
            assert_eq!(parse(&json.to_string()), Ok(ex));
        }
        assert!(parse(r#"{"id": 1}"#).is_err());
    }
}
