//! The conversation log (issue 13): every exchange on every text route — request id,
//! time, route, model, API key id (a hash), conversation and response ids, client
//! address, the whole input and output, finish reason, token counts, moderation hits —
//! written through the `Store` (SQLite by default, PostgreSQL with `--database-url`),
//! kept `--audit-retention-days`, with a human review queue beside it.
//!
//! Shape: a front end starts an `Exchange` (`exchange.rs`, route-agnostic) when it has a
//! request and finishes it once when the request ends (the HTTP routes do it where a
//! generation request's outcome is settled, `server::observe::RequestRecord`; an input
//! blocked by moderation is finished as refused). `AuditLog::submit` queues the record
//! (`queue.rs`, no I/O), decides whether it goes to the review queue (`review.rs`), and
//! the writer thread (`writer.rs`) writes batches, one transaction each, off the engine
//! thread and the async workers. The upkeep thread (`retention.rs`) deletes what is past
//! the retention period. `view.rs` is the JSON of a logged exchange (admin API and
//! export), `export.rs` the regulators' JSONL export, `time.rs` the clock and dates.
//!
//! Invariants: nothing is dropped: a failed write is retried; when the oldest unwritten
//! record is older than `--audit-max-lag` (or `capacity` records wait), `check` fails,
//! and the front ends refuse new requests (503 `audit_unavailable`, `/ready` too) until
//! the log catches up; `close` flushes what is pending before the process exits.

pub mod exchange;
pub mod export;
mod queue;
pub mod retention;
pub mod review;
pub mod series;
pub mod time;
pub mod view;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use exchange::{ChoiceOutcome, Exchange, ExchangeMeta, ExchangeOutcome, InputMessage};
pub use time::{Clock, ClockRef, ManualClock};

use crate::store::{AuditEntry, AuditRecord, StoreError, StorePool};
use queue::Queue;
use retention::Retention;
use review::ReviewSampler;
use series::AuditSeries;
use writer::Writer;

/// The shortest retention accepted without `--allow-short-retention`.
pub const MIN_RETENTION_DAYS: u32 = 180;

/// How the log is set up (flags of `tessera serve`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// `--disable-audit-log` turns it off (not for regulated deployments).
    pub enabled: bool,
    /// How old the oldest unwritten record may get before new requests are refused.
    pub max_lag: Duration,
    pub retention_days: u32,
    /// Share of unflagged exchanges drawn for human review (0..=1).
    pub review_sample_rate: f64,
    /// Seed of the review draws (tests; `None`: from the OS).
    pub review_seed: Option<u64>,
    /// Records that may wait before new requests are refused.
    pub capacity: usize,
    pub clock: ClockRef,
    /// Test hook, not a feature: while this file exists every log write fails
    /// (`TESSERA_TEST_AUDIT_FAIL` for the binary).
    pub fail_file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_lag: Duration::from_secs(30),
            retention_days: MIN_RETENTION_DAYS,
            review_sample_rate: 0.01,
            review_seed: None,
            capacity: 10_000,
            clock: ClockRef::system(),
            fail_file: None,
        }
    }
}

/// How long before its deadline `close` gives up a failing batch (so the writer can
/// say which exchanges it lost before the process exits).
const GIVE_UP_MARGIN: Duration = Duration::from_millis(200);

/// The environment variable of the `fail_file` test hook.
pub const FAIL_FILE_ENV: &str = "TESSERA_TEST_AUDIT_FAIL";

/// Why the log or its admin API refused.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "the conversation log cannot be written: {pending} exchanges wait, the oldest for \
         {lag_s:.1} s (--audit-max-lag is {max_lag_s} s); new requests are refused until it catches up"
    )]
    Unavailable {
        pending: usize,
        lag_s: f64,
        max_lag_s: f64,
    },
    #[error("the conversation log is off (the server runs with --disable-audit-log)")]
    Disabled,
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("{message}")]
    Invalid { param: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The running log (see the module header).
pub struct AuditLog {
    cfg: AuditConfig,
    pool: Arc<StorePool>,
    queue: Arc<Queue>,
    sampler: ReviewSampler,
    series: AuditSeries,
    give_up_at: Arc<Mutex<Option<Instant>>>,
}

impl AuditLog {
    /// Starts the writer and upkeep threads over `pool` (whose migrations are applied).
    pub fn start(
        pool: Arc<StorePool>,
        cfg: AuditConfig,
        series: AuditSeries,
    ) -> std::io::Result<Arc<Self>> {
        let queue = Arc::new(Queue::default());
        let give_up_at = Arc::new(Mutex::new(None));
        let writer = Writer {
            queue: queue.clone(),
            pool: pool.clone(),
            series: series.clone(),
            fail_file: cfg.fail_file.clone(),
            give_up_at: give_up_at.clone(),
        };
        std::thread::Builder::new()
            .name("tessera-audit-writer".into())
            .spawn(move || writer.run())?;
        let retention = Retention {
            days: cfg.retention_days,
            clock: cfg.clock.clone(),
            pool: pool.clone(),
            series: series.clone(),
        };
        let upkeep_queue = queue.clone();
        std::thread::Builder::new()
            .name("tessera-audit-upkeep".into())
            .spawn(move || retention.run(upkeep_queue))?;
        Ok(Arc::new(Self {
            sampler: ReviewSampler::new(cfg.review_sample_rate, cfg.review_seed),
            cfg,
            pool,
            queue,
            series,
            give_up_at,
        }))
    }

    pub fn config(&self) -> &AuditConfig {
        &self.cfg
    }

    /// The store the log is written to (the admin API reads it).
    pub fn pool(&self) -> &Arc<StorePool> {
        &self.pool
    }

    /// The log's time (unix ms).
    pub fn now_ms(&self) -> i64 {
        self.cfg.clock.now_ms()
    }

    /// Whether new requests may be served: fails when the log lags or its backlog is full.
    pub fn check(&self) -> Result<(), AuditError> {
        let (lag, pending) = (self.queue.lag(), self.queue.pending());
        if lag <= self.cfg.max_lag && pending < self.cfg.capacity {
            return Ok(());
        }
        Err(AuditError::Unavailable {
            pending,
            lag_s: lag.as_secs_f64(),
            max_lag_s: self.cfg.max_lag.as_secs_f64(),
        })
    }

    /// Records not yet written.
    pub fn pending(&self) -> usize {
        self.queue.pending()
    }

    /// Sets the lag gauge (at scrape time).
    pub fn update_gauges(&self) {
        self.series.lag.set(self.queue.lag().as_secs_f64());
    }

    /// Queues `record`; flagged ones (a moderation hit) always go to the review queue.
    pub fn submit(&self, record: AuditRecord, flagged: bool) {
        let review = self.sampler.reason(flagged);
        self.queue.push(AuditEntry { record, review });
    }

    /// Waits (blocking) until every record submitted so far is written, up to `limit`;
    /// on timeout, how many still wait.
    pub fn flush(&self, limit: Duration) -> Result<(), usize> {
        let submitted = self.queue.submitted();
        if self.queue.wait_done(submitted, Instant::now() + limit) {
            Ok(())
        } else {
            Err(self.queue.pending())
        }
    }

    /// Stops taking records, writes what is pending (retrying failures until shortly
    /// before `deadline`, then giving up with an error log that names them) and stops
    /// the threads; blocking. Returns how many records could not be written.
    pub fn close(&self, deadline: Instant) -> usize {
        let give_up = deadline.checked_sub(GIVE_UP_MARGIN).unwrap_or(deadline);
        if let Ok(mut give_up_at) = self.give_up_at.lock() {
            *give_up_at = Some(give_up.max(Instant::now()));
        }
        let pending = self.queue.pending();
        if pending > 0 {
            tracing::info!(pending, "flushing the conversation log before exit");
        }
        self.queue.close();
        let unwritten = self
            .flush(deadline.saturating_duration_since(Instant::now()))
            .err()
            .unwrap_or(0);
        let left = unwritten + self.queue.lost() as usize;
        if pending > 0 && left == 0 {
            tracing::info!(written = pending, "conversation log flushed");
        }
        left
    }

    /// Runs a retention sweep now (the upkeep thread runs one daily); how many exchanges
    /// it deleted. Blocking.
    pub fn run_retention(&self) -> Result<u64, StoreError> {
        Retention {
            days: self.cfg.retention_days,
            clock: self.cfg.clock.clone(),
            pool: self.pool.clone(),
            series: self.series.clone(),
        }
        .sweep()
    }

    /// Sets the review queue gauge from the store now (after a verdict or a delete).
    pub async fn refresh_review_depth(&self) {
        match self.pool.run(|s| s.pending_reviews()).await {
            Ok(depth) => self.series.review_queue.set(depth),
            Err(e) => tracing::debug!(error = %e, "review queue depth not refreshed"),
        }
    }
}

impl Drop for AuditLog {
    /// The threads write what is queued and stop (nothing waits for them here).
    fn drop(&mut self) {
        if let Ok(mut give_up) = self.give_up_at.lock() {
            give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(10));
        }
        self.queue.close();
    }
}
