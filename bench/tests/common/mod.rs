//! A tiny OpenAI-compatible mock server on a loopback port (std::net, a thread per
//! connection) for the harness's integration tests: no network, no model. It streams
//! `max_tokens` chunks per request (one "token" per word of its made-up output), splits
//! SSE events across HTTP chunks, sends keep-alive comments, reports usage, and can refuse
//! token-id prompts, fail every n-th request mid-stream, or frame bodies by closing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

#[derive(Clone)]
pub struct MockConfig {
    pub accept_token_ids: bool,
    /// Chunked transfer encoding (else: no length, the connection's close ends the body).
    pub chunked: bool,
    /// Every n-th streamed request fails with an error event after one token (0: never).
    pub error_every: usize,
    pub token_delay: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            accept_token_ids: true,
            chunked: true,
            error_every: 0,
            token_delay: Duration::from_millis(1),
        }
    }
}

pub struct Mock {
    pub url: String,
    /// (path, body) of every POST, in arrival order.
    pub seen: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Mock {
    pub fn start(cfg: MockConfig) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let streamed = Arc::new(AtomicUsize::new(0));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (cfg, seen, streamed) = (cfg.clone(), seen2.clone(), streamed.clone());
                thread::spawn(move || {
                    let _ = handle(conn, &cfg, &seen, &streamed);
                });
            }
        });
        Mock {
            url: format!("http://127.0.0.1:{port}"),
            seen,
            stop,
            port,
        }
    }

    pub fn posts(&self, path: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
    }
}

fn handle(
    conn: TcpStream,
    cfg: &MockConfig,
    seen: &Mutex<Vec<(String, Value)>>,
    streamed: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut out = conn;
    match (method.as_str(), path.as_str()) {
        ("GET", "/health") => respond_json(&mut out, 200, &json!({"status": "ok"})),
        ("GET", "/v1/models") => respond_json(
            &mut out,
            200,
            &json!({"object": "list", "data": [{"id": "mock-model"}]}),
        ),
        ("POST", "/tokenize") => {
            seen.lock().unwrap().push((path.clone(), body.clone()));
            let text = body.get("content").and_then(Value::as_str).unwrap_or("");
            let tokens: Vec<usize> = text
                .split_whitespace()
                .enumerate()
                .map(|(i, _)| i)
                .collect();
            respond_json(&mut out, 200, &json!({"tokens": tokens}))
        }
        ("POST", "/v1/completions") | ("POST", "/v1/chat/completions") => {
            seen.lock().unwrap().push((path.clone(), body.clone()));
            completion(&mut out, cfg, &path, &body, streamed)
        }
        _ => respond_json(&mut out, 404, &json!({"error": {"message": "no route"}})),
    }
}

fn respond_json(out: &mut TcpStream, status: u16, v: &Value) -> std::io::Result<()> {
    let body = v.to_string();
    write!(out, "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

/// Prompt length as the mock counts it: ids, or words of the text / of all messages.
fn prompt_tokens(body: &Value) -> usize {
    let words = |v: &Value| v.as_str().map_or(0, |s| s.split_whitespace().count());
    match (body.get("prompt"), body.get("messages")) {
        (Some(Value::Array(ids)), _) => ids.len(),
        (Some(text), _) => words(text),
        (None, Some(Value::Array(msgs))) => msgs.iter().map(|m| words(&m["content"])).sum(),
        _ => 0,
    }
}

fn completion(
    out: &mut TcpStream,
    cfg: &MockConfig,
    path: &str,
    body: &Value,
    streamed: &AtomicUsize,
) -> std::io::Result<()> {
    if body.get("prompt").is_some_and(Value::is_array) && !cfg.accept_token_ids {
        return respond_json(
            out,
            400,
            &json!({"error": {"message": "prompt must be a string"}}),
        );
    }
    let max_tokens = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(16) as usize;
    if !body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        return respond_json(
            out,
            200,
            &json!({"choices": [{"text": "x", "finish_reason": "length"}]}),
        );
    }
    let n = streamed.fetch_add(1, Ordering::SeqCst) + 1;
    let fail = cfg.error_every > 0 && n.is_multiple_of(cfg.error_every);
    let head = if cfg.chunked {
        "Transfer-Encoding: chunked\r\n"
    } else {
        "Connection: close\r\n"
    };
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{head}\r\n"
    )?;
    let mut sse = Sse {
        out,
        chunked: cfg.chunked,
    };
    sse.send(b": keep-alive\n\n")?;
    let chat = path.ends_with("chat/completions");
    if chat {
        sse.send(
            format!(
                "data: {}\n\n",
                json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
            )
            .as_bytes(),
        )?;
    }
    for i in 0..max_tokens {
        thread::sleep(cfg.token_delay);
        if fail && i == 1 {
            sse.send(b"data: {\"error\":{\"message\":\"mock failure\"}}\n\n")?;
            return sse.finish();
        }
        let text = format!(" w{i}");
        let finish = if i + 1 == max_tokens {
            json!("length")
        } else {
            Value::Null
        };
        let choice = if chat {
            json!({"index": 0, "delta": {"content": text}, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text, "finish_reason": finish})
        };
        sse.send(format!("data: {}\r\n\r\n", json!({"choices": [choice]})).as_bytes())?;
    }
    let usage = json!({"prompt_tokens": prompt_tokens(body), "completion_tokens": max_tokens});
    sse.send(
        format!(
            "data: {}\n\ndata: [DONE]\n\n",
            json!({"choices": [], "usage": usage})
        )
        .as_bytes(),
    )?;
    sse.finish()
}

/// The body of an event stream: chunked (every piece split across two HTTP chunks,
/// mid-event) or raw until close.
struct Sse<'a> {
    out: &'a mut TcpStream,
    chunked: bool,
}

impl Sse<'_> {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.chunked {
            let (a, b) = bytes.split_at(bytes.len() / 2);
            for part in [a, b] {
                write!(self.out, "{:x}\r\n", part.len())?;
                self.out.write_all(part)?;
                self.out.write_all(b"\r\n")?;
            }
        } else {
            self.out.write_all(bytes)?;
        }
        self.out.flush()
    }

    fn finish(self) -> std::io::Result<()> {
        if self.chunked {
            self.out.write_all(b"0\r\n\r\n")?;
        }
        Ok(())
    }
}
