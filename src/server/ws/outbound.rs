//! The send side of one socket: an `Outbox` that the socket and its generations push
//! server messages into, and `Body`, the upgraded response's body, which actix polls for
//! frames to write.
//!
//! Back-pressure: actix polls the body only while its write buffer (32 KiB) has room,
//! that is as fast as the client reads. Frames wait in the outbox until then, counted in
//! bytes; a message that would take the outbox past `--ws-limits send_buffer` is refused
//! (one larger message is taken when nothing else waits, so a long transcript still
//! reaches a client that reads) and the socket is *overflowed*: it takes no more
//! messages, its generations are aborted, a close frame (`4409`) is queued behind what
//! waits, and a client that has not read down to it within `CLOSE_GRACE` loses its
//! connection (`conn_guard::KillSwitch`). So a socket holds at most the send buffer (plus
//! one message) and actix's write buffer, whatever its client does.
//!
//! Invariants: `queued` is the bytes of the frames in the queue; once overflowed or
//! closed the outbox takes nothing but the one close frame; the body ends after it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_codec::Encoder;
use actix_http::ws::{CloseCode, CloseReason, Codec, Message};
use actix_web::web::{Bytes, BytesMut};
use futures_util::Stream;
use serde_json::Value;
use tokio::sync::Notify;

/// How long an overflowed or closing socket's client has to read its close frame before
/// the connection is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Bytes counted for a frame without text (ping, pong, close).
const CONTROL_FRAME_BYTES: usize = 128;

/// Longest close reason (RFC 6455: a control frame carries at most 125 bytes, two of
/// them the code); a peer fails the connection on a longer one, losing the code.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// `reason` cut to `MAX_CLOSE_REASON_BYTES` at a character boundary (an ellipsis marks
/// the cut).
fn close_reason(reason: &str) -> String {
    if reason.len() <= MAX_CLOSE_REASON_BYTES {
        return reason.to_string();
    }
    const MORE: &str = "…";
    let mut end = MAX_CLOSE_REASON_BYTES - MORE.len();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &reason[..end])
}

/// One frame to send.
#[derive(Debug)]
enum Out {
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

    fn into_message(self) -> Message {
        match self {
            Out::Text(text) => Message::Text(text.into()),
            Out::Ping(b) => Message::Ping(b),
            Out::Pong(b) => Message::Pong(b),
            Out::Close(code, reason) => Message::Close(Some(CloseReason {
                code: CloseCode::from(code),
                description: (!reason.is_empty()).then_some(reason),
            })),
        }
    }
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Out>,
    queued: usize,
    overflowed: bool,
    closed: bool,
    /// The body's waker, while it waits for a frame.
    waker: Option<Waker>,
}

struct Shared {
    queue: Mutex<Queue>,
    limit: usize,
    overflow: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        match self.queue.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Where a socket's messages go; cheap to clone (one per generation).
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// An outbox of at most `limit` queued bytes, and the response body it feeds.
    pub fn new(limit: usize) -> (Self, Body) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            limit,
            overflow: Notify::new(),
        });
        let body = Body {
            shared: shared.clone(),
            codec: Codec::new(),
            done: false,
        };
        (Self { shared }, body)
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
        let mut q = self.shared.lock();
        if q.closed || q.overflowed {
            return false;
        }
        let bytes = out.bytes();
        if q.queued > 0 && q.queued + bytes > self.shared.limit {
            q.overflowed = true;
            drop(q);
            self.shared.overflow.notify_one();
            return false;
        }
        q.queued += bytes;
        q.frames.push_back(out);
        if let Some(waker) = q.waker.take() {
            waker.wake();
        }
        true
    }

    /// Queues the close frame (once; past the limit); nothing is taken after it.
    pub fn close(&self, code: u16, reason: &str) {
        let mut q = self.shared.lock();
        if q.closed {
            return;
        }
        q.closed = true;
        let out = Out::Close(code, close_reason(reason));
        q.queued += out.bytes();
        q.frames.push_back(out);
        if let Some(waker) = q.waker.take() {
            waker.wake();
        }
    }

    /// Resolves when a message did not fit (the client reads too slowly).
    pub async fn overflowed(&self) {
        let notified = self.shared.overflow.notified();
        if self.shared.lock().overflowed {
            return;
        }
        notified.await;
    }

    /// Whether the close frame has been handed to actix (the body has ended).
    #[cfg(test)]
    fn is_flushed(&self) -> bool {
        let q = self.shared.lock();
        q.closed && q.frames.is_empty()
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.shared.lock().queued
    }
}

/// The WebSocket response body: the outbox's frames, encoded, as actix asks for them.
pub struct Body {
    shared: Arc<Shared>,
    codec: Codec,
    done: bool,
}

impl Stream for Body {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut q = this.shared.lock();
        let Some(out) = q.frames.pop_front() else {
            q.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        q.queued -= out.bytes();
        drop(q);
        this.done = matches!(out, Out::Close(..));
        let mut buf = BytesMut::new();
        match this.codec.encode(out.into_message(), &mut buf) {
            Ok(()) => Poll::Ready(Some(Ok(buf.freeze()))),
            Err(e) => Poll::Ready(Some(Err(actix_web::error::ErrorInternalServerError(e)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use serde_json::json;

    #[test]
    fn the_outbox_is_bounded_in_bytes_and_overflows_once() {
        let (outbox, mut body) = Outbox::new(100);
        let big = json!({"text": "z".repeat(500)});
        assert!(
            outbox.send(&big),
            "one large message goes when nothing waits"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let frame = rt.block_on(body.next()).expect("frame").expect("encoded");
        assert!(frame.len() > 500);
        assert_eq!(outbox.queued(), 0);
        let message = json!({"type": "delta", "text": "x".repeat(40)});
        assert!(outbox.send(&message));
        assert!(
            !outbox.send(&json!({"text": "y".repeat(80)})),
            "past the limit"
        );
        assert!(outbox.queued() <= 100);
        assert!(
            !outbox.send(&json!({})),
            "an overflowed outbox takes nothing"
        );
        outbox.close(4409, "slow");
        outbox.close(1000, "again");
        let frames: Vec<Bytes> = rt.block_on(body.map(|f| f.expect("encoded")).collect());
        assert_eq!(frames.len(), 2, "the queued message, then one close frame");
        assert_eq!(
            &frames[1][..2],
            &[0x88, 6],
            "a close frame: code and reason"
        );
        assert_eq!(&frames[1][2..4], &4409u16.to_be_bytes());
        assert!(outbox.is_flushed());
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(close_reason("slow"), "slow");
        let exact = "x".repeat(MAX_CLOSE_REASON_BYTES);
        assert_eq!(close_reason(&exact), exact);
        let long = format!("a{}", "字".repeat(100));
        let cut = close_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON_BYTES, "{}", cut.len());
        assert!(cut.starts_with("a字") && cut.ends_with('…'), "{cut}");
        let (outbox, body) = Outbox::new(100);
        outbox.close(4401, &long);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let frames: Vec<Bytes> = rt.block_on(body.map(|f| f.expect("encoded")).collect());
        assert_eq!(frames[0][0], 0x88, "a close frame");
        assert!(usize::from(frames[0][1]) <= 125, "{}", frames[0][1]);
    }
}
