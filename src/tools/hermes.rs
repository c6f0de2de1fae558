//! The Hermes tool-call syntax (Qwen2.5, Hermes, and tessera's generic format): each call
//! is `<tool_call>{"name": …, "arguments": {…}}</tool_call>` in the model's text. A
//! streaming parser splits generated text into content and tool calls as it arrives.
//!
//! Invariants:
//! - no byte of tool-call markup is ever emitted as content: text that could still
//!   become `<tool_call>` (a pending prefix of it) is held back until it cannot;
//! - the events depend only on the text, never on how it was split into pieces: feeding
//!   it in one piece or byte by byte gives the same content and the same calls
//!   (arguments may come in different pieces, their concatenation is the same). A
//!   non-streamed response is this parser fed once, so streamed and whole agree;
//! - a call's `arguments` are the model's own text of the arguments value (valid JSON
//!   whenever the model's call was); a call whose header (`{"name": "…", "arguments":`)
//!   does not come first is buffered to its `</tool_call>` and parsed whole, and if it
//!   is not a call after all its text goes out as content, markup included; a call
//!   the text ends inside of (cut by the budget) is dropped unless it is already whole;
//! - whitespace between content and a call, and after the last call, is dropped; so is
//!   a `<tool_call>` prefix the text ends in after a call (an answer cut by its budget).

use serde_json::Value;

/// Opens a call.
pub const OPEN: &str = "<tool_call>";
/// Closes a call.
pub const CLOSE: &str = "</tool_call>";

/// What a piece of generated text holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    /// Text for `content`.
    Content(String),
    /// Call `index` starts (its name is known).
    CallStart { index: usize, name: String },
    /// More of call `index`'s `arguments` text.
    Arguments { index: usize, text: String },
}

/// Where the parser is.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Content,
    /// After `<tool_call>`, before the name and `"arguments":` are known.
    Header,
    /// Inside the arguments value.
    Arguments(ValueScan),
    /// The arguments value ended: waiting for `</tool_call>`.
    AfterArguments,
    /// A call not in header-first form: buffered to its `</tool_call>`.
    Whole,
}

/// A streaming Hermes parser (one per choice).
#[derive(Debug, Clone)]
pub struct HermesParser {
    mode: Mode,
    /// Text received and not yet decided.
    buf: String,
    /// Content whitespace held back (dropped if a call follows).
    pending_ws: String,
    /// Calls started so far.
    calls: usize,
}

impl Default for HermesParser {
    fn default() -> Self {
        Self::new()
    }
}

impl HermesParser {
    pub fn new() -> Self {
        Self {
            mode: Mode::Content,
            buf: String::new(),
            pending_ws: String::new(),
            calls: 0,
        }
    }

    /// Calls started so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Feeds generated text; returns what can be decided now.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// The text ended: decides everything still held.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        match std::mem::replace(&mut self.mode, Mode::Content) {
            // What is held is a prefix of `<tool_call>`: after calls, a cut call.
            Mode::Content if self.calls > 0 => {}
            Mode::Content => self.content(&rest, false, &mut out),
            // An unclosed call: a call if the text so far is a whole one, else a cut call
            // (its markup is dropped, never content).
            Mode::Header | Mode::Whole => {
                if let Some((name, arguments)) = parse_call(&rest) {
                    self.push_call(name, arguments, &mut out);
                }
            }
            Mode::Arguments(_) | Mode::AfterArguments => {}
        }
        let ws = std::mem::take(&mut self.pending_ws);
        if !ws.is_empty() && self.calls == 0 {
            out.push(ToolEvent::Content(ws));
        }
        out
    }

    /// One move; false when nothing more can be decided without more text.
    fn step(&mut self, out: &mut Vec<ToolEvent>) -> bool {
        match self.mode {
            Mode::Content => self.step_content(out),
            Mode::Header => self.step_header(out),
            Mode::Arguments(_) => self.step_arguments(out),
            Mode::AfterArguments => match self.buf.find(CLOSE) {
                Some(at) => {
                    self.buf.drain(..at + CLOSE.len());
                    self.mode = Mode::Content;
                    true
                }
                None => false,
            },
            Mode::Whole => match self.buf.find(CLOSE) {
                Some(at) => {
                    let body: String = self.buf.drain(..at + CLOSE.len()).collect();
                    self.mode = Mode::Content;
                    self.whole_call(&body[..at], out);
                    true
                }
                None => false,
            },
        }
    }

    fn step_arguments(&mut self, out: &mut Vec<ToolEvent>) -> bool {
        let Mode::Arguments(scan) = &mut self.mode else {
            return false;
        };
        let (used, done) = scan.feed(&self.buf);
        let text: String = self.buf.drain(..used).collect();
        if !text.is_empty() {
            out.push(ToolEvent::Arguments {
                index: self.calls - 1,
                text,
            });
        }
        if done {
            self.mode = Mode::AfterArguments;
        }
        done
    }

    fn step_content(&mut self, out: &mut Vec<ToolEvent>) -> bool {
        if let Some(at) = self.buf.find(OPEN) {
            let before: String = self.buf.drain(..at + OPEN.len()).collect();
            self.content(&before[..at], true, out);
            self.mode = Mode::Header;
            return true;
        }
        let keep = held_prefix(&self.buf);
        let ready: String = self.buf.drain(..self.buf.len() - keep).collect();
        self.content(&ready, false, out);
        false
    }

    fn step_header(&mut self, out: &mut Vec<ToolEvent>) -> bool {
        match header(&self.buf) {
            Header::Need if !self.buf.contains(CLOSE) => false,
            Header::Need | Header::Mismatch => {
                self.mode = Mode::Whole;
                true
            }
            Header::Match { name, consumed } => {
                self.buf.drain(..consumed);
                out.push(ToolEvent::CallStart {
                    index: self.calls,
                    name,
                });
                self.calls += 1;
                self.mode = Mode::Arguments(ValueScan::default());
                true
            }
        }
    }

    /// Emits `text` as content; trailing whitespace waits (dropped when a call follows).
    fn content(&mut self, text: &str, before_call: bool, out: &mut Vec<ToolEvent>) {
        let mut text = std::mem::take(&mut self.pending_ws) + text;
        let body_len = text.trim_end_matches(is_ws_char).len();
        let tail = text.split_off(body_len);
        if !before_call {
            self.pending_ws = tail;
        }
        if !text.is_empty() {
            out.push(ToolEvent::Content(text));
        }
    }

    /// A whole call's events.
    fn push_call(&mut self, name: String, arguments: String, out: &mut Vec<ToolEvent>) {
        let index = self.calls;
        self.calls += 1;
        out.push(ToolEvent::CallStart { index, name });
        out.push(ToolEvent::Arguments {
            index,
            text: arguments,
        });
    }

    /// A closed call given whole (`body` between the tags): a call if it parses as
    /// one, else content with its markup.
    fn whole_call(&mut self, body: &str, out: &mut Vec<ToolEvent>) {
        match parse_call(body) {
            Some((name, arguments)) => self.push_call(name, arguments, out),
            None => {
                let text = format!("{OPEN}{body}{CLOSE}");
                self.content(&text, false, out);
            }
        }
    }
}

/// `{"name": string, "arguments": object | JSON text}` → (name, arguments text).
fn parse_call(body: &str) -> Option<(String, String)> {
    let value: Value = serde_json::from_str(body.trim()).ok()?;
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = match value.get("arguments").or_else(|| value.get("parameters"))? {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    Some((name, arguments))
}

fn is_ws_char(c: char) -> bool {
    matches!(c, ' ' | '\n' | '\r' | '\t')
}

/// Length of the longest suffix of `buf` that is a proper prefix of `OPEN`.
fn held_prefix(buf: &str) -> usize {
    (1..OPEN.len())
        .rev()
        .find(|&n| {
            buf.len() >= n
                && buf.is_char_boundary(buf.len() - n)
                && OPEN.starts_with(&buf[buf.len() - n..])
        })
        .unwrap_or(0)
}

/// How far a call's header has come.
#[derive(Debug, PartialEq)]
enum Header {
    /// Could still be a header: more text needed.
    Need,
    /// Not `{"name": "…", "arguments": ` (the call is parsed whole).
    Mismatch,
    /// The header, up to the first byte of the arguments value.
    Match { name: String, consumed: usize },
}

/// Reads `{"name": "<name>", "arguments": ` at the start of `buf` (JSON whitespace
/// anywhere); a match needs the first byte of the value, so the split of the text
/// never changes where it ends.
fn header(buf: &str) -> Header {
    let b = buf.as_bytes();
    let steps = || -> Result<(String, usize), Header> {
        let mut i = literal(b, ws(b, 0), b"{")?;
        i = literal(b, ws(b, i), b"\"name\"")?;
        i = literal(b, ws(b, i), b":")?;
        let (name, after) = string(buf, ws(b, i))?;
        i = literal(b, ws(b, after), b",")?;
        i = literal(b, ws(b, i), b"\"arguments\"")?;
        i = literal(b, ws(b, i), b":")?;
        i = ws(b, i);
        if i == b.len() {
            return Err(Header::Need);
        }
        Ok((name, i))
    };
    match steps() {
        Ok((name, consumed)) => Header::Match { name, consumed },
        Err(h) => h,
    }
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

fn literal(b: &[u8], i: usize, pat: &[u8]) -> Result<usize, Header> {
    let rest = &b[i.min(b.len())..];
    if rest.starts_with(pat) {
        Ok(i + pat.len())
    } else if pat.starts_with(rest) {
        Err(Header::Need)
    } else {
        Err(Header::Mismatch)
    }
}

/// A JSON string at `i`: its value and the index after its closing quote.
fn string(buf: &str, i: usize) -> Result<(String, usize), Header> {
    let b = buf.as_bytes();
    match b.get(i) {
        None => return Err(Header::Need),
        Some(b'"') => {}
        Some(_) => return Err(Header::Mismatch),
    }
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => {
                return serde_json::from_str(&buf[i..=j])
                    .map(|s| (s, j + 1))
                    .map_err(|_| Header::Mismatch)
            }
            _ => j += 1,
        }
    }
    Err(Header::Need)
}

/// Finds where a JSON value ends, fed the text after the previous feed's end.
#[derive(Debug, Clone, Default, PartialEq)]
struct ValueScan {
    started: bool,
    depth: usize,
    in_string: bool,
    escape: bool,
    /// A bare scalar (number, true, false, null) is being read.
    scalar: bool,
}

impl ValueScan {
    /// Reads `text`; returns the bytes that belong to the value and whether it ended.
    fn feed(&mut self, text: &str) -> (usize, bool) {
        for (at, c) in text.char_indices() {
            let end = at + c.len_utf8();
            if !self.started {
                if is_ws_char(c) {
                    continue;
                }
                self.started = true;
                match c {
                    '{' | '[' => self.depth = 1,
                    '"' => self.in_string = true,
                    _ => self.scalar = true,
                }
                continue;
            }
            if self.scalar {
                if matches!(c, ',' | '}' | ']') || is_ws_char(c) {
                    return (at, true);
                }
                continue;
            }
            if self.in_string {
                match (self.escape, c) {
                    (true, _) => self.escape = false,
                    (false, '\\') => self.escape = true,
                    (false, '"') => {
                        self.in_string = false;
                        if self.depth == 0 {
                            return (end, true);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return (end, true);
                    }
                }
                _ => {}
            }
        }
        (text.len(), false)
    }
}

/// A whole text's content and calls `(name, arguments)`, as the streamed events add up.
pub fn parse_all(text: &str) -> (String, Vec<(String, String)>) {
    let mut parser = HermesParser::new();
    let mut events = parser.push(text);
    events.extend(parser.finish());
    collect(events)
}

/// Adds up events into content and calls.
pub fn collect(events: impl IntoIterator<Item = ToolEvent>) -> (String, Vec<(String, String)>) {
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for event in events {
        match event {
            ToolEvent::Content(text) => content.push_str(&text),
            ToolEvent::CallStart { name, .. } => calls.push((name, String::new())),
            ToolEvent::Arguments { index, text } => {
                if let Some(call) = calls.get_mut(index) {
                    call.1.push_str(&text);
                }
            }
        }
    }
    (content, calls)
}

#[cfg(test)]
#[path = "hermes_tests.rs"]
mod tests;
