//! Graceful shutdown of the real binary: SIGTERM with streams in flight turns `/ready`
//! to 503 and refuses new requests with 503 while the in-flight streams finish normally;
//! the process exits 0. With a short `--shutdown-timeout`, streams still running are
//! ended with an SSE error event and `[DONE]` (never cut off mid-air), and it still
//! exits 0. Also: `/ready` is 503 and `/health` 200 while the model loads.

mod http_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_support::{get, post, wait_for, SseStream, MODEL};
use serde_json::{json, Value};
use tessera::config::default_model_path;

struct Server {
    child: Child,
    addr: SocketAddr,
}

/// Starts `tessera serve` on a free port; returns once it prints its address.
fn start(extra: &[&str]) -> Server {
    let model = default_model_path();
    assert!(
        model.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        model.display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        // The dialog store in a temporary directory, not the working tree.
        .env(
            "TESSERA_DATA_DIR",
            std::env::temp_dir().join(format!("tessera-drain-{}", std::process::id())),
        )
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
        .recv_timeout(Duration::from_secs(30))
        .expect("server prints its address");
    Server {
        child,
        addr: addr.parse().expect("address"),
    }
}

impl Server {
    fn wait_ready(&self) {
        assert!(
            wait_for(Duration::from_secs(60), || get(self.addr, "/ready").status
                == 200),
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

    fn wait_exit(mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the server did not exit within {limit:?}");
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
    let server = start(&["--shutdown-timeout", "60"]);
    server.wait_ready();
    let addr = server.addr;
    let streams = open_streams(addr, 3, 60);
    server.sigterm();
    assert!(
        wait_for(Duration::from_secs(5), || get(addr, "/ready").status == 503),
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
            usage["usage"]["completion_tokens"], 60,
            "the stream ran to its end"
        );
        let finish: Value = serde_json::from_str(&events[events.len() - 3]).expect("finish chunk");
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
    }
    assert_eq!(server.wait_exit(Duration::from_secs(20)), 0);
}

#[test]
fn streams_past_the_shutdown_timeout_end_with_an_error_event() {
    let server = start(&["--shutdown-timeout", "0.5"]);
    server.wait_ready();
    let streams = open_streams(server.addr, 2, 2000);
    let started = Instant::now();
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
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(server.wait_exit(Duration::from_secs(20)), 0);
}

#[test]
fn not_ready_while_loading_and_a_missing_model_exits_nonzero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .env(
            "TESSERA_DATA_DIR",
            std::env::temp_dir().join(format!("tessera-drain-{}", std::process::id())),
        )
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

    let server = start(&[]);
    let early = get(server.addr, "/ready").status;
    assert!(early == 503 || early == 200, "{early}");
    assert_eq!(get(server.addr, "/health").status, 200);
    server.wait_ready();
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(20)), 0);
}
