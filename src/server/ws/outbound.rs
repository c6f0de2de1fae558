//! The send side of one socket: an `Outbox` that the socket and its generations push
//! server messages into, and the writer task that hands them to the WebSocket in order.
//!
//! Back-pressure: actix writes a WebSocket's frames only as fast as the client reads
//! them; when it stops, the writer waits and the outbox fills. The outbox counts the
//! bytes it holds and refuses a message that would take it past `--ws-limits
//! send_buffer`: the socket is then *overflowed* — it stops taking messages, its
//! generations are aborted, a close frame (`4409`) is queued behind what is waiting, and
//! if the client has not read down to it within `CLOSE_GRACE` the connection is dropped
//! (`conn_guard::KillSwitch`). Server memory per socket stays within the send buffer
//! plus actix's own bounded buffers, whatever the client does.
//!
//! Invariants: `queued` equals the bytes of the messages pushed and not yet written;
//! once overflowed or closed, the outbox takes nothing more except the one close frame.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_ws::{CloseCode, CloseReason, Session};
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

/// How long an overflowed or closing socket's client has to read its close frame before
/// the connection is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Bytes counted for a frame without text (ping, pong, close).
const CONTROL_FRAME_BYTES: usize = 128;

/// One frame to send.
#[derive(Debug)]
pub enum Out {
    Text(String),
    Ping(Bytes),
    Pong(Bytes),
    Close(u16, String),
}

impl Out {
    fn bytes(&self) -> usize {
        match self {
            Out::Text(t) => t.len(),
            Out::Ping(b) | Out::Pong(b) => b.len() + CONTROL_FRAME_BYTES,
            Out::Close(_, reason) => reason.len() + CONTROL_FRAME_BYTES,
        }
    }
}

/// The shared state of an outbox.
struct Shared {
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    closed: AtomicBool,
    overflow: Notify,
}

/// Where a socket's messages go; cheap to clone (one per generation).
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Out>,
    shared: Arc<Shared>,
}

impl Outbox {
    /// An outbox of at most `limit` queued bytes and its receiving end (for `write`).
    pub fn new(limit: usize) -> (Self, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            overflow: Notify::new(),
        });
        (Self { tx, shared }, rx)
    }

    /// Queues `message`; false when the socket is closed or this overflowed it.
    pub fn send(&self, message: &Value) -> bool {
        self.push(Out::Text(message.to_string()))
    }

    pub fn pong(&self, payload: Bytes) -> bool {
        self.push(Out::Pong(payload))
    }

    pub fn ping(&self) -> bool {
        self.push(Out::Ping(Bytes::new()))
    }

    fn push(&self, out: Out) -> bool {
        let s = &self.shared;
        if s.closed.load(Ordering::SeqCst) || s.overflowed.load(Ordering::SeqCst) {
            return false;
        }
        let bytes = out.bytes();
        let total = s.queued.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if total > s.limit {
            s.queued.fetch_sub(bytes, Ordering::SeqCst);
            if !s.overflowed.swap(true, Ordering::SeqCst) {
                s.overflow.notify_one();
            }
            return false;
        }
        if self.tx.send(out).is_err() {
            s.queued.fetch_sub(bytes, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Queues the close frame (once; past the limit) and takes nothing more after it.
    pub fn close(&self, code: u16, reason: &str) {
        if !self.shared.closed.swap(true, Ordering::SeqCst) {
            let out = Out::Close(code, reason.to_string());
            self.shared.queued.fetch_add(out.bytes(), Ordering::SeqCst);
            let _ = self.tx.send(out);
        }
    }

    /// Resolves when a message did not fit (the client reads too slowly).
    pub async fn overflowed(&self) {
        let notified = self.shared.overflow.notified();
        if self.shared.overflowed.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }

    #[cfg(test)]
    fn is_overflowed(&self) -> bool {
        self.shared.overflowed.load(Ordering::SeqCst)
    }

    /// Bytes queued and not yet handed to the WebSocket.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }
}

/// The writer task: hands the queued frames to `session` in order until the close frame
/// (or the connection ends). Returns once the close frame is handed over.
pub async fn write(mut rx: mpsc::UnboundedReceiver<Out>, outbox: Outbox, mut session: Session) {
    while let Some(out) = rx.recv().await {
        let bytes = out.bytes();
        let sent = match out {
            Out::Text(text) => session.text(text).await,
            Out::Ping(payload) => session.ping(&payload).await,
            Out::Pong(payload) => session.pong(&payload).await,
            Out::Close(code, reason) => {
                let reason = CloseReason {
                    code: CloseCode::from(code),
                    description: Some(reason),
                };
                let _ = session.close(Some(reason)).await;
                return;
            }
        };
        outbox.shared.queued.fetch_sub(bytes, Ordering::SeqCst);
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_outbox_is_bounded_in_bytes_and_overflows_once() {
        let (outbox, mut rx) = Outbox::new(100);
        let message = json!({"type": "delta", "text": "x".repeat(40)});
        assert!(outbox.send(&message));
        assert!(!outbox.is_overflowed());
        let size = outbox.queued();
        assert!(size > 40 && size < 60, "{size}");
        // The next two would be over 100 bytes: the first refusal overflows the outbox.
        assert!(outbox.send(&message) || outbox.queued() <= 100);
        assert!(!outbox.send(&json!({"text": "y".repeat(80)})));
        assert!(outbox.is_overflowed());
        assert!(outbox.queued() <= 100);
        assert!(
            !outbox.send(&json!({})),
            "an overflowed outbox takes nothing"
        );
        outbox.close(4409, "slow");
        let mut frames = Vec::new();
        while let Ok(out) = rx.try_recv() {
            frames.push(out);
        }
        assert!(matches!(frames.last(), Some(Out::Close(4409, r)) if r == "slow"));
        outbox.close(1000, "again");
        assert!(rx.try_recv().is_err(), "one close frame only");
    }
}
