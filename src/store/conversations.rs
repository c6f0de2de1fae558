//! `Store` for conversations, responses and items, written once over `SqlConn` (the same
//! statements run on SQLite and PostgreSQL).
//!
//! Invariants: a conversation's items have distinct positions (unique index) handed out
//! from `next_position` inside the transaction that appends them, so concurrent turns on
//! one conversation serialize on its row and never interleave or collide; every change to
//! a conversation's items bumps its `version` in the same transaction. A deleted response
//! stays as a tombstone row (`deleted = 1`, no items) so the chain of a later response
//! still walks past it.

use super::audit::{AuditEntry, StoredExchange, VerdictRecord};
use super::audit_read::{Cursor, ExchangePage, QueueQuery};
use super::chat;
use super::sql::{write, Row, RowExt, SqlConn, SqlValue};
use super::{
    audit, audit_read, Chain, ConversationRecord, FeedbackRecord, History, ItemRecord, Owner,
    Page, PageQuery, ResponseRecord, Store, StoreError, TranscriptItem, TurnRecord,
    AFTER_NOT_FOUND,
};

/// `Store` over one connection.
pub struct SqlStore<C: SqlConn> {
    conn: C,
}

impl<C: SqlConn> SqlStore<C> {
    pub fn new(conn: C) -> Self {
        Self { conn }
    }

    pub fn conn(&mut self) -> &mut C {
        &mut self.conn
    }
}

const INSERT_ITEM: &str = "INSERT INTO items (id, owner, created_at, body, conversation_id, \
     conversation_position, response_id, response_role, response_position) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Where an item is inserted: its conversation position and its response role/position.
struct Placement<'a> {
    conversation: Option<(&'a str, i64)>,
    response: Option<(&'a str, i64, i64)>,
}

fn insert_item(
    conn: &mut dyn SqlConn,
    owner: &Owner,
    item: &ItemRecord,
    at: Placement<'_>,
) -> Result<(), StoreError> {
    let (conv, conv_pos) = at.conversation.unzip();
    let (resp, role, resp_pos) = match at.response {
        Some((id, role, pos)) => (Some(id), Some(role), Some(pos)),
        None => (None, None, None),
    };
    conn.execute(
        INSERT_ITEM,
        &[
            item.id.as_str().into(),
            owner.as_str().into(),
            item.created_at.into(),
            item.body.as_str().into(),
            conv.into(),
            conv_pos.into(),
            resp.into(),
            role.into(),
            resp_pos.into(),
        ],
    )?;
    Ok(())
}

/// Reserves `count` positions at the end of a conversation and bumps its version;
/// returns (new version, first reserved position).
fn reserve(
    conn: &mut dyn SqlConn,
    owner: &Owner,
    conversation_id: &str,
    count: usize,
) -> Result<(i64, i64), StoreError> {
    let rows = conn.query(
        "UPDATE conversations SET version = version + 1, next_position = next_position + $3 \
         WHERE id = $1 AND owner = $2 RETURNING version, next_position",
        &[
            conversation_id.into(),
            owner.as_str().into(),
            (count as i64).into(),
        ],
    )?;
    let row = rows.first().ok_or(StoreError::NotFound("conversation"))?;
    Ok((row.int(0)?, row.int(1)? - count as i64))
}

fn item(row: &[SqlValue], at: usize) -> Result<ItemRecord, StoreError> {
    let row = &row[at..];
    Ok(ItemRecord {
        id: row.text(0)?,
        created_at: row.int(1)?,
        body: row.text(2)?,
    })
}

fn conversation_record(row: &Row) -> Result<ConversationRecord, StoreError> {
    Ok(ConversationRecord {
        id: row.text(0)?,
        created_at: row.int(1)?,
        metadata: row.text(2)?,
        version: row.int(3)?,
    })
}

/// The page after `after_position` (exclusive) given `limit + 1` rows fetched.
fn page(rows: Vec<Vec<SqlValue>>, limit: usize) -> Result<Page, StoreError> {
    let has_more = rows.len() > limit;
    let items = rows
        .iter()
        .take(limit)
        .map(|r| item(r, 0))
        .collect::<Result<_, _>>()?;
    Ok(Page { items, has_more })
}

/// The cursor position for a page: the position of `after`, else the start of the order.
fn cursor(
    conn: &mut dyn SqlConn,
    sql: &'static str,
    after: Option<&str>,
    scope: &str,
    descending: bool,
) -> Result<i64, StoreError> {
    let Some(after) = after else {
        return Ok(if descending { i64::MAX } else { -1 });
    };
    let rows = conn.query(sql, &[after.into(), scope.into()])?;
    rows.first()
        .ok_or(StoreError::NotFound(AFTER_NOT_FOUND))?
        .int(0)
}

/// `$tail` after the CTE `chain(id, parent, deleted, depth)`: response `$1` of owner `$2`
/// (depth 0) and its ancestors, tombstones included (`deleted = 1`).
macro_rules! with_chain {
    ($tail:literal) => {
        concat!(
            "WITH RECURSIVE chain(id, parent, deleted, depth) AS ( \
               SELECT id, previous_response_id, deleted, 0 FROM responses \
               WHERE id = $1 AND owner = $2 AND deleted = 0 \
             UNION ALL \
               SELECT r.id, r.previous_response_id, r.deleted, c.depth + 1 \
               FROM responses r JOIN chain c ON r.id = c.parent AND r.owner = $2 \
             ) ",
            $tail
        )
    };
}

impl<C: SqlConn> Store for SqlStore<C> {
    fn create_conversation(
        &mut self,
        owner: &Owner,
        conversation: &ConversationRecord,
        items: &[ItemRecord],
    ) -> Result<(), StoreError> {
        write(&mut self.conn, |conn| {
            conn.execute(
                "INSERT INTO conversations (id, owner, created_at, metadata, version, next_position) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    conversation.id.as_str().into(),
                    owner.as_str().into(),
                    conversation.created_at.into(),
                    conversation.metadata.as_str().into(),
                    conversation.version.into(),
                    (items.len() as i64).into(),
                ],
            )?;
            for (i, it) in items.iter().enumerate() {
                let at = Placement {
                    conversation: Some((&conversation.id, i as i64)),
                    response: None,
                };
                insert_item(conn, owner, it, at)?;
            }
            Ok(())
        })
    }

    fn conversation(
        &mut self,
        owner: &Owner,
        id: &str,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let rows = self.conn.query(
            "SELECT id, created_at, metadata, version FROM conversations WHERE id = $1 AND owner = $2",
            &[id.into(), owner.as_str().into()],
        )?;
        rows.first().map(conversation_record).transpose()
    }

    fn set_conversation_metadata(
        &mut self,
        owner: &Owner,
        id: &str,
        metadata: &str,
    ) -> Result<ConversationRecord, StoreError> {
        let rows = self.conn.query(
            "UPDATE conversations SET metadata = $3 WHERE id = $1 AND owner = $2 \
             RETURNING id, created_at, metadata, version",
            &[id.into(), owner.as_str().into(), metadata.into()],
        )?;
        rows.first()
            .map(conversation_record)
            .unwrap_or(Err(StoreError::NotFound("conversation")))
    }

    fn delete_conversation(&mut self, owner: &Owner, id: &str) -> Result<bool, StoreError> {
        write(&mut self.conn, |conn| {
            let deleted = conn.execute(
                "DELETE FROM conversations WHERE id = $1 AND owner = $2",
                &[id.into(), owner.as_str().into()],
            )?;
            if deleted == 0 {
                return Ok(false);
            }
            chat::forget_conversation_feedback(conn, owner, id)?;
            conn.execute(
                "DELETE FROM items WHERE conversation_id = $1 AND response_id IS NULL",
                &[id.into()],
            )?;
            conn.execute(
                "UPDATE items SET conversation_id = NULL, conversation_position = NULL \
                 WHERE conversation_id = $1",
                &[id.into()],
            )?;
            Ok(true)
        })
    }

    fn conversation_version(&mut self, owner: &Owner, id: &str) -> Result<Option<i64>, StoreError> {
        let rows = self.conn.query(
            "SELECT version FROM conversations WHERE id = $1 AND owner = $2",
            &[id.into(), owner.as_str().into()],
        )?;
        rows.first().map(|r| r.int(0)).transpose()
    }

    fn conversation_history(
        &mut self,
        owner: &Owner,
        id: &str,
    ) -> Result<Option<History>, StoreError> {
        // One statement, so the version and the items are one snapshot.
        let rows = self.conn.query(
            "SELECT c.version, i.id, i.created_at, i.body FROM conversations c \
             LEFT JOIN items i ON i.conversation_id = c.id \
             WHERE c.id = $1 AND c.owner = $2 ORDER BY i.conversation_position",
            &[id.into(), owner.as_str().into()],
        )?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let version = first.int(0)?;
        let items = rows
            .iter()
            .filter(|r| r.get(1) != Some(&SqlValue::Null))
            .map(|r| item(r, 1))
            .collect::<Result<_, _>>()?;
        Ok(Some(History { version, items }))
    }

    fn conversation_items(
        &mut self,
        owner: &Owner,
        id: &str,
        q: &PageQuery,
    ) -> Result<Page, StoreError> {
        if self.conversation_version(owner, id)?.is_none() {
            return Err(StoreError::NotFound("conversation"));
        }
        let from = cursor(
            &mut self.conn,
            "SELECT conversation_position FROM items WHERE id = $1 AND conversation_id = $2",
            q.after.as_deref(),
            id,
            q.descending,
        )?;
        let sql = if q.descending {
            "SELECT id, created_at, body FROM items WHERE conversation_id = $1 \
             AND conversation_position < $2 ORDER BY conversation_position DESC LIMIT $3"
        } else {
            "SELECT id, created_at, body FROM items WHERE conversation_id = $1 \
             AND conversation_position > $2 ORDER BY conversation_position ASC LIMIT $3"
        };
        let rows = self
            .conn
            .query(sql, &[id.into(), from.into(), (q.limit as i64 + 1).into()])?;
        page(rows, q.limit)
    }

    fn append_items(
        &mut self,
        owner: &Owner,
        conversation_id: &str,
        items: &[ItemRecord],
    ) -> Result<i64, StoreError> {
        write(&mut self.conn, |conn| {
            let (version, first) = reserve(conn, owner, conversation_id, items.len())?;
            for (i, it) in items.iter().enumerate() {
                let at = Placement {
                    conversation: Some((conversation_id, first + i as i64)),
                    response: None,
                };
                insert_item(conn, owner, it, at)?;
            }
            Ok(version)
        })
    }

    fn conversation_item(
        &mut self,
        owner: &Owner,
        conversation_id: &str,
        item_id: &str,
    ) -> Result<Option<ItemRecord>, StoreError> {
        let rows = self.conn.query(
            "SELECT id, created_at, body FROM items \
             WHERE id = $1 AND conversation_id = $2 AND owner = $3",
            &[
                item_id.into(),
                conversation_id.into(),
                owner.as_str().into(),
            ],
        )?;
        rows.first().map(|r| item(r, 0)).transpose()
    }

    fn delete_conversation_item(
        &mut self,
        owner: &Owner,
        conversation_id: &str,
        item_id: &str,
    ) -> Result<i64, StoreError> {
        write(&mut self.conn, |conn| {
            let (version, _) = reserve(conn, owner, conversation_id, 0)?;
            let params = [item_id.into(), conversation_id.into()];
            let removed = conn.execute(
                "DELETE FROM items WHERE id = $1 AND conversation_id = $2 AND response_id IS NULL",
                &params,
            )? + conn.execute(
                "UPDATE items SET conversation_id = NULL, conversation_position = NULL \
                 WHERE id = $1 AND conversation_id = $2",
                &params,
            )?;
            if removed == 0 {
                return Err(StoreError::NotFound("item"));
            }
            Ok(version)
        })
    }

    fn commit_turn(&mut self, owner: &Owner, turn: &TurnRecord) -> Result<Option<i64>, StoreError> {
        write(&mut self.conn, |conn| {
            let count = turn.input.len() + turn.output.len();
            let reserved = match turn.conversation_id.as_deref() {
                Some(conv) => {
                    if let Some(replaced) = &turn.replaces {
                        chat::take_out(conn, owner, conv, replaced)?;
                    }
                    Some((conv, reserve(conn, owner, conv, count)?))
                }
                None => None,
            };
            if let Some(r) = &turn.response {
                conn.execute(
                    "INSERT INTO responses (id, owner, created_at, previous_response_id, \
                     conversation_id, status, body, deleted) VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
                    &[
                        r.id.as_str().into(),
                        owner.as_str().into(),
                        r.created_at.into(),
                        r.previous_response_id.as_deref().into(),
                        r.conversation_id.as_deref().into(),
                        r.status.as_str().into(),
                        r.body.as_str().into(),
                    ],
                )?;
            }
            let response_id = turn.response.as_ref().map(|r| r.id.as_str());
            let roles = [(0, &turn.input), (1, &turn.output)];
            let mut n = 0;
            for (role, items) in roles {
                for (i, it) in items.iter().enumerate() {
                    let at = Placement {
                        conversation: reserved.map(|(conv, (_, first))| (conv, first + n)),
                        response: response_id.map(|id| (id, role, i as i64)),
                    };
                    insert_item(conn, owner, it, at)?;
                    n += 1;
                }
            }
            Ok(reserved.map(|(_, (version, _))| version))
        })
    }

    fn response(&mut self, owner: &Owner, id: &str) -> Result<Option<ResponseRecord>, StoreError> {
        let rows = self.conn.query(
            "SELECT id, created_at, previous_response_id, conversation_id, status, body \
             FROM responses WHERE id = $1 AND owner = $2 AND deleted = 0",
            &[id.into(), owner.as_str().into()],
        )?;
        rows.first()
            .map(|r| {
                Ok(ResponseRecord {
                    id: r.text(0)?,
                    created_at: r.int(1)?,
                    previous_response_id: r.opt_text(2)?,
                    conversation_id: r.opt_text(3)?,
                    status: r.text(4)?,
                    body: r.text(5)?,
                })
            })
            .transpose()
    }

    fn delete_response(&mut self, owner: &Owner, id: &str) -> Result<bool, StoreError> {
        write(&mut self.conn, |conn| {
            let deleted = conn.execute(
                "UPDATE responses SET deleted = 1, body = '{}' \
                 WHERE id = $1 AND owner = $2 AND deleted = 0",
                &[id.into(), owner.as_str().into()],
            )?;
            if deleted == 0 {
                return Ok(false);
            }
            chat::forget_response_feedback(conn, owner, id)?;
            conn.execute(
                "DELETE FROM items WHERE response_id = $1 AND conversation_id IS NULL",
                &[id.into()],
            )?;
            conn.execute(
                "UPDATE items SET response_id = NULL, response_role = NULL, \
                 response_position = NULL WHERE response_id = $1",
                &[id.into()],
            )?;
            Ok(true)
        })
    }

    fn response_chain(
        &mut self,
        owner: &Owner,
        id: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        const SQL: &str = with_chain!("SELECT id FROM chain WHERE deleted = 0 ORDER BY depth DESC");
        let rows = self.conn.query(SQL, &[id.into(), owner.as_str().into()])?;
        let ids: Vec<String> = rows.iter().map(|r| r.text(0)).collect::<Result<_, _>>()?;
        Ok((!ids.is_empty()).then_some(ids))
    }

    fn response_history(&mut self, owner: &Owner, id: &str) -> Result<Option<Chain>, StoreError> {
        const SQL: &str = with_chain!(
            "SELECT c.id, i.id, i.created_at, i.body FROM chain c \
             LEFT JOIN items i ON i.response_id = c.id WHERE c.deleted = 0 \
             ORDER BY c.depth DESC, i.response_role, i.response_position"
        );
        let rows = self.conn.query(SQL, &[id.into(), owner.as_str().into()])?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut chain = Chain {
            response_ids: Vec::new(),
            items: Vec::new(),
        };
        for row in &rows {
            let response = row.text(0)?;
            if chain.response_ids.last() != Some(&response) {
                chain.response_ids.push(response);
            }
            if row.get(1) != Some(&SqlValue::Null) {
                chain.items.push(item(row, 1)?);
            }
        }
        Ok(Some(chain))
    }

    fn response_input_items(
        &mut self,
        owner: &Owner,
        id: &str,
        q: &PageQuery,
    ) -> Result<Page, StoreError> {
        if self.response(owner, id)?.is_none() {
            return Err(StoreError::NotFound("response"));
        }
        let from = cursor(
            &mut self.conn,
            "SELECT response_position FROM items \
             WHERE id = $1 AND response_id = $2 AND response_role = 0",
            q.after.as_deref(),
            id,
            q.descending,
        )?;
        let sql = if q.descending {
            "SELECT id, created_at, body FROM items WHERE response_id = $1 AND response_role = 0 \
             AND response_position < $2 ORDER BY response_position DESC LIMIT $3"
        } else {
            "SELECT id, created_at, body FROM items WHERE response_id = $1 AND response_role = 0 \
             AND response_position > $2 ORDER BY response_position ASC LIMIT $3"
        };
        let rows = self
            .conn
            .query(sql, &[id.into(), from.into(), (q.limit as i64 + 1).into()])?;
        page(rows, q.limit)
    }

    fn list_conversations(
        &mut self,
        owner: &Owner,
        limit: usize,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        chat::list_conversations(&mut self.conn, owner, limit)
    }

    fn conversation_transcript(
        &mut self,
        owner: &Owner,
        id: &str,
        limit: usize,
    ) -> Result<Option<Vec<TranscriptItem>>, StoreError> {
        chat::transcript(&mut self.conn, owner, id, limit)
    }

    fn put_feedback(&mut self, owner: &Owner, feedback: &FeedbackRecord) -> Result<(), StoreError> {
        chat::put_feedback(&mut self.conn, owner, feedback)
    }

    fn feedback_between(
        &mut self,
        since: i64,
        until: i64,
    ) -> Result<Vec<FeedbackRecord>, StoreError> {
        chat::feedback_between(&mut self.conn, since, until)
    }

    fn append_audit(&mut self, batch: &[AuditEntry]) -> Result<u64, StoreError> {
        audit::append(&mut self.conn, batch)
    }

    fn audit_exchange(&mut self, id: &str) -> Result<Option<StoredExchange>, StoreError> {
        audit_read::exchange_by_id(&mut self.conn, id)
    }

    fn audit_thread(
        &mut self,
        thread_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ExchangePage, StoreError> {
        audit_read::thread(&mut self.conn, thread_id, after, limit)
    }

    fn review_queue(&mut self, query: &QueueQuery) -> Result<ExchangePage, StoreError> {
        audit_read::review_queue(&mut self.conn, query)
    }

    fn set_verdict(&mut self, id: &str, verdict: &VerdictRecord) -> Result<bool, StoreError> {
        audit::set_verdict(&mut self.conn, id, verdict)
    }

    fn delete_audit_exchange(&mut self, id: &str) -> Result<bool, StoreError> {
        audit::delete(&mut self.conn, id)
    }

    fn delete_audit_older(&mut self, cutoff_ms: i64, limit: i64) -> Result<u64, StoreError> {
        audit::delete_older(&mut self.conn, cutoff_ms, limit)
    }

    fn export_audit(
        &mut self,
        since_ms: i64,
        until_ms: i64,
        from: &Cursor,
        limit: usize,
    ) -> Result<Vec<StoredExchange>, StoreError> {
        audit_read::export_page(&mut self.conn, since_ms, until_ms, from, limit)
    }

    fn pending_reviews(&mut self) -> Result<i64, StoreError> {
        audit::pending_reviews(&mut self.conn)
    }
}
