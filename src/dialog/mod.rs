//! The dialog service: conversations and responses above the engine
//! (docs/architecture.md, "The product layer"). It owns the stored items of a dialog, the history
//! window (`window.rs`: which earlier turns go into the prompt), prompt assembly through
//! the model's chat template, and the commit of a finished turn; nothing in it is tied
//! to HTTP (the Responses/Conversations routes and the WebSocket chat both use it).
//!
//! A turn: `Dialog::prepare_turn` loads the history (hot cache, else the store), windows
//! it and tokenizes the prompt on the blocking pool (`PreparedTurn`); the caller runs it
//! on the engine and
//! hands the outcome to `Dialog::commit_turn`, which writes the response and its items in
//! one transaction and only then returns the final response object — so a turn reported
//! complete is durable, and one that never finished leaves nothing behind.
//!
//! Invariants: no database call and no tokenization runs on an async worker (store
//! operations run on the store's pool, prompts are built on the blocking pool); every
//! read names the caller's `Owner`; the stored conversation keeps every item, only the
//! prompt is windowed.

mod cache;
pub mod chat;
mod conversations;
pub mod feedback;
pub mod items;
pub mod objects;
mod prompt;
mod turn;
pub mod window;

use std::sync::Arc;

pub use cache::HotCache;
pub use conversations::metadata as check_metadata;
pub use items::{Message, Role};
pub use objects::{ResponseFields, Status, Truncation, TurnUsage};
pub use turn::{Anchor, PreparedTurn, TurnOutcome, TurnRequest, WindowInfo};
pub use window::WindowRule;

use crate::engine::error::EngineError;
use crate::model::chat_template::TemplateError;
use crate::store::{StoreConfig, StoreError, StorePool, AFTER_NOT_FOUND};

/// How the dialog service is set up (flags of `tessera serve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogConfig {
    pub store: StoreConfig,
    pub window: WindowRule,
    /// Bytes of recent histories kept in memory (`--dialog-cache-size`).
    pub cache_bytes: usize,
}

impl Default for DialogConfig {
    /// An in-memory store (nothing written to disk) and the default window.
    fn default() -> Self {
        Self {
            store: StoreConfig::Memory,
            window: WindowRule::default(),
            cache_bytes: 64 << 20,
        }
    }
}

/// Why a dialog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DialogError {
    /// An id that names nothing the caller owns.
    #[error("{what} `{id}` not found")]
    NotFound {
        what: &'static str,
        id: String,
        param: Option<&'static str>,
    },
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<String>,
    },
    #[error("`{param}` is not supported by tessera yet{detail}")]
    Unsupported { param: String, detail: String },
    /// The prompt does not fit the context (truncation `disabled`, or the input alone).
    #[error(transparent)]
    Context(EngineError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Store(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl DialogError {
    /// A bad value of `param`.
    pub fn invalid(param: &str, message: String) -> Self {
        DialogError::Invalid {
            message,
            param: Some(param.to_string()),
        }
    }

    fn not_found(what: &'static str, id: &str, param: Option<&'static str>) -> Self {
        DialogError::NotFound {
            what,
            id: id.to_string(),
            param,
        }
    }

    /// A store error in the context of a lookup of `what` `id`.
    fn from_store(e: StoreError, what: &'static str, id: &str) -> Self {
        match e {
            StoreError::NotFound(AFTER_NOT_FOUND) => DialogError::Invalid {
                message: format!("`after` names no item of {what} `{id}`"),
                param: Some("after".into()),
            },
            StoreError::NotFound(thing) => DialogError::not_found(thing, id, None),
            other => DialogError::Store(other),
        }
    }
}

impl From<StoreError> for DialogError {
    fn from(e: StoreError) -> Self {
        DialogError::Store(e)
    }
}

/// The dialog service; cheap to clone (shared pool and cache).
#[derive(Clone)]
pub struct Dialog {
    pool: Arc<StorePool>,
    cache: Arc<HotCache>,
    window: WindowRule,
}

impl Dialog {
    /// Opens the store (applying migrations) and sets up the cache. Blocking: call it
    /// before serving, not on an async worker.
    pub fn open(cfg: &DialogConfig) -> Result<Self, StoreError> {
        Ok(Self {
            pool: StorePool::open(&cfg.store)?,
            cache: Arc::new(HotCache::new(cfg.cache_bytes)),
            window: cfg.window,
        })
    }

    /// The store behind the dialogs (the conversation log writes through it too).
    pub fn pool(&self) -> &Arc<StorePool> {
        &self.pool
    }

    pub fn window(&self) -> WindowRule {
        self.window
    }

    /// (entries, bytes) in the hot cache.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }
}

/// A page request of a list route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub after: Option<String>,
    /// 1..=100.
    pub limit: usize,
    pub descending: bool,
}

/// Most items one list page may hold (OpenAI's limit).
pub const MAX_PAGE: usize = 100;

impl ListQuery {
    /// `limit` (default 20, 1..=100) and `order` (`asc` | `desc`, default `desc`).
    pub fn new(
        after: Option<String>,
        limit: Option<i64>,
        order: Option<&str>,
    ) -> Result<Self, DialogError> {
        let limit = match limit.unwrap_or(20) {
            n @ 1..=100 => n as usize,
            n => {
                return Err(DialogError::Invalid {
                    message: format!("`limit` must be in 1..={MAX_PAGE}. Given: {n}"),
                    param: Some("limit".into()),
                })
            }
        };
        let descending = match order.unwrap_or("desc") {
            "desc" => true,
            "asc" => false,
            other => {
                return Err(DialogError::Invalid {
                    message: format!("`order` must be `asc` or `desc`. Given: {other:?}"),
                    param: Some("order".into()),
                })
            }
        };
        Ok(Self {
            after: after.filter(|a| !a.is_empty()),
            limit,
            descending,
        })
    }

    fn page(&self) -> crate::store::PageQuery {
        crate::store::PageQuery {
            after: self.after.clone(),
            limit: self.limit,
            descending: self.descending,
        }
    }
}
