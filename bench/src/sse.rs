//! Incremental Server-Sent Events parser (the WHATWG `text/event-stream` rules).
//!
//! Bytes go in as they arrive, in pieces of any size; complete events come out. Lines end
//! in LF, CRLF or a lone CR, even when the CR and LF arrive in different pieces. Lines
//! starting with `:` are comments (keep-alives) and are dropped. An event is dispatched at
//! a blank line; one with no `data` field is dropped (as browsers do). A trailing event
//! that never saw its blank line is not dispatched.
//!
//! Independent of tessera on purpose: the main crate only writes SSE (`server/sse.rs`),
//! and the load generator must read the wire as any OpenAI client does, so a framing
//! mistake in the server fails here instead of being mirrored by shared code.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when the server named the event type.
    pub event: Option<String>,
    /// All `data:` lines joined by `\n`.
    pub data: String,
}

impl SseEvent {
    /// The OpenAI end-of-stream sentinel `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data.trim() == "[DONE]"
    }
}

/// Parser state kept between `feed` calls.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous byte was a CR, so an LF right after it ends nothing.
    after_cr: bool,
    event: Option<String>,
    data: Vec<String>,
    /// The current event has at least one `data` field.
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes` and returns the events they completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    if let Some(ev) = self.end_line() {
                        events.push(ev);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        events
    }

    /// Handles one complete line; a blank line dispatches the pending event.
    fn end_line(&mut self) -> Option<SseEvent> {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if line.is_empty() {
            let event = self.event.take();
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(SseEvent {
                event,
                data: data.join("\n"),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => {
                self.data.push(value.to_string());
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry and unknown fields do not matter here
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        pieces.iter().flat_map(|piece| p.feed(piece)).collect()
    }

    fn data(s: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: s.to_string(),
        }
    }

    #[test]
    fn whole_stream_in_one_piece() {
        let evs = feed_all(&[b"data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n"]);
        assert_eq!(
            evs,
            vec![data("{\"a\":1}"), data("{\"a\":2}"), data("[DONE]")]
        );
        assert!(evs[2].is_done() && !evs[0].is_done());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let stream = b"data: {\"x\":\"h\xc3\xa9\"}\r\n\r\n: keep-alive\r\n\r\ndata: [DONE]\r\n\r\n";
        let expected = feed_all(&[stream]);
        assert_eq!(expected, vec![data("{\"x\":\"h\u{e9}\"}"), data("[DONE]")]);
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(feed_all(&[a, b]), expected, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(feed_all(&bytes), expected);
    }

    #[test]
    fn comments_and_keepalives_are_dropped() {
        let evs = feed_all(&[b": ping\n\n:\n\ndata: a\n\n"]);
        assert_eq!(evs, vec![data("a")]);
    }

    #[test]
    fn lone_cr_ends_lines() {
        assert_eq!(
            feed_all(&[b"data: a\r\rdata: b\r\r"]),
            vec![data("a"), data("b")]
        );
    }

    #[test]
    fn multi_line_data_and_named_error_events() {
        let evs = feed_all(&[
            b"event: error\ndata: {\"error\":\n",
            b"data: \"boom\"}\nid: 7\n\n",
        ]);
        assert_eq!(
            evs,
            vec![SseEvent {
                event: Some("error".into()),
                data: "{\"error\":\n\"boom\"}".into()
            }]
        );
    }

    #[test]
    fn no_space_after_colon_and_events_without_data() {
        let evs = feed_all(&[b"data:x\n\nevent: ping\n\nretry: 5\n\n"]);
        assert_eq!(evs, vec![data("x")]);
    }

    #[test]
    fn unterminated_event_is_not_dispatched() {
        assert!(feed_all(&[b"data: partial\n"]).is_empty());
        assert!(feed_all(&[b"data: partial"]).is_empty());
    }
}
