//! The store: everything tessera keeps beyond a process's life (conversations,
//! responses and their items; the conversation log and its review queue), in SQLite
//! (embedded, the default, `--data-dir`) or PostgreSQL (shared by replicas,
//! `--database-url`).
//!
//! Shape: `Store` is the one trait of operations, implemented once over the `SqlConn`
//! seam (`sql.rs`), which the two drivers (`sqlite.rs`, `postgres.rs`) implement. A
//! `StorePool` (`pool.rs`) owns a few connections, each on its own worker thread, and
//! runs operations there: callers `await` them, so neither the engine thread nor an
//! async worker ever blocks on the database. `migrations.rs` brings the schema up to
//! date when the pool opens. `audit.rs` and `audit_read.rs` hold the conversation
//! log's statements (the writer and retention that use them live in `crate::audit`).
//!
//! Invariants: the store never sees an API key, only its `Owner` hash, and every read or
//! write of a row names its owner; a write that changes several rows is one transaction
//! (a turn is committed whole or not at all); bodies are stored as the JSON the API
//! returns, and the store does not interpret them.

mod chat;
pub mod audit;
pub mod audit_read;
mod conversations;
pub mod migrations;
mod owner;
pub mod pool;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use std::path::PathBuf;

pub use chat::{FeedbackRecord, TranscriptItem};
pub use audit::{
    AuditEntry, AuditRecord, ReviewReason, ReviewState, StoredExchange, Verdict, VerdictRecord,
};
pub use audit_read::{Cursor, ExchangePage, QueueQuery, VerdictFilter};
pub use owner::Owner;
pub use pool::StorePool;

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite in `DIR/tessera.db` (created on first start).
    Sqlite { data_dir: PathBuf },
    /// PostgreSQL at this URL (`postgres://user:password@host:port/db`).
    Postgres { url: String },
    /// A private in-memory SQLite database: gone when the server stops (tests).
    Memory,
}

impl StoreConfig {
    /// What the flags say: PostgreSQL when a URL is given, else SQLite in `data_dir`.
    pub fn from_flags(data_dir: PathBuf, database_url: Option<String>) -> Self {
        match database_url.filter(|u| !u.trim().is_empty()) {
            Some(url) => StoreConfig::Postgres { url },
            None => StoreConfig::Sqlite { data_dir },
        }
    }

    /// For logs: the data directory or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Sqlite { data_dir } => {
                format!("sqlite {}", data_dir.join(sqlite::DB_FILE).display())
            }
            StoreConfig::Postgres { url } => format!("postgresql {}", postgres::redact(url)),
            StoreConfig::Memory => "in-memory sqlite".into(),
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or opened (retry later).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Another writer held the database too long, or the work queue is full.
    #[error("the store is busy: {0}")]
    Busy(String),
    /// A row the operation needs does not exist (or belongs to another owner).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique key already exists.
    #[error("conflicting write: {0}")]
    Conflict(String),
    #[error("store query failed: {0}")]
    Query(String),
    /// Stored data is not what this code wrote.
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
}

/// A stored item (a message of a conversation or a response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord {
    pub id: String,
    pub created_at: i64,
    /// The item as the API returns it (JSON).
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    pub id: String,
    pub created_at: i64,
    /// JSON object.
    pub metadata: String,
    /// Bumped by every change to the conversation's items.
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRecord {
    pub id: String,
    pub created_at: i64,
    pub previous_response_id: Option<String>,
    pub conversation_id: Option<String>,
    pub status: String,
    /// The response object as the API returns it (JSON).
    pub body: String,
}

/// One finished turn to commit: its response (when stored), its input and output items,
/// the conversation they are appended to (if any), and the items of that conversation
/// the turn replaces (a regenerated answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnRecord {
    pub response: Option<ResponseRecord>,
    pub conversation_id: Option<String>,
    pub input: Vec<ItemRecord>,
    pub output: Vec<ItemRecord>,
    pub replaces: Option<Replaced>,
}

/// Items a turn takes out of its conversation, valid only at the version they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    pub item_ids: Vec<String>,
    pub version: i64,
}

/// What `StoreError::NotFound` names when a list's `after` cursor is not in the list.
pub const AFTER_NOT_FOUND: &str = "the item given as `after`";

/// Which page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    /// List items after the item with this id (in `order`).
    pub after: Option<String>,
    pub limit: usize,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<ItemRecord>,
    pub has_more: bool,
}

/// A conversation's items at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub version: i64,
    pub items: Vec<ItemRecord>,
}

/// A response's context: its stored ancestors (oldest first, ending with itself) and
/// their input and output items, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub response_ids: Vec<String>,
    pub items: Vec<ItemRecord>,
}

/// Every operation on stored data. Each names the owner; another owner's rows are
/// invisible (reads find nothing, writes fail with `NotFound`).
pub trait Store: Send {
    fn create_conversation(
        &mut self,
        owner: &Owner,
        conversation: &ConversationRecord,
        items: &[ItemRecord],
    ) -> Result<(), StoreError>;
    fn conversation(
        &mut self,
        owner: &Owner,
        id: &str,
    ) -> Result<Option<ConversationRecord>, StoreError>;
    /// Replaces the metadata; the updated conversation.
    fn set_conversation_metadata(
        &mut self,
        owner: &Owner,
        id: &str,
        metadata: &str,
    ) -> Result<ConversationRecord, StoreError>;
    /// Deletes the conversation and the items only it held (items of stored responses
    /// stay theirs). False when there was none.
    fn delete_conversation(&mut self, owner: &Owner, id: &str) -> Result<bool, StoreError>;
    /// The conversation's version (cheap: one key lookup).
    fn conversation_version(&mut self, owner: &Owner, id: &str) -> Result<Option<i64>, StoreError>;
    /// Every item of the conversation, in order, with the version they belong to.
    fn conversation_history(
        &mut self,
        owner: &Owner,
        id: &str,
    ) -> Result<Option<History>, StoreError>;
    fn conversation_items(
        &mut self,
        owner: &Owner,
        id: &str,
        page: &PageQuery,
    ) -> Result<Page, StoreError>;
    /// Appends items; the conversation's new version.
    fn append_items(
        &mut self,
        owner: &Owner,
        conversation_id: &str,
        items: &[ItemRecord],
    ) -> Result<i64, StoreError>;
    fn conversation_item(
        &mut self,
        owner: &Owner,
        conversation_id: &str,
        item_id: &str,
    ) -> Result<Option<ItemRecord>, StoreError>;
    /// Removes an item from the conversation; the conversation's new version.
    fn delete_conversation_item(
        &mut self,
        owner: &Owner,
        conversation_id: &str,
        item_id: &str,
    ) -> Result<i64, StoreError>;
    /// Commits a turn in one transaction; the conversation's new version, if it has one.
    fn commit_turn(&mut self, owner: &Owner, turn: &TurnRecord) -> Result<Option<i64>, StoreError>;
    fn response(&mut self, owner: &Owner, id: &str) -> Result<Option<ResponseRecord>, StoreError>;
    /// Deletes a response and the items only it held. False when there was none.
    fn delete_response(&mut self, owner: &Owner, id: &str) -> Result<bool, StoreError>;
    /// The ids of the stored ancestors of `id` (oldest first, ending with `id`); `None`
    /// when `id` is not a stored response of `owner`.
    fn response_chain(
        &mut self,
        owner: &Owner,
        id: &str,
    ) -> Result<Option<Vec<String>>, StoreError>;
    /// `response_chain` with the input and output items of every response in it.
    fn response_history(&mut self, owner: &Owner, id: &str) -> Result<Option<Chain>, StoreError>;
    fn response_input_items(
        &mut self,
        owner: &Owner,
        id: &str,
        page: &PageQuery,
    ) -> Result<Page, StoreError>;
    /// The owner's conversations, newest first, at most `limit`.
    fn list_conversations(
        &mut self,
        owner: &Owner,
        limit: usize,
    ) -> Result<Vec<ConversationRecord>, StoreError>;
    /// The last `limit` items of a conversation, in order, each with its response.
    fn conversation_transcript(
        &mut self,
        owner: &Owner,
        id: &str,
        limit: usize,
    ) -> Result<Option<Vec<TranscriptItem>>, StoreError>;
    /// Records (or replaces) the rating of a stored response of `owner`.
    fn put_feedback(&mut self, owner: &Owner, feedback: &FeedbackRecord) -> Result<(), StoreError>;
    /// Every owner's ratings made in `[since, until)` (seconds), oldest first.
    fn feedback_between(
        &mut self,
        since: i64,
        until: i64,
    ) -> Result<Vec<FeedbackRecord>, StoreError>;

    // ---- the conversation log (not scoped by owner: only the admin API reads it) ----
    /// Writes a batch of log records in one transaction; how many were new.
    fn append_audit(&mut self, batch: &[AuditEntry]) -> Result<u64, StoreError>;
    fn audit_exchange(&mut self, id: &str) -> Result<Option<StoredExchange>, StoreError>;
    /// A page of the exchanges of one dialog (conversation or response chain).
    fn audit_thread(
        &mut self,
        thread_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ExchangePage, StoreError>;
    fn review_queue(&mut self, query: &QueueQuery) -> Result<ExchangePage, StoreError>;
    /// False when there is no such exchange.
    fn set_verdict(&mut self, id: &str, verdict: &VerdictRecord) -> Result<bool, StoreError>;
    /// Deletes an exchange whatever its verdict; false when there was none.
    fn delete_audit_exchange(&mut self, id: &str) -> Result<bool, StoreError>;
    /// Retention: deletes up to `limit` exchanges older than `cutoff_ms` that are not
    /// violations, oldest first; how many.
    fn delete_audit_older(&mut self, cutoff_ms: i64, limit: i64) -> Result<u64, StoreError>;
    /// Up to `limit` exchanges made in `[since_ms, until_ms)` after `from`, oldest first.
    fn export_audit(
        &mut self,
        since_ms: i64,
        until_ms: i64,
        from: &Cursor,
        limit: usize,
    ) -> Result<Vec<StoredExchange>, StoreError>;
    /// Exchanges in the review queue without a verdict.
    fn pending_reviews(&mut self) -> Result<i64, StoreError>;
}

/// Seconds since the UNIX epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
