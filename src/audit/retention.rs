//! Retention of the conversation log (`--audit-retention-days`, at least 180 unless
//! `--allow-short-retention`) and the log's upkeep thread: a sweep at start and then
//! once a day deletes the exchanges older than the period, `BATCH` per transaction so a
//! large backlog never holds the database's write lock for long, and counts them in
//! `tessera_audit_retention_deleted_total`; between sweeps the thread refreshes the
//! review queue gauge (other replicas change the queue too).
//!
//! Invariants: the cutoff is read from the log's `Clock` (tests move it); an exchange
//! reviewed as a `violation` is never deleted here, only by an admin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queue::Queue;
use super::series::AuditSeries;
use super::time::{ClockRef, DAY_MS};
use super::writer::refresh_review_depth;
use crate::store::{StoreError, StorePool};

/// Exchanges deleted per transaction.
pub const BATCH: i64 = 500;
/// Time between sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(24 * 60 * 60);
/// Time before a failed sweep is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(60 * 60);
/// Time between refreshes of the review queue gauge.
const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// The retention period and what a sweep needs.
#[derive(Clone)]
pub struct Retention {
    pub days: u32,
    pub clock: ClockRef,
    pub pool: Arc<StorePool>,
    pub series: AuditSeries,
}

impl Retention {
    /// Exchanges made before this time are past the period.
    pub fn cutoff_ms(&self) -> i64 {
        self.clock.now_ms() - i64::from(self.days) * DAY_MS
    }

    /// Deletes every exchange past the period (in batches); how many. Blocking.
    pub fn sweep(&self) -> Result<u64, StoreError> {
        let cutoff = self.cutoff_ms();
        let mut total = 0;
        loop {
            let deleted = self
                .pool
                .run_blocking(move |s| s.delete_audit_older(cutoff, BATCH))?;
            self.series.retention_deleted.inc_by(deleted);
            total += deleted;
            if deleted < BATCH as u64 {
                break;
            }
        }
        if total > 0 {
            refresh_review_depth(&self.pool, &self.series);
        }
        Ok(total)
    }

    /// The upkeep thread's body: sweeps at once and every `SWEEP_EVERY`, refreshes the
    /// review gauge every `REFRESH_EVERY`, until `queue` closes.
    pub fn run(self, queue: Arc<Queue>) {
        let mut next_sweep = Instant::now();
        loop {
            if Instant::now() >= next_sweep {
                next_sweep = Instant::now()
                    + match self.sweep() {
                        Ok(deleted) => {
                            tracing::info!(
                                deleted,
                                days = self.days,
                                "conversation log retention sweep"
                            );
                            SWEEP_EVERY
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "conversation log retention sweep failed; retrying in an hour");
                            RETRY_AFTER
                        }
                    };
            }
            refresh_review_depth(&self.pool, &self.series);
            if queue.wait_closed(REFRESH_EVERY) {
                return;
            }
        }
    }
}
