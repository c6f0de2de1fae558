//! The receive side of one socket: the upgraded request's payload decoded into
//! WebSocket frames by actix-http's codec, with fragmented messages joined.
//!
//! Invariants: no client message larger than `max_bytes` is ever held: a frame whose
//! header announces more fails at once (`TooBig`), and so does a fragmented message
//! whose pieces add up to more; the buffer holds at most one partial frame and one read
//! chunk, because frames are decoded before more is read.

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use actix_web::web::{self, Bytes, BytesMut};
use futures_util::StreamExt;

/// One client message.
#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Bytes),
    Pong,
    Close,
}

/// Why reading failed.
#[derive(Debug)]
pub enum ReadError {
    /// A message over the size limit.
    TooBig,
    /// Frames that break the protocol (or text that is not UTF-8).
    Protocol(String),
}

/// A message being joined from fragments: whether it is text, and its bytes so far.
struct Partial {
    text: bool,
    bytes: BytesMut,
}

pub struct Reader {
    payload: web::Payload,
    buf: BytesMut,
    codec: Codec,
    max_bytes: usize,
    partial: Option<Partial>,
    ended: bool,
}

impl Reader {
    pub fn new(payload: web::Payload, max_bytes: usize) -> Self {
        Self {
            payload,
            buf: BytesMut::new(),
            codec: Codec::new().max_size(max_bytes),
            max_bytes,
            partial: None,
            ended: false,
        }
    }

    /// The next message; `None` once the client's side has ended.
    pub async fn recv(&mut self) -> Option<Result<Incoming, ReadError>> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => match self.assemble(frame) {
                    Ok(Some(message)) => return Some(Ok(message)),
                    Ok(None) => continue,
                    Err(e) => return Some(Err(e)),
                },
                Ok(None) => {}
                Err(ProtocolError::Overflow) => return Some(Err(ReadError::TooBig)),
                Err(e) => return Some(Err(ReadError::Protocol(e.to_string()))),
            }
            if self.ended {
                return None;
            }
            match self.payload.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(_)) | None => self.ended = true,
            }
        }
    }

    /// A frame as a message, or `None` while a fragmented message is incomplete.
    fn assemble(&mut self, frame: Frame) -> Result<Option<Incoming>, ReadError> {
        let (text, bytes, last) = match frame {
            Frame::Text(b) => (true, b, true),
            Frame::Binary(_) => return Ok(Some(Incoming::Binary)),
            Frame::Ping(b) => return Ok(Some(Incoming::Ping(b))),
            Frame::Pong(_) => return Ok(Some(Incoming::Pong)),
            Frame::Close(_) => return Ok(Some(Incoming::Close)),
            Frame::Continuation(Item::FirstText(b)) => (true, b, false),
            Frame::Continuation(Item::FirstBinary(b)) => (false, b, false),
            Frame::Continuation(Item::Continue(b)) => (self.partial_kind()?, b, false),
            Frame::Continuation(Item::Last(b)) => (self.partial_kind()?, b, true),
        };
        let mut partial = self.partial.take().unwrap_or(Partial {
            text,
            bytes: BytesMut::new(),
        });
        if partial.bytes.len() + bytes.len() > self.max_bytes {
            return Err(ReadError::TooBig);
        }
        partial.bytes.extend_from_slice(&bytes);
        if !last {
            self.partial = Some(partial);
            return Ok(None);
        }
        if !partial.text {
            return Ok(Some(Incoming::Binary));
        }
        String::from_utf8(partial.bytes.to_vec())
            .map(|s| Some(Incoming::Text(s)))
            .map_err(|_| ReadError::Protocol("a text message is not valid UTF-8".into()))
    }

    fn partial_kind(&self) -> Result<bool, ReadError> {
        self.partial
            .as_ref()
            .map(|p| p.text)
            .ok_or_else(|| ReadError::Protocol("a continuation frame without a first frame".into()))
    }
}
