//! Graceful shutdown of the real binary: SIGTERM with streams in flight turns `/ready`
//! to 503 and refuses new requests with 503 while the in-flight streams finish normally;
//! the process exits 0. With a short `--shutdown-timeout`, streams still running are
//! ended with an SSE error event and `[DONE]` (never cut off mid-air), and it still
//! exits 0. A proxy's pooled connections, idle when the drain ends, keep the server up:
//! a request on one is refused (nothing started), never cut, and its replay on a new
//! connection finds the listener; the same when SIGTERM comes before the model loaded.
//! Also: `/ready` is 503 and `/health` 200 while the model loads (held in the loading phase by the `HOLD_LOADING_ENV` test hook, so the
//! answer is deterministic).
//! Every wait is for an event; `HANG_GUARD` only bounds a wait that would never end.

mod common;

mod http_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_support::{get, post, read_head, wait_for, SseStream, HANG_GUARD, MODEL};
use serde_json::{json, Value};
use tessera::config::default_model_path;
use tessera::metrics::NUM_REQUESTS_RUNNING;
use tessera::server::gate::NOT_STARTED_HEADER;
use tessera::server::HOLD_LOADING_ENV;

struct Server {
    child: Child,
    addr: SocketAddr,
}

/// Starts `tessera serve` on a free port; returns once it prints its address.
fn start(extra: &[&str]) -> Server {
    start_with_env(extra, &[])
}

/// `start` with extra environment variables for the server.
fn start_with_env(extra: &[&str], env: &[(&str, &Path)]) -> Server {
    let model = default_model_path();
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        model.display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        // The dialog store in a temporary directory, not the working tree.
        .env("TESSERA_DATA_DIR", common::fresh_data_dir("drain"))
        .args([
            "serve",
            "--port",
            "0",
            "--served-model-name",
            MODEL,
            "--max-num-seqs",
            "4",
        ])
        .args(["--kv-cache-memory", "128MiB", "--max-model-len", "2048"])
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or("").to_string();
                    sent = tx.send(addr).is_ok();
                }
            }
            eprintln!("[server] {line}");
        }
    });
    let addr = rx
        .recv_timeout(HANG_GUARD)
        .expect("server prints its address");
    Server {
        child,
        addr: addr.parse().expect("address"),
    }
}

impl Server {
    fn wait_ready(&self) {
        assert!(
            wait_for(HANG_GUARD, || get(self.addr, "/ready").status == 200),
            "never ready"
        );
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The exit code, once the process exits (killed after `HANG_GUARD`).
    fn wait_exit(mut self) -> i32 {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the server did not exit within {HANG_GUARD:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn story(max_tokens: usize) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": max_tokens, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
    })
}

fn open_streams(addr: SocketAddr, count: usize, max_tokens: usize) -> Vec<SseStream> {
    (0..count)
        .map(|_| {
            let mut s = SseStream::open(addr, "/v1/chat/completions", &story(max_tokens));
            assert_eq!(s.status, 200);
            s.next_data().expect("role chunk");
            s
        })
        .collect()
}

#[test]
fn sigterm_drains_in_flight_streams_and_exits_zero() {
    // Long enough streams that they are still running while the checks below talk to
    // the draining server (it exits once they end); the timeout never cuts them.
    const TOKENS: usize = 200;
    let server = start(&["--shutdown-timeout", "600"]);
    server.wait_ready();
    let addr = server.addr;
    let streams = open_streams(addr, 3, TOKENS);
    server.sigterm();
    assert!(
        wait_for(HANG_GUARD, || get(addr, "/ready").status == 503),
        "/ready stays 200"
    );
    let refused = post(addr, "/v1/chat/completions", &story(5));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "shutting_down");
    assert_eq!(
        get(addr, "/health").status,
        200,
        "liveness holds while draining"
    );
    for stream in streams {
        let events = stream.rest();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).expect("usage chunk");
        assert_eq!(
            usage["usage"]["completion_tokens"], TOKENS,
            "the stream ran to its end"
        );
        let finish: Value = serde_json::from_str(&events[events.len() - 3]).expect("finish chunk");
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
    }
    assert_eq!(server.wait_exit(), 0);
}

/// A client connection kept alive between requests, as a proxy's pooled connection is.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
        Self {
            reader: BufReader::new(stream),
        }
    }

    /// Sends one request (no `Connection` header: HTTP/1.1 keeps the connection) and
    /// reads its response: status, header fields, body.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Vec<(String, String)>, Value) {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        if !body.is_empty() {
            head += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        head += "\r\n";
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes()).expect("write head");
        stream.write_all(body.as_bytes()).expect("write body");
        let (status, headers) = read_head(&mut self.reader);
        let length = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .expect("a sized body");
        let mut bytes = vec![0; length];
        self.reader.read_exact(&mut bytes).expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn pooled_connections_idle_when_the_drain_ends_are_answered_not_cut() {
    // A proxy's two pooled connections, idle when SIGTERM comes (no sequence in flight,
    // so the drain's wait for sequences ends at once). While they are open the server
    // stays up: a request sent on one gets the refusal a proxy replays (503, nothing
    // started, that connection closed after it), the replay on a new connection finds
    // the listener and gets the same refusal, and the other pooled connection is
    // answered too. Then the server exits 0.
    let server = start(&[]);
    server.wait_ready();
    let mut pooled: Vec<KeepAlive> = (0..2).map(|_| KeepAlive::open(server.addr)).collect();
    for connection in &mut pooled {
        let (status, headers, _) = connection.send("GET", "/health", None);
        assert_eq!(status, 200);
        assert_ne!(header(&headers, "connection"), Some("close"), "{headers:?}");
    }
    server.sigterm();
    assert!(
        wait_for(HANG_GUARD, || get(server.addr, "/ready").status == 503),
        "/ready stays 200"
    );
    for mut connection in pooled {
        let (status, headers, body) =
            connection.send("POST", "/v1/chat/completions", Some(&story(5)));
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "shutting_down");
        assert_eq!(header(&headers, NOT_STARTED_HEADER), Some("true"));
        assert_eq!(header(&headers, "connection"), Some("close"));
        let replayed = post(server.addr, "/v1/chat/completions", &story(5));
        assert_eq!(replayed.status, 503, "{}", replayed.text());
    }
    assert_eq!(server.wait_exit(), 0);
}

#[test]
fn sigterm_while_loading_answers_pooled_connections_then_exits_zero() {
    // As after a drain: a proxy's pooled connection, idle when SIGTERM comes before the
    // model loaded, gets the refusal a proxy replays, not a cut connection.
    let dir = std::env::temp_dir().join(format!("tessera-drain-hold-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let release = dir.join("never");
    let server = start_with_env(&[], &[(HOLD_LOADING_ENV, &release)]);
    let mut pooled = KeepAlive::open(server.addr);
    let (status, headers, _) = pooled.send("GET", "/health", None);
    assert_eq!(status, 200);
    assert_ne!(header(&headers, "connection"), Some("close"), "{headers:?}");
    server.sigterm();
    assert!(
        wait_for(HANG_GUARD, || {
            get(server.addr, "/ready").json()["error"]["code"] == "shutting_down"
        }),
        "/ready never said shutting_down"
    );
    let (status, headers, body) = pooled.send("POST", "/v1/chat/completions", Some(&story(5)));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down");
    assert_eq!(header(&headers, NOT_STARTED_HEADER), Some("true"));
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert_eq!(server.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn streams_past_the_shutdown_timeout_end_with_an_error_event() {
    const TOKENS: usize = 2000;
    let server = start(&["--shutdown-timeout", "0.5"]);
    server.wait_ready();
    let streams = open_streams(server.addr, 2, TOKENS);
    server.sigterm();
    for stream in streams {
        let events = stream.rest();
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{events:?}"
        );
        let error: Value = serde_json::from_str(&events[events.len() - 2]).expect("error event");
        assert_eq!(error["error"]["code"], "shutting_down", "{error}");
        // Cut by the timeout, not run to its end: fewer tokens than asked for, no finish.
        let chunks: Vec<Value> = events[..events.len() - 2]
            .iter()
            .map(|e| serde_json::from_str(e).expect("chunk"))
            .collect();
        let tokens = chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["content"].is_string())
            .count();
        assert!(tokens < TOKENS, "{tokens} tokens: the stream was not cut");
        assert!(
            chunks
                .iter()
                .all(|c| c["choices"][0]["finish_reason"].is_null()),
            "a cut stream has no finish_reason"
        );
    }
    assert_eq!(server.wait_exit(), 0);
}

#[test]
fn a_request_cut_by_the_shutdown_timeout_is_not_marked_retry_safe() {
    // A non-streamed request has started (it is running) when the shutdown timeout
    // stops the engine under it: 500, never the 503 that a proxy's replay rounds retry
    // on another replica (nginx's `proxy_next_upstream http_503` cannot read
    // X-Tessera-Not-Started per try), and not marked as not started.
    let server = start(&["--shutdown-timeout", "0.5"]);
    server.wait_ready();
    let addr = server.addr;
    let mut body = story(2000);
    body["stream"] = json!(false);
    body.as_object_mut()
        .expect("object")
        .remove("stream_options");
    let request = std::thread::spawn(move || post(addr, "/v1/chat/completions", &body));
    let running = |line: &str| line.starts_with(NUM_REQUESTS_RUNNING) && line.ends_with(" 1");
    assert!(
        wait_for(HANG_GUARD, || get(addr, "/metrics")
            .text()
            .lines()
            .any(running)),
        "the request never ran"
    );
    server.sigterm();
    let cut = request.join().expect("request thread");
    assert_eq!(cut.status, 500, "{}", cut.text());
    assert_eq!(cut.json()["error"]["code"], "shutting_down");
    assert_eq!(cut.header(NOT_STARTED_HEADER), None);
    assert_eq!(server.wait_exit(), 0);
}

#[test]
fn not_ready_while_loading_and_a_missing_model_exits_nonzero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .env("TESSERA_DATA_DIR", common::fresh_data_dir("drain"))
        .args(["serve", "--port", "0", "--model", "/nonexistent/model.gguf"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = child.wait().expect("exits");
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read");
    assert!(
        stderr.contains("/nonexistent/model.gguf") && stderr.contains("not found"),
        "{stderr}"
    );

    // Held in the loading phase until the release file exists.
    let dir = std::env::temp_dir().join(format!("tessera-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let release = dir.join("load");
    let _ = std::fs::remove_file(&release);
    let server = start_with_env(&[], &[(HOLD_LOADING_ENV, &release)]);
    let loading = get(server.addr, "/ready");
    assert_eq!(loading.status, 503, "{}", loading.text());
    assert_eq!(loading.json()["error"]["code"], "model_loading");
    let refused = post(server.addr, "/v1/chat/completions", &story(5));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "model_loading");
    assert_eq!(get(server.addr, "/health").status, 200);
    std::fs::write(&release, b"").expect("release loading");
    server.wait_ready();
    server.sigterm();
    assert_eq!(server.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
