//! The store operations of the chat page and of feedback, over `SqlConn` (the `Store`
//! implementation in `conversations.rs` calls these): the owner's conversation list, a
//! conversation's transcript (its items with the response each came from), taking a
//! replaced turn out of a conversation (regeneration, inside the new turn's commit), and
//! the ratings of answers.
//!
//! Invariants: `take_out` changes a conversation only at the version its caller read
//! (else `Conflict`); an item of a stored response is detached from the conversation,
//! never deleted (the response keeps it); one rating per response (a new rating replaces
//! the old); a rating names a stored response of its owner (else `NotFound`).

use super::sql::{write, RowExt, SqlConn};
use super::{ConversationRecord, ItemRecord, Owner, Replaced, StoreError};

/// One item of a transcript: the item and the response it is input or output of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptItem {
    pub item: ItemRecord,
    pub response_id: Option<String>,
}

/// A rating of one answer (a response), with the dialog as it stood when rated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackRecord {
    pub response_id: String,
    pub conversation_id: Option<String>,
    /// +1 (good) or -1 (bad).
    pub rating: i64,
    pub comment: Option<String>,
    /// The rated dialog: a JSON array of `{"role", "content"}` ending with the answer.
    pub messages: String,
    /// When it was rated (seconds since the epoch).
    pub created_at: i64,
}

pub(super) fn list_conversations(
    conn: &mut dyn SqlConn,
    owner: &Owner,
    limit: usize,
) -> Result<Vec<ConversationRecord>, StoreError> {
    let rows = conn.query(
        "SELECT id, created_at, metadata, version FROM conversations WHERE owner = $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2",
        &[owner.as_str().into(), (limit as i64).into()],
    )?;
    rows.iter()
        .map(|r| {
            Ok(ConversationRecord {
                id: r.text(0)?,
                created_at: r.int(1)?,
                metadata: r.text(2)?,
                version: r.int(3)?,
            })
        })
        .collect()
}

pub(super) fn transcript(
    conn: &mut dyn SqlConn,
    owner: &Owner,
    id: &str,
    limit: usize,
) -> Result<Option<Vec<TranscriptItem>>, StoreError> {
    let found = conn.query(
        "SELECT version FROM conversations WHERE id = $1 AND owner = $2",
        &[id.into(), owner.as_str().into()],
    )?;
    if found.is_empty() {
        return Ok(None);
    }
    let rows = conn.query(
        "SELECT id, created_at, body, response_id FROM items WHERE conversation_id = $1 \
         ORDER BY conversation_position DESC LIMIT $2",
        &[id.into(), (limit as i64).into()],
    )?;
    let mut items = rows
        .iter()
        .map(|r| {
            Ok(TranscriptItem {
                item: ItemRecord {
                    id: r.text(0)?,
                    created_at: r.int(1)?,
                    body: r.text(2)?,
                },
                response_id: r.opt_text(3)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    items.reverse();
    Ok(Some(items))
}

/// Inside a turn's commit: checks that the conversation is still at `replaced.version`
/// (taking its row lock on PostgreSQL, so a concurrent commit waits and then fails the
/// check) and takes `replaced.item_ids` out of it. The version is bumped by the commit's
/// own reservation of positions.
pub(super) fn take_out(
    conn: &mut dyn SqlConn,
    owner: &Owner,
    conversation_id: &str,
    replaced: &Replaced,
) -> Result<(), StoreError> {
    let current = conn.execute(
        "UPDATE conversations SET version = version WHERE id = $1 AND owner = $2 AND version = $3",
        &[
            conversation_id.into(),
            owner.as_str().into(),
            replaced.version.into(),
        ],
    )?;
    if current == 0 {
        return Err(StoreError::Conflict(format!(
            "conversation {conversation_id} changed since version {}",
            replaced.version
        )));
    }
    for item in &replaced.item_ids {
        let params = [item.into(), conversation_id.into()];
        conn.execute(
            "DELETE FROM items WHERE id = $1 AND conversation_id = $2 AND response_id IS NULL",
            &params,
        )?;
        conn.execute(
            "UPDATE items SET conversation_id = NULL, conversation_position = NULL \
             WHERE id = $1 AND conversation_id = $2",
            &params,
        )?;
    }
    Ok(())
}

pub(super) fn put_feedback(
    conn: &mut dyn SqlConn,
    owner: &Owner,
    f: &FeedbackRecord,
) -> Result<(), StoreError> {
    write(conn, |conn| {
        let found = conn.query(
            "SELECT id FROM responses WHERE id = $1 AND owner = $2 AND deleted = 0",
            &[f.response_id.as_str().into(), owner.as_str().into()],
        )?;
        if found.is_empty() {
            return Err(StoreError::NotFound("response"));
        }
        conn.execute(
            "INSERT INTO feedback (response_id, owner, conversation_id, rating, comment, \
             messages, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (response_id) DO UPDATE SET rating = excluded.rating, \
             comment = excluded.comment, messages = excluded.messages, \
             conversation_id = excluded.conversation_id, created_at = excluded.created_at",
            &[
                f.response_id.as_str().into(),
                owner.as_str().into(),
                f.conversation_id.as_deref().into(),
                f.rating.into(),
                f.comment.as_deref().into(),
                f.messages.as_str().into(),
                f.created_at.into(),
            ],
        )?;
        Ok(())
    })
}

pub(super) fn feedback_between(
    conn: &mut dyn SqlConn,
    since: i64,
    until: i64,
) -> Result<Vec<FeedbackRecord>, StoreError> {
    let rows = conn.query(
        "SELECT response_id, conversation_id, rating, comment, messages, created_at \
         FROM feedback WHERE created_at >= $1 AND created_at < $2 \
         ORDER BY created_at, response_id",
        &[since.into(), until.into()],
    )?;
    rows.iter()
        .map(|r| {
            Ok(FeedbackRecord {
                response_id: r.text(0)?,
                conversation_id: r.opt_text(1)?,
                rating: r.int(2)?,
                comment: r.opt_text(3)?,
                messages: r.text(4)?,
                created_at: r.int(5)?,
            })
        })
        .collect()
}

/// Forgets the ratings of a deleted conversation (inside its delete transaction).
pub(super) fn forget_conversation_feedback(
    conn: &mut dyn SqlConn,
    owner: &Owner,
    id: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM feedback WHERE conversation_id = $1 AND owner = $2",
        &[id.into(), owner.as_str().into()],
    )?;
    Ok(())
}

/// Forgets the rating of a deleted response (inside its delete transaction).
pub(super) fn forget_response_feedback(
    conn: &mut dyn SqlConn,
    owner: &Owner,
    id: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM feedback WHERE response_id = $1 AND owner = $2",
        &[id.into(), owner.as_str().into()],
    )?;
    Ok(())
}
