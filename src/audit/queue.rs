//! The log's queue between the request paths and the writer thread: records waiting to
//! be written, the batch being written, and the counts that flushing and the lag need.
//!
//! Invariants: `push` never refuses and never blocks on I/O (it is called when a
//! request ends, on an async worker); the queue's size is bounded by the front ends,
//! which refuse new requests once `AuditLog::check` fails (lag or backlog), so only
//! requests already admitted can add to a full queue. A record counts as written only
//! when its batch committed; the lag is the age of the oldest record not yet written.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::store::AuditEntry;

struct Queued {
    at: Instant,
    entry: AuditEntry,
}

#[derive(Default)]
struct Pending {
    records: VecDeque<Queued>,
    /// The batch being written: when its oldest record was queued, and its size.
    writing: Option<(Instant, usize)>,
    /// Records pushed since the start.
    submitted: u64,
    /// Records whose batch is done (committed, or given up at shutdown).
    done: u64,
    /// Records given up (the store failed past the closing deadline).
    lost: u64,
    closed: bool,
}

/// What the writer gets from `next_batch`.
pub enum Next {
    Batch(Vec<AuditEntry>),
    /// Nothing came within the wait.
    Idle,
    /// Closed and empty: the writer stops.
    Closed,
}

#[derive(Default)]
pub struct Queue {
    state: Mutex<Pending>,
    changed: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues a record (see the module header: never refused).
    pub fn push(&self, entry: AuditEntry) {
        let mut state = self.lock();
        state.records.push_back(Queued {
            at: Instant::now(),
            entry,
        });
        state.submitted += 1;
        self.changed.notify_all();
    }

    /// Up to `max` records once there are some (waiting up to `idle`), marked as being
    /// written until `batch_done`.
    pub fn next_batch(&self, max: usize, idle: Duration) -> Next {
        let mut state = self.lock();
        if state.records.is_empty() && !state.closed {
            state = match self.changed.wait_timeout(state, idle) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        let Some(oldest) = state.records.front().map(|q| q.at) else {
            return if state.closed {
                Next::Closed
            } else {
                Next::Idle
            };
        };
        let take = state.records.len().min(max);
        let batch: Vec<AuditEntry> = state.records.drain(..take).map(|q| q.entry).collect();
        state.writing = Some((oldest, batch.len()));
        Next::Batch(batch)
    }

    /// The batch from `next_batch` is done: `written`, or given up.
    pub fn batch_done(&self, written: bool) {
        let mut state = self.lock();
        if let Some((_, n)) = state.writing.take() {
            state.done += n as u64;
            if !written {
                state.lost += n as u64;
            }
        }
        self.changed.notify_all();
    }

    /// Records given up so far.
    pub fn lost(&self) -> u64 {
        self.lock().lost
    }

    /// Age of the oldest record not yet written (zero when none waits).
    pub fn lag(&self) -> Duration {
        let state = self.lock();
        let oldest = state
            .writing
            .map(|(at, _)| at)
            .or_else(|| state.records.front().map(|q| q.at));
        oldest.map_or(Duration::ZERO, |at| at.elapsed())
    }

    /// Records not yet written (queued or being written).
    pub fn pending(&self) -> usize {
        let state = self.lock();
        state.records.len() + state.writing.map_or(0, |(_, n)| n)
    }

    /// Records pushed so far.
    pub fn submitted(&self) -> u64 {
        self.lock().submitted
    }

    /// Waits until the first `count` records pushed are done, up to `deadline`; whether
    /// they are.
    pub fn wait_done(&self, count: u64, deadline: Instant) -> bool {
        self.wait_for(deadline, |state| state.done >= count)
    }

    /// Waits until `ready` holds, up to `deadline`; whether it does.
    fn wait_for(&self, deadline: Instant, ready: impl Fn(&Pending) -> bool) -> bool {
        let mut state = self.lock();
        while !ready(&state) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = match self.changed.wait_timeout(state, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// No more records will come: the writer drains what is queued, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits up to `limit` for the queue to close; whether it did.
    pub fn wait_closed(&self, limit: Duration) -> bool {
        self.wait_for(Instant::now() + limit, |state| state.closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuditRecord;

    fn entry(id: &str) -> AuditEntry {
        AuditEntry {
            record: AuditRecord {
                id: id.into(),
                ..AuditRecord::default()
            },
            review: None,
        }
    }

    #[test]
    fn batches_drain_in_order_and_count_as_done_when_finished() {
        let q = Queue::default();
        assert!(matches!(q.next_batch(8, Duration::ZERO), Next::Idle));
        for id in ["a", "b", "c"] {
            q.push(entry(id));
        }
        let Next::Batch(batch) = q.next_batch(2, Duration::ZERO) else {
            panic!("a batch")
        };
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].record.id, "a");
        assert_eq!(q.pending(), 3, "the batch being written still counts");
        assert!(!q.wait_done(2, Instant::now()));
        q.batch_done(true);
        assert!(q.wait_done(2, Instant::now()));
        assert_eq!(q.pending(), 1);
        q.close();
        let Next::Batch(rest) = q.next_batch(8, Duration::ZERO) else {
            panic!("the rest is drained after close")
        };
        assert_eq!(rest[0].record.id, "c");
        q.batch_done(false);
        assert_eq!(q.lost(), 1);
        assert!(matches!(q.next_batch(8, Duration::ZERO), Next::Closed));
        assert_eq!((q.submitted(), q.lag()), (3, Duration::ZERO));
    }
}
