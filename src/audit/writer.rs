//! The log's writer thread: takes what the queue holds (up to `MAX_BATCH` records) and
//! writes it through the store in one transaction; while a write runs, new records
//! gather, so under load batches grow by themselves (group commit) and an idle server
//! writes each record at once.
//!
//! Invariants: a batch is retried (backing off up to `MAX_BACKOFF`) until it commits;
//! only when the log is closing and its deadline has passed is a batch given up, and
//! that is logged as an error with the request ids lost. Store calls go through the
//! pool's blocking entry: this is a plain thread, never an async worker.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::queue::{Next, Queue};
use super::series::AuditSeries;
use crate::store::{AuditEntry, StoreError, StorePool};

/// Most records one write takes.
pub const MAX_BATCH: usize = 256;
/// How long the writer waits for a record before it refreshes the lag gauge.
const IDLE_TICK: Duration = Duration::from_millis(500);
/// First wait after a failed write; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the writer thread owns.
pub struct Writer {
    pub queue: Arc<Queue>,
    pub pool: Arc<StorePool>,
    pub series: AuditSeries,
    /// Test hook: while this file exists every write fails (see `AuditConfig`).
    pub fail_file: Option<PathBuf>,
    /// Set when the log closes: past it, a failing batch is given up.
    pub give_up_at: Arc<Mutex<Option<Instant>>>,
}

impl Writer {
    /// The thread's body: writes batches until the queue is closed and drained.
    pub fn run(self) {
        loop {
            match self.queue.next_batch(MAX_BATCH, IDLE_TICK) {
                Next::Closed => return,
                Next::Idle => self.series.lag.set(self.queue.lag().as_secs_f64()),
                Next::Batch(batch) => {
                    let written = self.write(batch);
                    self.queue.batch_done(written);
                    self.series.lag.set(self.queue.lag().as_secs_f64());
                }
            }
        }
    }

    /// Writes `batch`, retrying until it commits (true) or is given up at the deadline.
    fn write(&self, batch: Vec<AuditEntry>) -> bool {
        let batch = Arc::new(batch);
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0u64;
        loop {
            let started = Instant::now();
            match self.try_write(batch.clone()) {
                Ok(new) => {
                    self.series
                        .write_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.series.batch.observe(batch.len() as f64);
                    self.series.records.inc_by(new);
                    if failures > 0 {
                        tracing::info!(failures, "the conversation log is written again");
                    }
                    if batch.iter().any(|e| e.review.is_some()) {
                        refresh_review_depth(&self.pool, &self.series);
                    }
                    return true;
                }
                Err(e) => {
                    self.series.failures.inc();
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, records = batch.len(), lag_s = self.queue.lag().as_secs_f64(), "conversation log write failed; retrying");
                    }
                    let give_up_in = self.give_up_in();
                    if give_up_in == Some(Duration::ZERO) {
                        let ids: Vec<&str> =
                            batch.iter().map(|e| e.record.request_id.as_str()).collect();
                        tracing::error!(error = %e, lost = batch.len(), request_ids = ?ids, "the conversation log could not be written before exit; these exchanges are not logged");
                        return false;
                    }
                    self.series.lag.set(self.queue.lag().as_secs_f64());
                    std::thread::sleep(give_up_in.map_or(backoff, |left| left.min(backoff)));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn try_write(&self, batch: Arc<Vec<AuditEntry>>) -> Result<u64, StoreError> {
        if let Some(file) = self.fail_file.as_ref().filter(|f| f.exists()) {
            return Err(StoreError::Unavailable(format!(
                "test hook: {} exists",
                file.display()
            )));
        }
        self.pool.run_blocking(move |s| s.append_audit(&batch))
    }

    /// Time left before a failing batch is given up (`None`: the log is not closing).
    fn give_up_in(&self) -> Option<Duration> {
        let deadline = match self.give_up_at.lock() {
            Ok(d) => *d,
            Err(poisoned) => *poisoned.into_inner(),
        };
        deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Sets the review queue gauge from the store (exchanges without a verdict); a failure
/// leaves it as it was (logged at debug: the next refresh tries again).
pub fn refresh_review_depth(pool: &StorePool, series: &AuditSeries) {
    match pool.run_blocking(|s| s.pending_reviews()) {
        Ok(depth) => series.review_queue.set(depth),
        Err(e) => tracing::debug!(error = %e, "review queue depth not refreshed"),
    }
}
