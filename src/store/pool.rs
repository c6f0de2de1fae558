//! `StorePool`: a few database connections, each owned by its own worker thread, and a
//! bounded queue of operations for them. `run` hands an operation to the next free
//! worker and awaits its result, so async code (actix workers) never blocks on the
//! database and the engine thread never sees it.
//!
//! Invariants: at most `QUEUE_LIMIT` operations wait (more fail at once with `Busy`:
//! bounded memory under overload); a panicking operation fails only its caller and its
//! worker rolls back any open transaction and goes on; dropping the pool lets the workers
//! finish what is queued and exit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::conversations::SqlStore;
use super::migrations::{apply, MIGRATIONS};
use super::postgres::PgConn;
use super::sql::SqlConn;
use super::sqlite::SqliteConn;
use super::{Store, StoreConfig, StoreError};

/// Connections (and worker threads) per pool on a file or server database.
pub const POOL_SIZE: usize = 4;

/// Operations that may wait for a worker.
const QUEUE_LIMIT: usize = 1024;

type Job = Box<dyn FnOnce(&mut dyn Store) + Send>;

pub struct StorePool {
    jobs: SyncSender<Job>,
    description: String,
}

impl std::fmt::Debug for StorePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePool")
            .field("store", &self.description)
            .finish_non_exhaustive()
    }
}

/// Opens one connection of `cfg`'s backend.
fn connect(cfg: &StoreConfig) -> Result<Box<dyn ConnStore>, StoreError> {
    Ok(match cfg {
        StoreConfig::Sqlite { data_dir } => {
            Box::new(SqlStore::new(SqliteConn::open_dir(data_dir)?))
        }
        StoreConfig::Postgres { url } => Box::new(SqlStore::new(PgConn::connect(url)?)),
        StoreConfig::Memory => Box::new(SqlStore::new(SqliteConn::memory()?)),
    })
}

/// A store whose connection can also be migrated and reset.
trait ConnStore: Store {
    fn migrate(&mut self) -> Result<Vec<i64>, StoreError>;
    /// Rolls back whatever transaction a failed operation left open.
    fn reset(&mut self);
}

impl<C: SqlConn> ConnStore for SqlStore<C> {
    fn migrate(&mut self) -> Result<Vec<i64>, StoreError> {
        apply(self.conn(), MIGRATIONS)
    }

    fn reset(&mut self) {
        // Fails harmlessly ("no transaction is active") when none is open.
        let _ = self.conn().batch("ROLLBACK");
    }
}

impl StorePool {
    /// Connects, applies pending migrations, and starts the workers (one for an
    /// in-memory database, which lives in its one connection).
    pub fn open(cfg: &StoreConfig) -> Result<Arc<Self>, StoreError> {
        let mut first = connect(cfg)?;
        let applied = first.migrate()?;
        tracing::info!(store = %cfg.describe(), migrations_applied = ?applied, "store open");
        let size = match cfg {
            StoreConfig::Memory => 1,
            _ => POOL_SIZE,
        };
        let mut stores = vec![first];
        for _ in 1..size {
            stores.push(connect(cfg)?);
        }
        let (jobs, queue) = sync_channel::<Job>(QUEUE_LIMIT);
        let queue = Arc::new(Mutex::new(queue));
        for (i, store) in stores.into_iter().enumerate() {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("tessera-store-{i}"))
                .spawn(move || work(store, &queue))
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot start a store worker: {e}"))
                })?;
        }
        Ok(Arc::new(Self {
            jobs,
            description: cfg.describe(),
        }))
    }

    /// What the pool is connected to (for logs).
    pub fn describe(&self) -> &str {
        &self.description
    }

    fn submit<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = tx.send(op(store));
        });
        match self.jobs.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(StoreError::Busy(format!(
                "{QUEUE_LIMIT} store operations are already waiting"
            ))),
            Err(TrySendError::Disconnected(_)) => {
                Err(StoreError::Unavailable("the store workers stopped".into()))
            }
        }
    }

    /// Runs `op` on a store worker and waits for its result without blocking the thread.
    pub async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(op)?.await.unwrap_or_else(|_| Err(panicked()))
    }

    /// `run` for synchronous callers (tests, tools); must not be called on an async runtime.
    pub fn run_blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(op)?
            .blocking_recv()
            .unwrap_or_else(|_| Err(panicked()))
    }
}

fn panicked() -> StoreError {
    StoreError::Query("the store operation panicked (see the server log)".into())
}

/// A worker: takes operations off the shared queue until the pool is dropped.
fn work(mut store: Box<dyn ConnStore>, queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = match queue.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return;
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| job(store.as_mut() as &mut dyn Store)));
        if outcome.is_err() {
            tracing::error!("a store operation panicked; its transaction is rolled back");
            store.reset();
        }
    }
}
