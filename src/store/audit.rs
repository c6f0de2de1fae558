//! The conversation log in the store: logged exchanges (`audit_exchanges`), the
//! categories of their moderation hits (`audit_hit_categories`, for the review queue's
//! filter) and the human review queue (`audit_reviews`). Written once over `SqlConn`,
//! so SQLite and PostgreSQL run the same statements; the reads live in `audit_read.rs`.
//!
//! Invariants: a batch of records is one transaction; inserting a record whose id is
//! already stored changes nothing (`ON CONFLICT DO NOTHING`), so a batch retried after a
//! commit whose answer was lost writes each record exactly once; an exchange, its
//! categories and its review row are deleted together; retention never deletes an
//! exchange reviewed as a `violation` (only an admin's delete does). Input, output and
//! hits are stored as the JSON the log writes; the store does not interpret them.

use super::sql::{write, RowExt, SqlConn};
use super::StoreError;

/// Why an exchange is in the review queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewReason {
    /// A moderation rule matched its input or output.
    Flagged,
    /// Drawn at random (`--review-sample-rate`).
    Sampled,
    /// A reviewer gave a verdict on an exchange that was not queued.
    Manual,
}

impl ReviewReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewReason::Flagged => "flagged",
            ReviewReason::Sampled => "sampled",
            ReviewReason::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "flagged" => ReviewReason::Flagged,
            "sampled" => ReviewReason::Sampled,
            "manual" => ReviewReason::Manual,
            _ => return None,
        })
    }
}

/// A reviewer's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Kept past the retention period until an admin deletes it.
    Violation,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Violation => "violation",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => Verdict::Ok,
            "violation" => Verdict::Violation,
            _ => return None,
        })
    }
}

/// One logged exchange (a request and what the model answered), as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditRecord {
    /// Made by the server (`exch_…`), unique; the client's request id may repeat.
    pub id: String,
    pub request_id: String,
    /// Unix milliseconds when the request arrived.
    pub created_at_ms: i64,
    pub route: String,
    pub model: String,
    /// The hash of the API key (`Owner`), never the key.
    pub api_key_id: String,
    pub conversation_id: Option<String>,
    pub response_id: Option<String>,
    pub previous_response_id: Option<String>,
    /// The dialog the exchange belongs to: its conversation, else the first response of
    /// its `previous_response_id` chain; `None` for stateless routes.
    pub thread_id: Option<String>,
    pub client_addr: Option<String>,
    /// The `X-Forwarded-For` header as the client (or a proxy) sent it: not verified.
    pub forwarded_for: Option<String>,
    /// 200, 499 (the client left), 400 (input refused), 5xx.
    pub status: i64,
    /// The choices' finish reasons, comma-separated; `None` when none finished.
    pub finish_reason: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    /// JSON array of the input messages.
    pub input: String,
    /// JSON array of the choices' output.
    pub output: String,
    /// JSON array of the moderation hits.
    pub hits: String,
    /// Categories of the hits (distinct).
    pub categories: Vec<String>,
}

/// A record and its place in the review queue (for records that are queued or queued now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewState {
    pub reason: ReviewReason,
    pub queued_at_ms: i64,
    /// `None`: not reviewed yet.
    pub verdict: Option<Verdict>,
    pub note: Option<String>,
    pub reviewer: Option<String>,
    pub reviewed_at_ms: Option<i64>,
}

/// A record to write: the exchange and, when it goes to the review queue, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub record: AuditRecord,
    pub review: Option<ReviewReason>,
}

/// A logged exchange as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredExchange {
    pub record: AuditRecord,
    pub review: Option<ReviewState>,
}

/// A verdict to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictRecord {
    pub verdict: Verdict,
    pub note: Option<String>,
    pub reviewer: String,
    pub at_ms: i64,
}

const INSERT_EXCHANGE: &str = "INSERT INTO audit_exchanges (id, request_id, created_at_ms, \
     route, model, api_key_id, conversation_id, response_id, previous_response_id, thread_id, \
     client_addr, forwarded_for, status, finish_reason, prompt_tokens, completion_tokens, \
     cached_tokens, input, output, hits) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
     $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) ON CONFLICT (id) DO NOTHING";

fn insert_exchange(conn: &mut dyn SqlConn, r: &AuditRecord) -> Result<u64, StoreError> {
    conn.execute(
        INSERT_EXCHANGE,
        &[
            r.id.as_str().into(),
            r.request_id.as_str().into(),
            r.created_at_ms.into(),
            r.route.as_str().into(),
            r.model.as_str().into(),
            r.api_key_id.as_str().into(),
            r.conversation_id.as_deref().into(),
            r.response_id.as_deref().into(),
            r.previous_response_id.as_deref().into(),
            r.thread_id.as_deref().into(),
            r.client_addr.as_deref().into(),
            r.forwarded_for.as_deref().into(),
            r.status.into(),
            r.finish_reason.as_deref().into(),
            r.prompt_tokens.into(),
            r.completion_tokens.into(),
            r.cached_tokens.into(),
            r.input.as_str().into(),
            r.output.as_str().into(),
            r.hits.as_str().into(),
        ],
    )
}

/// Writes `batch` in one transaction; returns how many records were new (a record
/// already stored, from an earlier try of the same batch, is skipped with its rows).
pub fn append(conn: &mut dyn SqlConn, batch: &[AuditEntry]) -> Result<u64, StoreError> {
    write(conn, |conn| {
        let mut inserted = 0;
        for entry in batch {
            let r = &entry.record;
            if insert_exchange(conn, r)? == 0 {
                continue;
            }
            inserted += 1;
            for category in &r.categories {
                conn.execute(
                    "INSERT INTO audit_hit_categories (exchange_id, category) VALUES ($1, $2) \
                     ON CONFLICT (exchange_id, category) DO NOTHING",
                    &[r.id.as_str().into(), category.as_str().into()],
                )?;
            }
            if let Some(reason) = entry.review {
                conn.execute(
                    "INSERT INTO audit_reviews (exchange_id, reason, queued_at_ms) \
                     VALUES ($1, $2, $3) ON CONFLICT (exchange_id) DO NOTHING",
                    &[
                        r.id.as_str().into(),
                        reason.as_str().into(),
                        r.created_at_ms.into(),
                    ],
                )?;
            }
        }
        Ok(inserted)
    })
}

/// Records a verdict on exchange `id` (queueing it as `manual` when it was not queued).
/// False when there is no such exchange.
pub fn set_verdict(
    conn: &mut dyn SqlConn,
    id: &str,
    v: &VerdictRecord,
) -> Result<bool, StoreError> {
    write(conn, |conn| {
        let exists = conn.query("SELECT id FROM audit_exchanges WHERE id = $1", &[id.into()])?;
        if exists.is_empty() {
            return Ok(false);
        }
        conn.execute(
            "INSERT INTO audit_reviews (exchange_id, reason, queued_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (exchange_id) DO NOTHING",
            &[
                id.into(),
                ReviewReason::Manual.as_str().into(),
                v.at_ms.into(),
            ],
        )?;
        conn.execute(
            "UPDATE audit_reviews SET verdict = $2, note = $3, reviewer = $4, reviewed_at_ms = $5 \
             WHERE exchange_id = $1",
            &[
                id.into(),
                v.verdict.as_str().into(),
                v.note.as_deref().into(),
                v.reviewer.as_str().into(),
                v.at_ms.into(),
            ],
        )?;
        Ok(true)
    })
}

/// Deletes the rows of exchange `id` (its categories and review row too).
fn delete_rows(conn: &mut dyn SqlConn, id: &str) -> Result<u64, StoreError> {
    conn.execute(
        "DELETE FROM audit_hit_categories WHERE exchange_id = $1",
        &[id.into()],
    )?;
    conn.execute(
        "DELETE FROM audit_reviews WHERE exchange_id = $1",
        &[id.into()],
    )?;
    conn.execute("DELETE FROM audit_exchanges WHERE id = $1", &[id.into()])
}

/// An admin's delete: exchange `id` whatever its verdict. False when there was none.
pub fn delete(conn: &mut dyn SqlConn, id: &str) -> Result<bool, StoreError> {
    write(conn, |conn| Ok(delete_rows(conn, id)? > 0))
}

/// Retention: deletes up to `limit` exchanges made before `cutoff_ms` (oldest first),
/// except those reviewed as a violation, in one transaction; returns how many.
pub fn delete_older(conn: &mut dyn SqlConn, cutoff_ms: i64, limit: i64) -> Result<u64, StoreError> {
    write(conn, |conn| {
        let rows = conn.query(
            "SELECT e.id FROM audit_exchanges e WHERE e.created_at_ms < $1 AND NOT EXISTS \
             (SELECT 1 FROM audit_reviews r WHERE r.exchange_id = e.id AND r.verdict = 'violation') \
             ORDER BY e.created_at_ms, e.id LIMIT $2",
            &[cutoff_ms.into(), limit.into()],
        )?;
        let mut deleted = 0;
        for row in &rows {
            deleted += delete_rows(conn, &row.text(0)?)?;
        }
        Ok(deleted)
    })
}

/// Exchanges waiting for a verdict.
pub fn pending_reviews(conn: &mut dyn SqlConn) -> Result<i64, StoreError> {
    let rows = conn.query(
        "SELECT COUNT(*) FROM audit_reviews WHERE verdict IS NULL",
        &[],
    )?;
    rows.first()
        .ok_or_else(|| StoreError::Query("COUNT returned no row".into()))?
        .int(0)
}
