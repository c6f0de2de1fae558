//! The admin API of the conversation log and the human review queue. `routes` puts every
//! path here in `ADMIN_ROUTES`: only `--admin-api-key` keys open it, never the ordinary
//! API keys (see `access`). Answers carry `Cache-Control: no-store` (they hold what
//! users wrote).
//!
//! - `GET /admin/v1/review/queue`: the queue, oldest first; filters `reason` (flagged |
//!   sampled | manual), `category` (of a moderation hit), `since`/`until` (a date, a UTC
//!   time or unix seconds; `[since, until)`), `verdict` (pending | ok | violation); pages
//!   with `after` (an exchange id) and `limit` (1..=100, default 20).
//! - `GET /admin/v1/exchanges/{id}`: one logged exchange with its review state.
//! - `POST /admin/v1/exchanges/{id}/review`: a verdict (`ok` | `violation`, `note`,
//!   `reviewer`); an exchange that was not queued is queued as `manual`. A `violation`
//!   is kept past the retention period until deleted here.
//! - `DELETE /admin/v1/exchanges/{id}`: deletes an exchange whatever its verdict.
//! - `GET /admin/v1/threads/{id}`: a whole dialog (a conversation id, or the first
//!   response id of a `previous_response_id` chain: an exchange's `thread_id`), oldest
//!   first, paged like the queue; 404 when the log holds none of it.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::dialog_http::query_pairs;
use super::gate::read_json;
use super::request::JsonBody;
use super::state::AppState;
use crate::audit::time::parse_date;
use crate::audit::view::{list, to_json, OBJECT};
use crate::audit::{AuditError, AuditLog};
use crate::dialog::MAX_PAGE;
use crate::error::ApiError;
use crate::store::{
    QueueQuery, ReviewReason, StoreError, Verdict, VerdictFilter, VerdictRecord, AFTER_NOT_FOUND,
};

type Data = web::Data<AppState>;
type Reply = Result<HttpResponse, ApiError>;

/// Longest `note` of a verdict, in characters.
pub const MAX_NOTE_CHARS: usize = 4000;
/// Longest `reviewer`, in characters.
pub const MAX_REVIEWER_CHARS: usize = 200;
/// Page size without `limit`.
const DEFAULT_LIMIT: usize = 20;

fn log_of(state: &AppState) -> Result<Arc<AuditLog>, ApiError> {
    Ok(state.audit().ok_or(AuditError::Disabled)?.clone())
}

fn invalid(param: &str, message: String) -> ApiError {
    AuditError::Invalid {
        param: param.to_string(),
        message,
    }
    .into()
}

/// A store error of a listing: an unknown `after` is the caller's mistake.
fn list_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(AFTER_NOT_FOUND) => {
            invalid("after", "`after` names no logged exchange".into())
        }
        other => AuditError::Store(other).into(),
    }
}

fn no_store(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

fn limit(value: &str) -> Result<usize, ApiError> {
    match value.parse::<usize>() {
        Ok(n @ 1..=MAX_PAGE) => Ok(n),
        _ => Err(invalid(
            "limit",
            format!("`limit` must be an integer in 1..={MAX_PAGE}. Given: {value:?}"),
        )),
    }
}

fn date(param: &str, value: &str) -> Result<i64, ApiError> {
    parse_date(value).ok_or_else(|| {
        invalid(
            param,
            format!("`{param}` must be a date (2026-01-31), a UTC time (2026-01-31T08:00:00Z) or unix seconds. Given: {value:?}"),
        )
    })
}

/// The review queue's query string.
fn queue_query(query: &str) -> Result<QueueQuery, ApiError> {
    let mut q = QueueQuery {
        limit: DEFAULT_LIMIT,
        ..QueueQuery::default()
    };
    for (key, value) in query_pairs(query).map_err(|m| invalid("query", m))? {
        match key.as_str() {
            "reason" => {
                q.reason = Some(ReviewReason::parse(&value).ok_or_else(|| {
                    invalid(
                        "reason",
                        format!("`reason` must be flagged, sampled or manual. Given: {value:?}"),
                    )
                })?)
            }
            // An empty filter is "not given", as an empty `after` is.
            "category" | "since" | "until" if value.is_empty() => {}
            "category" => q.category = Some(value),
            "since" => q.since_ms = Some(date("since", &value)?),
            "until" => q.until_ms = Some(date("until", &value)?),
            "verdict" => {
                q.verdict = Some(match value.as_str() {
                    "pending" => VerdictFilter::Pending,
                    other => VerdictFilter::Is(Verdict::parse(other).ok_or_else(|| {
                        invalid(
                            "verdict",
                            format!("`verdict` must be pending, ok or violation. Given: {value:?}"),
                        )
                    })?),
                })
            }
            "after" => q.after = Some(value).filter(|a| !a.is_empty()),
            "limit" => q.limit = limit(&value)?,
            _ => {}
        }
    }
    Ok(q)
}

/// `GET /admin/v1/review/queue`.
pub async fn review_queue(state: Data, req: HttpRequest) -> Reply {
    let log = log_of(&state)?;
    let query = queue_query(req.query_string())?;
    let page = log
        .pool()
        .run(move |s| s.review_queue(&query))
        .await
        .map_err(list_error)?;
    Ok(no_store(list(&page.items, page.has_more)))
}

/// `GET /admin/v1/exchanges/{id}`.
pub async fn exchange(state: Data, id: web::Path<String>) -> Reply {
    let log = log_of(&state)?;
    let key = id.clone();
    let found = log
        .pool()
        .run(move |s| s.audit_exchange(&key))
        .await
        .map_err(AuditError::Store)?;
    let found = found.ok_or_else(|| AuditError::NotFound {
        what: "exchange",
        id: id.into_inner(),
    })?;
    Ok(no_store(to_json(&found)))
}

/// `POST /admin/v1/exchanges/{id}/review` body.
#[derive(Debug, Deserialize)]
pub struct ReviewBody {
    pub verdict: Option<String>,
    pub note: Option<String>,
    pub reviewer: Option<String>,
}

impl JsonBody for ReviewBody {}

impl ReviewBody {
    fn validate(self, at_ms: i64) -> Result<VerdictRecord, ApiError> {
        let given = self.verdict.unwrap_or_default();
        let verdict = Verdict::parse(&given).ok_or_else(|| {
            invalid(
                "verdict",
                format!("`verdict` must be `ok` or `violation`. Given: {given:?}"),
            )
        })?;
        let reviewer = self.reviewer.unwrap_or_default().trim().to_string();
        let chars = reviewer.chars().count();
        if !(1..=MAX_REVIEWER_CHARS).contains(&chars) {
            return Err(invalid(
                "reviewer",
                format!("`reviewer` must name the reviewer in 1..={MAX_REVIEWER_CHARS} characters. Given: {chars}"),
            ));
        }
        let note_chars = self.note.as_deref().map_or(0, |n| n.chars().count());
        if note_chars > MAX_NOTE_CHARS {
            return Err(invalid(
                "note",
                format!("`note` must be at most {MAX_NOTE_CHARS} characters. Given: {note_chars}"),
            ));
        }
        Ok(VerdictRecord {
            verdict,
            note: self.note,
            reviewer,
            at_ms,
        })
    }
}

/// `POST /admin/v1/exchanges/{id}/review`.
pub async fn review(
    state: Data,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> Reply {
    let log = log_of(&state)?;
    let parsed: ReviewBody = read_json(&req, body, state.config.max_request_bytes).await?;
    let verdict = parsed.validate(log.now_ms())?;
    let key = id.clone();
    let updated = log
        .pool()
        .run(move |s| {
            if !s.set_verdict(&key, &verdict)? {
                return Ok(None);
            }
            s.audit_exchange(&key)
        })
        .await
        .map_err(AuditError::Store)?;
    let updated = updated.ok_or_else(|| AuditError::NotFound {
        what: "exchange",
        id: id.into_inner(),
    })?;
    log.refresh_review_depth().await;
    Ok(no_store(to_json(&updated)))
}

/// `DELETE /admin/v1/exchanges/{id}`.
pub async fn delete_exchange(state: Data, id: web::Path<String>) -> Reply {
    let log = log_of(&state)?;
    let key = id.clone();
    let deleted = log
        .pool()
        .run(move |s| s.delete_audit_exchange(&key))
        .await
        .map_err(AuditError::Store)?;
    if !deleted {
        return Err(AuditError::NotFound {
            what: "exchange",
            id: id.into_inner(),
        }
        .into());
    }
    log.refresh_review_depth().await;
    Ok(no_store(
        json!({"id": *id, "object": OBJECT, "deleted": true}),
    ))
}

/// `GET /admin/v1/threads/{id}`.
pub async fn thread(state: Data, req: HttpRequest, id: web::Path<String>) -> Reply {
    let log = log_of(&state)?;
    let (mut after, mut page_size) = (None, DEFAULT_LIMIT);
    for (key, value) in query_pairs(req.query_string()).map_err(|m| invalid("query", m))? {
        match key.as_str() {
            "after" => after = Some(value).filter(|a| !a.is_empty()),
            "limit" => page_size = limit(&value)?,
            _ => {}
        }
    }
    let (key, first_page) = (id.clone(), after.is_none());
    let page = log
        .pool()
        .run(move |s| s.audit_thread(&key, after.as_deref(), page_size))
        .await
        .map_err(list_error)?;
    if first_page && page.items.is_empty() {
        return Err(AuditError::NotFound {
            what: "thread",
            id: id.into_inner(),
        }
        .into());
    }
    Ok(no_store(list(&page.items, page.has_more)))
}
