//! The connection guard: every TCP connection is read through a [`GuardedStream`] before
//! actix-http sees a byte, so that no request head actix would refuse ever reaches it
//! (actix answers those itself, with an empty body and no hook), and tessera answers
//! them instead with the OpenAI error body.
//!
//! How: the guard feeds what it reads to a mirror of actix's own request decoder
//! (`actix_http::h1::Codec`, fed the same bytes in the same order, so both agree on where
//! every head and body ends) and releases to actix only the bytes the mirror accepted.
//! A request head is held back until it is complete and passes tessera's limits, which
//! sit below actix's: at most [`MAX_URI_BYTES`] of request target (else 414),
//! [`MAX_HEAD_BYTES`] of head and [`MAX_HEADERS`] header fields (else 431), well-formed
//! (else 400), whole within the head timeout (else 408). A refused head is never
//! released: in its place the guard releases a request of its own,
//! `GET / … Connection: close` carrying [`REFUSAL_HEADER`] with the status and the
//! reason, which `gate` answers with that error (through `error::http_error`, after any
//! earlier pipelined request, with the request id, access log and metrics of every
//! request); actix then closes the connection, and the guard reads what the client
//! still sends for a moment so the close does not reset the connection under the answer.
//!
//! Each connection also carries a [`KillSwitch`] (in the connection data of its requests:
//! `req.conn_data::<Arc<KillSwitch>>()`): a handler that must drop its connection whatever
//! state actix's writer is in (a WebSocket whose client stopped reading) pulls it, and
//! every later read or write of the connection fails, so actix drops it.
//!
//! Invariants: actix never receives an incomplete, over-limit or malformed head, so its
//! own 400 / 408 / 431 responses cannot happen; a client cannot send `REFUSAL_HEADER`
//! itself (400); bytes after a refusal are never released. A body whose chunked framing
//! breaks mid-way is not refused here (its head already went to its handler): actix sees
//! the end of the stream there, the handler waiting for the body answers 400 (the body
//! ended early), and the connection closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_codec::Decoder;
use actix_http::error::ParseError;
use actix_http::h1::{Codec, Message, MessageType};
use actix_http::ServiceConfigBuilder;
use actix_web::http::header::HeaderMap;
use actix_web::rt::net::TcpStream;
use actix_web::rt::time::{sleep, Sleep};
use actix_web::web::BytesMut;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ApiError;

/// Longest request target (path and query) accepted.
pub const MAX_URI_BYTES: usize = 8 << 10;
/// Largest request head (request line and header fields) accepted.
pub const MAX_HEAD_BYTES: usize = 32 << 10;
/// Most header fields one request may have.
pub const MAX_HEADERS: usize = 64;
/// The header of the guard's own request that carries a refusal (`"431 reason"`).
pub const REFUSAL_HEADER: &str = "x-tessera-refusal";

/// Room for the method and version around the target before a request line that has
/// not ended yet is judged too long.
const REQUEST_LINE_SLACK: usize = 64;
/// How long, and how much of, what a refused client still sends is read before closing.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 << 10;

/// A request the guard answers itself: its status and the reason given to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: String) -> Self {
        Self { status, message }
    }

    /// The request released to actix in place of the refused one.
    fn as_request(&self) -> Vec<u8> {
        let reason: String = self
            .message
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        format!(
            "GET / HTTP/1.1\r\nHost: tessera\r\nConnection: close\r\n{REFUSAL_HEADER}: {} {reason}\r\n\r\n",
            self.status
        )
        .into_bytes()
    }
}

/// The error a request carrying [`REFUSAL_HEADER`] stands for (`gate` answers it).
pub fn refusal_of(headers: &HeaderMap) -> Option<ApiError> {
    let value = headers.get(REFUSAL_HEADER)?.to_str().ok()?;
    let (status, message) = value.split_once(' ')?;
    Some(ApiError::Http {
        status: status.parse().ok()?,
        message: message.to_string(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Releasing what the mirror accepts.
    Open,
    /// The refusal request is released; nothing more will be.
    Refused,
    /// The client closed its side.
    Ended,
}

/// Ends a connection from outside actix: once pulled, the connection's reads and writes
/// fail (and its task is woken to see it).
#[derive(Debug, Default)]
pub struct KillSwitch {
    pulled: AtomicBool,
    waker: AtomicWaker,
}

impl KillSwitch {
    pub fn pull(&self) {
        self.pulled.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    pub fn is_pulled(&self) -> bool {
        self.pulled.load(Ordering::SeqCst)
    }

    /// `Err` once pulled; else `poll`, registering the waker when it is pending.
    fn guard<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.is_pulled() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection was ended by the server",
            )));
        }
        let result = poll(cx);
        if result.is_pending() {
            self.waker.register(cx.waker());
            if self.is_pulled() {
                cx.waker().wake_by_ref();
            }
        }
        result
    }
}

/// A TCP connection as actix-http reads it: see the module header.
pub struct GuardedStream {
    kill: Arc<KillSwitch>,
    io: TcpStream,
    head_timeout: Duration,
    /// actix's request decoder, fed exactly the bytes released to actix.
    mirror: Codec,
    /// Read from the socket, not yet judged.
    pending: BytesMut,
    /// Judged and released, not yet read by actix.
    released: BytesMut,
    /// The mirror waits for a request head (not inside a body).
    in_head: bool,
    /// Runs while a head is being received (from the connection's start for the first).
    head_timer: Option<Pin<Box<Sleep>>>,
    phase: Phase,
    linger: Option<Linger>,
}

/// Reading and dropping what a refused client still sends, before the close.
struct Linger {
    deadline: Pin<Box<Sleep>>,
    read: usize,
    write_closed: bool,
}

impl GuardedStream {
    /// Guards `io`; a request head must arrive whole within `head_timeout`.
    pub fn new(io: TcpStream, head_timeout: Duration) -> Self {
        Self {
            kill: Arc::new(KillSwitch::default()),
            io,
            head_timeout,
            mirror: Codec::new(ServiceConfigBuilder::new().build()),
            pending: BytesMut::new(),
            released: BytesMut::new(),
            in_head: true,
            head_timer: Some(Box::pin(sleep(head_timeout))),
            phase: Phase::Open,
            linger: None,
        }
    }

    /// The connection's kill switch (see the module header).
    pub fn kill_switch(&self) -> Arc<KillSwitch> {
        self.kill.clone()
    }

    /// Judges the pending bytes: releases what the mirror accepts; a refusal when a
    /// head breaks a limit or the mirror rejects it.
    fn advance(&mut self) -> Result<(), Refusal> {
        while !self.pending.is_empty() {
            if self.in_head {
                if self.head_timer.is_none() {
                    self.head_timer = Some(Box::pin(sleep(self.head_timeout)));
                }
                if !head_is_complete(&self.pending)? {
                    return Ok(());
                }
            }
            let mut probe = BytesMut::from(&self.pending[..]);
            let decoded = self.mirror.decode(&mut probe);
            if let Err(err) = decoded {
                return Err(parse_refusal(&err));
            }
            let consumed = self.pending.len() - probe.len();
            self.released
                .extend_from_slice(&self.pending.split_to(consumed));
            match decoded {
                Ok(Some(Message::Item(_))) => {
                    self.head_timer = None;
                    self.in_head = self.mirror.message_type() == MessageType::None;
                }
                Ok(Some(Message::Chunk(None))) => self.in_head = true,
                Ok(Some(Message::Chunk(Some(_)))) => {}
                Ok(None) | Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn refuse(&mut self, refusal: &Refusal) {
        tracing::debug!(status = refusal.status, reason = %refusal.message, "request head refused");
        self.pending.clear();
        self.released.extend_from_slice(&refusal.as_request());
        self.phase = Phase::Refused;
        self.head_timer = None;
    }

    /// Whether the head being received ran out of time (registers the timer's waker).
    fn head_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.in_head
            && self
                .head_timer
                .as_mut()
                .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }

    /// Reads from the socket into `pending`; `Ok(0)` at the end of the stream.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        self.pending.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    }

    /// After a refusal: ends the write side, then reads and drops what the client still
    /// sends (up to `LINGER` / `LINGER_BYTES`) so the close does not reset the connection
    /// before the client has read the answer.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let linger = self.linger.get_or_insert_with(|| Linger {
            deadline: Box::pin(sleep(LINGER)),
            read: 0,
            write_closed: false,
        });
        if !linger.write_closed {
            ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
            linger.write_closed = true;
        }
        let mut chunk = [0u8; READ_CHUNK];
        while linger.read < LINGER_BYTES {
            if linger.deadline.as_mut().poll(cx).is_ready() {
                break;
            }
            let mut buf = ReadBuf::new(&mut chunk);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => linger.read += buf.filled().len(),
                _ => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Whether `head` (the start of a request) is a complete head within the limits; a
/// refusal as soon as it is known to break one.
fn head_is_complete(head: &[u8]) -> Result<bool, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = req.parse(head);
    let target_len = req.path.map(str::len);
    if let Some(len) = target_len.filter(|&len| len > MAX_URI_BYTES) {
        return Err(Refusal::new(
            414,
            format!("the request target has {len} bytes; the limit is {MAX_URI_BYTES}"),
        ));
    }
    let head_len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => head.len(),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                format!("the request has more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(e) => return Err(Refusal::new(400, format!("malformed request head: {e}"))),
    };
    if target_len.is_none() && head.len() > MAX_URI_BYTES + REQUEST_LINE_SLACK {
        return Err(Refusal::new(
            414,
            format!("the request line is longer than {MAX_URI_BYTES} bytes"),
        ));
    }
    if head_len > MAX_HEAD_BYTES {
        return Err(Refusal::new(
            431,
            format!("the request head is larger than {MAX_HEAD_BYTES} bytes"),
        ));
    }
    if req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case(REFUSAL_HEADER))
    {
        return Err(Refusal::new(
            400,
            format!("the header `{REFUSAL_HEADER}` is reserved"),
        ));
    }
    Ok(matches!(parsed, Ok(httparse::Status::Complete(_))))
}

/// The refusal for a head actix's decoder rejects.
fn parse_refusal(err: &ParseError) -> Refusal {
    match err {
        ParseError::TooLarge => Refusal::new(431, format!("the request head is too large: {err}")),
        _ => Refusal::new(400, format!("malformed request: {err}")),
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let kill = this.kill.clone();
        kill.guard(cx, |cx| this.read_released(cx, buf))
    }
}

impl GuardedStream {
    /// `poll_read` of a connection that is not killed.
    fn read_released(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self;
        loop {
            if !this.released.is_empty() {
                let n = buf.remaining().min(this.released.len());
                buf.put_slice(&this.released.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                // actix answers the refusal, then closes: nothing more to give it.
                Phase::Refused => return Poll::Pending,
                Phase::Ended => return Poll::Ready(Ok(())),
                Phase::Open => {}
            }
            if let Err(refusal) = this.advance() {
                if this.in_head {
                    this.refuse(&refusal);
                } else {
                    tracing::debug!(reason = %refusal.message, "request body framing broken; closing");
                    this.phase = Phase::Ended;
                }
                continue;
            }
            if !this.released.is_empty() {
                continue;
            }
            if this.head_expired(cx) {
                let seconds = this.head_timeout.as_secs_f64();
                let message = format!("the request head did not arrive within {seconds} s");
                this.refuse(&Refusal::new(408, message));
                continue;
            }
            if ready!(this.fill(cx))? == 0 {
                this.phase = Phase::Ended;
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let io = &mut this.io;
        this.kill.guard(cx, |cx| Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let io = &mut this.io;
        this.kill
            .guard(cx, |cx| Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let io = &mut this.io;
        this.kill.guard(cx, |cx| Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.phase == Phase::Refused {
            return this.poll_linger(cx);
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(head: &[u8]) -> Option<Refusal> {
        head_is_complete(head).err()
    }

    #[test]
    fn heads_within_the_limits_pass_whole_or_partial() {
        assert_eq!(
            head_is_complete(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(true)
        );
        assert_eq!(head_is_complete(b"GET /health HTTP/1.1\r\nHo"), Ok(false));
        assert_eq!(head_is_complete(b"GET /hea"), Ok(false));
    }

    #[test]
    fn over_limit_heads_are_refused_with_their_status() {
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_URI_BYTES));
        assert_eq!(refusal(long_target.as_bytes()).map(|r| r.status), Some(414));
        let unfinished = format!("GET /{}", "a".repeat(MAX_URI_BYTES + 100));
        assert_eq!(refusal(unfinished.as_bytes()).map(|r| r.status), Some(414));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let refused = refusal(head.as_bytes()).expect("too many headers");
        assert_eq!(refused.status, 431);
        assert!(refused.message.contains("64"), "{}", refused.message);
        let big = format!(
            "GET / HTTP/1.1\r\nx-big: {}\r\n",
            "v".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(refusal(big.as_bytes()).map(|r| r.status), Some(431));
        assert_eq!(
            refusal(b"\x16\x03\x01 garbage\r\n\r\n").map(|r| r.status),
            Some(400)
        );
        let reserved = format!("GET / HTTP/1.1\r\n{REFUSAL_HEADER}: 200 ok\r\n\r\n");
        assert_eq!(refusal(reserved.as_bytes()).map(|r| r.status), Some(400));
    }

    #[test]
    fn the_refusal_request_carries_status_and_reason() {
        let refused = Refusal::new(431, "too big\r\nx-evil: ü".into());
        let request = refused.as_request();
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut fields);
        assert!(matches!(
            req.parse(&request),
            Ok(httparse::Status::Complete(_))
        ));
        let mut headers = HeaderMap::new();
        for field in req.headers.iter() {
            headers.insert(
                field.name.parse().expect("name"),
                actix_web::http::header::HeaderValue::from_bytes(field.value).expect("value"),
            );
        }
        let Some(ApiError::Http { status, message }) = refusal_of(&headers) else {
            panic!("no refusal in {headers:?}")
        };
        assert_eq!((status, message.as_str()), (431, "too big??x-evil: ?"));
    }
}
