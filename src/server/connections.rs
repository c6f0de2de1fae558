//! The HTTP connections a server has open and when its last request arrived: what the
//! drain's linger waits on before the server stops (`serve::drain`).
//!
//! Why: a proxy in front (nginx with `keepalive`) pools idle keep-alive connections and
//! may send a request on one at any moment. A server that closes such a connection as it
//! stops can close it under a request the proxy has just sent; the proxy then answers the
//! client 502, since a POST that was sent is never retried elsewhere. A server that exits
//! just after refusing a request makes the proxy's replay of it (`@tessera_not_started` in
//! deploy/nginx) find no listener, with the same result. So once its last sequence has
//! finished, a draining server keeps its listener and answers everything 503 (nothing
//! started, `Connection: close`) until every connection has closed (the proxy closed its
//! idle ones, or used them and was told to close) and no request came for `QUIET`.
//!
//! Invariants: `open` counts the connections whose [`OpenConnection`] is alive (one per
//! connection, dropped with it), so it is exact whenever no connection is being set up.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a draining server must have had no request before it may stop: longer than a
/// proxy takes to replay a refused request (nginx replays at once), shorter than the
/// `fail_timeout` (1 s) for which nginx then sends this replica nothing.
pub const QUIET: Duration = Duration::from_millis(300);

/// Open connections and the arrival of the last request.
#[derive(Debug)]
pub struct Connections {
    open: Arc<AtomicUsize>,
    /// The time `last_request_ms` counts from.
    epoch: Instant,
    /// When the last request arrived, in milliseconds after `epoch`.
    last_request_ms: AtomicU64,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            open: Arc::default(),
            epoch: Instant::now(),
            last_request_ms: AtomicU64::new(0),
        }
    }
}

impl Connections {
    /// Counts a new connection for as long as the returned value lives.
    pub fn opened(&self) -> OpenConnection {
        self.open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(self.open.clone())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Records that a request arrived now.
    pub fn note_request(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_request_ms.fetch_max(now, Ordering::SeqCst);
    }

    /// Time since the last request arrived (since the server started, before any).
    pub fn since_last_request(&self) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::SeqCst));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Whether a stopping server can close its listener now without a request racing the
    /// close: no connection is open and none came for `QUIET`.
    pub fn settled(&self) -> bool {
        self.open() == 0 && self.since_last_request() >= QUIET
    }
}

/// One open connection (kept in the connection's data; dropping it uncounts it).
#[derive(Debug)]
pub struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_connection_while_it_lives() {
        let connections = Connections::default();
        let first = connections.opened();
        let second = connections.opened();
        assert_eq!(connections.open(), 2);
        drop(first);
        assert_eq!(connections.open(), 1);
        drop(second);
        assert_eq!(connections.open(), 0);
    }

    /// A server that started `ago` and has had no request since.
    fn started(ago: Duration) -> Connections {
        Connections {
            epoch: Instant::now() - ago,
            ..Connections::default()
        }
    }

    #[test]
    fn settled_only_with_no_connection_and_no_recent_request() {
        let connections = started(Duration::from_secs(60));
        assert!(connections.settled());
        let open = connections.opened();
        assert!(!connections.settled());
        drop(open);
        assert!(connections.settled());
        connections.note_request();
        // A minute back without requests, then one now: the quiet restarts from it.
        assert!(connections.since_last_request() < Duration::from_secs(60));
    }
}
