//! The HTTP connections a server has open and when its last one closed: what the
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
//! idle ones, or used them and was told to close), none has closed for `QUIET` (a
//! proxy's replay comes on a new connection just after the refused one closes), and it
//! has been stopping for `QUIET` at least (connections queued in the kernel when it
//! began are not counted yet).
//!
//! Then, before it stops, it makes its listening socket drop what arrives for new
//! connections ([`Connections::refuse_new`]) and lingers once more, so that the ones the
//! kernel had queued are taken and answered: closing the listener then resets nothing.
//!
//! Invariants: `open` counts the connections whose [`OpenConnection`] is alive (one per
//! connection, dropped with it), so it is exact whenever no connection is being set up.
//! The listener handle kept for the filter is closed as soon as the filter is on (a
//! handle kept longer would keep the socket listening after the server stopped).

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a draining server must have had no connection open before it may stop:
/// longer than a proxy takes to replay a refused request on a new connection (nginx
/// replays at once), shorter than the `fail_timeout` (1 s) for which nginx then sends
/// this replica nothing.
pub const QUIET: Duration = Duration::from_millis(300);

/// Open connections and when the last one closed.
#[derive(Debug, Clone)]
pub struct Connections(Arc<Tally>);

#[derive(Debug)]
struct Tally {
    open: AtomicUsize,
    /// The time `last_close_ms` counts from.
    epoch: Instant,
    /// When the last connection closed, in milliseconds after `epoch`.
    last_close_ms: AtomicU64,
    /// A second handle on the server's listening socket, until `refuse_new` uses it.
    listener: Mutex<Option<TcpListener>>,
}

impl Default for Connections {
    fn default() -> Self {
        Self(Arc::new(Tally {
            open: AtomicUsize::new(0),
            epoch: Instant::now(),
            last_close_ms: AtomicU64::new(0),
            listener: Mutex::new(None),
        }))
    }
}

impl Connections {
    /// Counts a new connection for as long as the returned value lives.
    pub fn opened(&self) -> OpenConnection {
        self.0.open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(self.0.clone())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::SeqCst)
    }

    /// Time since the last connection closed (since the server started, before any).
    pub fn since_last_close(&self) -> Duration {
        let last = Duration::from_millis(self.0.last_close_ms.load(Ordering::SeqCst));
        self.0.epoch.elapsed().saturating_sub(last)
    }

    /// Keeps a handle on the server's listening socket for [`Self::refuse_new`].
    pub fn watch(&self, listener: &TcpListener) -> io::Result<()> {
        let handle = listener.try_clone()?;
        if let Ok(mut slot) = self.0.listener.lock() {
            *slot = Some(handle);
        }
        Ok(())
    }

    /// Makes the watched listening socket drop every segment that arrives for a new
    /// connection (a drop-all socket filter: SYNs and handshake ends go unanswered); the
    /// connections the kernel has already queued are still taken. A client's SYN is sent
    /// again a second later and finds the port closed by then (refused, which a proxy
    /// retries elsewhere: nothing was sent) or still filtered (its connect timeout, the
    /// same). Whether the filter is on: once only, Linux only; a failure is logged and
    /// only loses this safeguard.
    pub fn refuse_new(&self) -> bool {
        let Some(listener) = self.0.listener.lock().ok().and_then(|mut slot| slot.take()) else {
            return false;
        };
        match drop_all_segments(&listener) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("cannot filter the listener before it closes: {e}");
                false
            }
        }
    }

    /// Whether a server that began to stop at `stopping_since` can close its listener now
    /// without a request racing the close: no connection is open, none closed within
    /// `QUIET`, and `QUIET` has passed since it began to stop. The last, because a
    /// connection counts only once a worker has taken it: those the kernel had queued
    /// (a burst that came with SIGTERM) are counted well within `QUIET`; closing the
    /// listener at once would reset them under requests a proxy has already sent.
    pub fn settled(&self, stopping_since: Instant) -> bool {
        self.open() == 0 && self.since_last_close() >= QUIET && stopping_since.elapsed() >= QUIET
    }
}

/// Attaches a classic BPF program of one instruction, `ret #0` (keep no byte: drop), to
/// the socket of `listener`.
#[cfg(target_os = "linux")]
fn drop_all_segments(listener: &TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let mut code = [libc::sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: the fd is an open socket for the call; `program` and the `code` it points
    // to outlive the call, and the kernel copies the program.
    let done = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&program as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    match done {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_all_segments(_: &TcpListener) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "socket filters are Linux-only",
    ))
}

/// One open connection (kept in the connection's data; dropping it uncounts it).
#[derive(Debug)]
pub struct OpenConnection(Arc<Tally>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        // The time first: whoever then reads `open` at 0 also sees when it got there.
        let now = self.0.epoch.elapsed().as_millis() as u64;
        self.0.last_close_ms.fetch_max(now, Ordering::SeqCst);
        self.0.open.fetch_sub(1, Ordering::SeqCst);
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

    /// A server that started `ago` and has had no connection since.
    fn started(ago: Duration) -> Connections {
        Connections(Arc::new(Tally {
            open: AtomicUsize::new(0),
            epoch: Instant::now() - ago,
            last_close_ms: AtomicU64::new(0),
            listener: Mutex::new(None),
        }))
    }

    #[test]
    fn settled_only_with_no_connection_open_and_none_closed_recently() {
        let connections = started(Duration::from_secs(60));
        let stopping_since = Instant::now() - QUIET;
        assert!(connections.settled(stopping_since));
        let open = connections.opened();
        assert!(!connections.settled(stopping_since));
        drop(open);
        assert!(!connections.settled(stopping_since));
        // A minute without connections, then one closed now: the quiet restarts from it.
        assert!(connections.since_last_close() < Duration::from_secs(60));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn refusing_new_connections_keeps_the_queued_ones() {
        use std::net::TcpStream;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let queued = TcpStream::connect(addr).expect("connect");
        let connections = Connections::default();
        assert!(!connections.refuse_new(), "nothing watched yet");
        connections.watch(&listener).expect("watch");
        assert!(connections.refuse_new());
        assert!(!connections.refuse_new(), "once only");
        // The SYN is dropped: the connect can only time out (the limit is a guard).
        let late = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert_eq!(late.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
        let (taken, _) = listener.accept().expect("the queued connection");
        assert_eq!(taken.peer_addr().ok(), queued.local_addr().ok());
    }

    #[test]
    fn never_settled_until_quiet_has_passed_since_stopping_began() {
        let idle = started(Duration::from_secs(60));
        assert!(!idle.settled(Instant::now()));
        assert!(idle.settled(Instant::now() - QUIET));
    }
}
