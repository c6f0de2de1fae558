//! Helpers for the HTTP integration tests: a minimal HTTP/1.1 client over `TcpStream`
//! (plain and chunked bodies, incremental SSE reading, abrupt disconnects) and an
//! in-process server over the default model. No network beyond loopback.

#![allow(dead_code)]

pub mod schema;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera::config::{default_model_path, EngineConfig};
use tessera::engine::handle::{self, EngineHandle};
use tessera::server::{spawn, ServerConfig, SpawnedServer};

/// The name the default model is served under in these tests.
pub const MODEL: &str = "smol";

/// A question with a known greedy answer through `chatml` ("The capital of France is Paris.").
pub const FRANCE: &str = "What is the capital of France?";

/// SmolLM2's ChatML prompt for a user question (no default system prompt).
pub fn chatml(question: &str) -> String {
    format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
}

/// Loads the default model and starts an engine (fails with the fix when not fetched).
pub fn start_engine(cfg: &EngineConfig) -> EngineHandle {
    let path = default_model_path();
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        path.display()
    );
    let loaded = tessera::model::load(&path, cfg.max_model_len, |_, _| {}).expect("model loads");
    handle::start(loaded, cfg).expect("engine starts")
}

/// Serves `engine` on an ephemeral loopback port under the name `MODEL`.
pub fn serve(engine: EngineHandle, max_num_seqs: usize, cfg: ServerConfig) -> SpawnedServer {
    let cfg = ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        served_model_names: vec![MODEL.into()],
        ..cfg
    };
    spawn(engine, max_num_seqs, cfg).expect("server starts")
}

/// How long a test waits for an event before it calls it a hang. Tests wait for events
/// (a state, a metric, a message), never for a time: this only bounds a wait that would
/// otherwise never end, so it is generous enough for a loaded CI machine.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// Polls `cond` for up to `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// The `data:` payloads of an SSE body, in order (comments skipped).
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: ").map(str::to_string))
            .collect()
    }
}

fn write_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    if let Some(body) = body {
        stream.write_all(body).expect("write body");
    }
}

/// A response's status and header fields (names as sent), read up to the blank line.
pub fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            return (status, headers);
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
    stream
}

/// One request on a fresh connection; reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut stream = connect(addr);
    write_request(&mut stream, method, path, headers, body);
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        Chunked::new(reader)
            .read_to_end(&mut body)
            .expect("chunked body");
    } else {
        reader.read_to_end(&mut body).expect("body");
    }
    Response {
        status,
        headers,
        body,
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], None)
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Response {
    request(addr, "POST", path, &[], Some(body.to_string().as_bytes()))
}

/// Decodes a chunked transfer-encoded body.
pub struct Chunked<R> {
    inner: R,
    left_in_chunk: usize,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            left_in_chunk: 0,
            done: false,
        }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left_in_chunk == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.is_empty() {
                self.done = true;
                return Ok(0);
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| std::io::Error::other(format!("chunk size {line:?}: {e}")))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left_in_chunk = size;
        }
        let want = buf.len().min(self.left_in_chunk);
        let n = self.inner.read(&mut buf[..want])?;
        self.left_in_chunk -= n;
        if self.left_in_chunk == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

/// An SSE response read event by event.
pub struct SseStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<Chunked<BufReader<TcpStream>>>,
}

/// One SSE event: a `data:` payload or a `:` comment.
#[derive(Debug, Clone, PartialEq)]
pub enum SseEvent {
    Data(String),
    Comment(String),
}

impl SseStream {
    pub fn open(addr: SocketAddr, path: &str, body: &Value) -> Self {
        Self::open_with(addr, path, &[], body)
    }

    pub fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Self {
        let mut stream = connect(addr);
        write_request(
            &mut stream,
            "POST",
            path,
            headers,
            Some(body.to_string().as_bytes()),
        );
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        Self {
            status,
            headers,
            reader: BufReader::new(Chunked::new(reader)),
        }
    }

    /// The next event; `None` at the end of the body.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let mut event = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).ok()?;
            if n == 0 {
                return None;
            }
            if line == "\n" {
                if event.is_empty() {
                    continue;
                }
                return Some(if let Some(data) = event.strip_prefix("data: ") {
                    SseEvent::Data(data.trim_end().to_string())
                } else {
                    SseEvent::Comment(event.trim_end().to_string())
                });
            }
            event.push_str(&line);
        }
    }

    /// The next `data:` payload (comments skipped).
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            match self.next_event()? {
                SseEvent::Data(d) => return Some(d),
                SseEvent::Comment(_) => continue,
            }
        }
    }

    /// Every remaining `data:` payload.
    pub fn rest(mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_data()).collect()
    }

    /// Closes the connection abruptly (the client goes away).
    pub fn disconnect(self) {
        let stream = self.reader.into_inner().inner.into_inner();
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The JSON of every typed event of a Responses stream (`event: <type>` + `data:`),
/// checking that each event's `type` is its name.
pub fn typed_events(mut stream: SseStream) -> Vec<Value> {
    assert_eq!(stream.status, 200);
    let mut out = Vec::new();
    while let Some(event) = stream.next_event() {
        let text = match event {
            SseEvent::Comment(text) | SseEvent::Data(text) => text,
        };
        let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue; // keep-alive
        };
        let kind = text
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .expect("event line");
        let value: Value = serde_json::from_str(data).expect("event JSON");
        assert_eq!(value["type"], kind);
        out.push(value);
    }
    out
}

/// Joins the content of a chat or completion SSE stream, per choice index.
pub fn joined_text(events: &[String], choices: usize) -> Vec<String> {
    let mut texts = vec![String::new(); choices];
    for data in events.iter().filter(|d| d.as_str() != "[DONE]") {
        let chunk: Value = serde_json::from_str(data).expect("chunk is JSON");
        for choice in chunk["choices"].as_array().expect("choices") {
            let i = choice["index"].as_u64().expect("index") as usize;
            let piece = choice["delta"]["content"]
                .as_str()
                .or(choice["text"].as_str())
                .unwrap_or("");
            texts[i].push_str(piece);
        }
    }
    texts
}

/// A greedy completion request for the France question, with `extra` fields.
pub fn completion(extra: Value) -> Value {
    let mut body =
        json!({"model": MODEL, "prompt": chatml(FRANCE), "temperature": 0, "max_tokens": 16});
    merge(&mut body, extra);
    body
}

/// A chat request for the France question, with `extra` fields.
pub fn chat(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": FRANCE}], "max_tokens": 12});
    merge(&mut body, extra);
    body
}

/// Sets every field of `extra` on `body`.
pub fn merge(body: &mut Value, extra: Value) {
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        body[k] = v;
    }
}

/// Asserts 200 and returns the JSON body.
pub fn ok(res: Response) -> Value {
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()
}

/// Asserts `status` and an OpenAI error body; returns its `error` object.
pub fn error_of(res: &Response, status: u16) -> Value {
    assert_eq!(res.status, status, "{}", res.text());
    let body = res.json();
    let err = &body["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(err.get(key).is_some(), "error body lacks `{key}`: {body}");
    }
    err.clone()
}

/// A new exchange in `server`'s conversation log: a stored response made with the
/// `Authorization` value `auth`, written (the log flushed); its exchange id and thread id
/// (for the admin routes that take them).
pub fn logged_exchange(server: &SpawnedServer, auth: &str) -> (String, String) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let request_id = format!("logged-exchange-{n}");
    let body = json!({"model": MODEL, "input": "Hi", "max_output_tokens": 2}).to_string();
    let headers = [
        ("Authorization", auth),
        ("X-Request-Id", request_id.as_str()),
    ];
    let res = request(
        server.addr,
        "POST",
        "/v1/responses",
        &headers,
        Some(body.as_bytes()),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let log = server.state.audit().expect("the log is on");
    log.flush(HANG_GUARD).expect("the log is written");
    let all = log
        .pool()
        .run_blocking(|s| {
            s.export_audit(
                i64::MIN,
                i64::MAX,
                &tessera::store::Cursor::start(),
                100_000,
            )
        })
        .expect("the log is readable");
    let logged = all
        .into_iter()
        .find(|e| e.record.request_id == request_id)
        .expect("the response is logged");
    let thread = logged.record.thread_id.unwrap_or_default();
    (logged.record.id, thread)
}
