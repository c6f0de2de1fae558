//! Reads of the conversation log: one exchange, a dialog's exchanges (its thread), the
//! review queue with its filters, and pages for the regulators' export. Every list is
//! ordered by (time, id), oldest first, and pages with a cursor on that order, so a
//! page never skips or repeats a record whatever is written meanwhile.
//!
//! Optional filters are `NULL` parameters (`CAST($n AS …) IS NULL OR …`), so each query is
//! one static statement on both backends.

use super::audit::{AuditRecord, ReviewReason, ReviewState, StoredExchange, Verdict};
use super::sql::{Row, RowExt, SqlConn, SqlValue};
use super::StoreError;

/// Which review state a queue listing wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictFilter {
    /// Not reviewed yet.
    Pending,
    Is(Verdict),
}

/// A page of the review queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueQuery {
    pub reason: Option<ReviewReason>,
    /// Exchanges with a hit of this category.
    pub category: Option<String>,
    /// Exchanges made at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Exchanges made before this time (unix ms).
    pub until_ms: Option<i64>,
    pub verdict: Option<VerdictFilter>,
    /// The last exchange of the previous page.
    pub after: Option<String>,
    pub limit: usize,
}

/// Where a page starts: after (time, id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at_ms: i64,
    pub id: String,
}

impl Cursor {
    /// Before every record.
    pub fn start() -> Self {
        Cursor {
            at_ms: i64::MIN,
            id: String::new(),
        }
    }

    pub fn of(record: &AuditRecord) -> Self {
        Cursor {
            at_ms: record.created_at_ms,
            id: record.id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExchangePage {
    pub items: Vec<StoredExchange>,
    pub has_more: bool,
}

/// `SELECT` of an exchange and its review row (`e`, `r`), then `$tail`.
macro_rules! select_exchanges {
    ($join:literal, $tail:literal) => {
        concat!(
            "SELECT e.id, e.request_id, e.created_at_ms, e.route, e.model, e.api_key_id, \
             e.conversation_id, e.response_id, e.previous_response_id, e.thread_id, \
             e.client_addr, e.forwarded_for, e.status, e.finish_reason, e.prompt_tokens, \
             e.completion_tokens, e.cached_tokens, e.input, e.output, e.hits, \
             r.reason, r.queued_at_ms, r.verdict, r.note, r.reviewer, r.reviewed_at_ms \
             FROM audit_exchanges e ",
            $join,
            " audit_reviews r ON r.exchange_id = e.id ",
            $tail
        )
    };
}

fn opt_int(row: &[SqlValue], i: usize) -> Result<Option<i64>, StoreError> {
    match row.get(i) {
        Some(SqlValue::Null) => Ok(None),
        _ => row.int(i).map(Some),
    }
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("audit_reviews.{what} is {value:?}"))
}

fn review(row: &[SqlValue]) -> Result<Option<ReviewState>, StoreError> {
    let Some(reason) = row.opt_text(20)? else {
        return Ok(None);
    };
    let verdict = match row.opt_text(22)? {
        None => None,
        Some(v) => Some(Verdict::parse(&v).ok_or_else(|| corrupt("verdict", &v))?),
    };
    Ok(Some(ReviewState {
        reason: ReviewReason::parse(&reason).ok_or_else(|| corrupt("reason", &reason))?,
        queued_at_ms: row.int(21)?,
        verdict,
        note: row.opt_text(23)?,
        reviewer: row.opt_text(24)?,
        reviewed_at_ms: opt_int(row, 25)?,
    }))
}

/// One row of `select_exchanges!` (categories are filled in by the caller).
fn exchange(row: &Row) -> Result<StoredExchange, StoreError> {
    let record = AuditRecord {
        id: row.text(0)?,
        request_id: row.text(1)?,
        created_at_ms: row.int(2)?,
        route: row.text(3)?,
        model: row.text(4)?,
        api_key_id: row.text(5)?,
        conversation_id: row.opt_text(6)?,
        response_id: row.opt_text(7)?,
        previous_response_id: row.opt_text(8)?,
        thread_id: row.opt_text(9)?,
        client_addr: row.opt_text(10)?,
        forwarded_for: row.opt_text(11)?,
        status: row.int(12)?,
        finish_reason: row.opt_text(13)?,
        prompt_tokens: row.int(14)?,
        completion_tokens: row.int(15)?,
        cached_tokens: row.int(16)?,
        input: row.text(17)?,
        output: row.text(18)?,
        hits: row.text(19)?,
        categories: Vec::new(),
    };
    Ok(StoredExchange {
        record,
        review: review(row)?,
    })
}

/// The exchanges of `rows` with their hit categories.
fn exchanges(conn: &mut dyn SqlConn, rows: &[Row]) -> Result<Vec<StoredExchange>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut ex = exchange(row)?;
        if ex.record.hits != "[]" {
            let categories = conn.query(
                "SELECT category FROM audit_hit_categories WHERE exchange_id = $1 \
                 ORDER BY category",
                &[ex.record.id.as_str().into()],
            )?;
            ex.record.categories = categories
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<_, _>>()?;
        }
        out.push(ex);
    }
    Ok(out)
}

/// `limit + 1` rows fetched → a page of `limit` and whether more follow.
fn page(conn: &mut dyn SqlConn, rows: Vec<Row>, limit: usize) -> Result<ExchangePage, StoreError> {
    let has_more = rows.len() > limit;
    let items = exchanges(conn, &rows[..rows.len().min(limit)])?;
    Ok(ExchangePage { items, has_more })
}

/// The cursor after exchange `after` (`NotFound` when it is not logged).
fn cursor_of(conn: &mut dyn SqlConn, after: Option<&str>) -> Result<Cursor, StoreError> {
    let Some(id) = after else {
        return Ok(Cursor::start());
    };
    let rows = conn.query(
        "SELECT created_at_ms FROM audit_exchanges WHERE id = $1",
        &[id.into()],
    )?;
    let at_ms = rows
        .first()
        .ok_or(StoreError::NotFound(super::AFTER_NOT_FOUND))?
        .int(0)?;
    Ok(Cursor {
        at_ms,
        id: id.to_string(),
    })
}

/// Exchange `id`.
pub fn exchange_by_id(
    conn: &mut dyn SqlConn,
    id: &str,
) -> Result<Option<StoredExchange>, StoreError> {
    const SQL: &str = select_exchanges!("LEFT JOIN", "WHERE e.id = $1");
    let rows = conn.query(SQL, &[id.into()])?;
    Ok(exchanges(conn, &rows)?.pop())
}

/// A page of the exchanges of thread `thread_id`, oldest first.
pub fn thread(
    conn: &mut dyn SqlConn,
    thread_id: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<ExchangePage, StoreError> {
    const SQL: &str = select_exchanges!(
        "LEFT JOIN",
        "WHERE e.thread_id = $1 AND (e.created_at_ms > $2 OR (e.created_at_ms = $2 AND e.id > $3)) \
         ORDER BY e.created_at_ms, e.id LIMIT $4"
    );
    let from = cursor_of(conn, after)?;
    let rows = conn.query(
        SQL,
        &[
            thread_id.into(),
            from.at_ms.into(),
            from.id.as_str().into(),
            (limit as i64 + 1).into(),
        ],
    )?;
    page(conn, rows, limit)
}

/// A page of the review queue, oldest first.
pub fn review_queue(conn: &mut dyn SqlConn, q: &QueueQuery) -> Result<ExchangePage, StoreError> {
    const SQL: &str = select_exchanges!(
        "JOIN",
        "WHERE (CAST($1 AS TEXT) IS NULL OR r.reason = $1) \
         AND (CAST($2 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM audit_hit_categories c \
              WHERE c.exchange_id = e.id AND c.category = $2)) \
         AND (CAST($3 AS BIGINT) IS NULL OR e.created_at_ms >= $3) \
         AND (CAST($4 AS BIGINT) IS NULL OR e.created_at_ms < $4) \
         AND (CAST($5 AS TEXT) IS NULL OR COALESCE(r.verdict, 'pending') = $5) \
         AND (e.created_at_ms > $6 OR (e.created_at_ms = $6 AND e.id > $7)) \
         ORDER BY e.created_at_ms, e.id LIMIT $8"
    );
    let from = cursor_of(conn, q.after.as_deref())?;
    let verdict = q.verdict.map(|v| match v {
        VerdictFilter::Pending => "pending",
        VerdictFilter::Is(v) => v.as_str(),
    });
    let rows = conn.query(
        SQL,
        &[
            q.reason.map(ReviewReason::as_str).into(),
            q.category.as_deref().into(),
            q.since_ms.into(),
            q.until_ms.into(),
            verdict.into(),
            from.at_ms.into(),
            from.id.as_str().into(),
            (q.limit as i64 + 1).into(),
        ],
    )?;
    page(conn, rows, q.limit)
}

/// Up to `limit` exchanges made in `[since_ms, until_ms)` after `from`, oldest first.
pub fn export_page(
    conn: &mut dyn SqlConn,
    since_ms: i64,
    until_ms: i64,
    from: &Cursor,
    limit: usize,
) -> Result<Vec<StoredExchange>, StoreError> {
    const SQL: &str = select_exchanges!(
        "LEFT JOIN",
        "WHERE e.created_at_ms >= $1 AND e.created_at_ms < $2 \
         AND (e.created_at_ms > $3 OR (e.created_at_ms = $3 AND e.id > $4)) \
         ORDER BY e.created_at_ms, e.id LIMIT $5"
    );
    let rows = conn.query(
        SQL,
        &[
            since_ms.into(),
            until_ms.into(),
            from.at_ms.into(),
            from.id.as_str().into(),
            (limit as i64).into(),
        ],
    )?;
    exchanges(conn, &rows)
}
