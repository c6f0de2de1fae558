//! Chat templates that do not end, with the real binary and a fixture GGUF whose
//! `tokenizer.chat_template` is rewritten here (a small GGUF metadata rewriter below):
//! - the template (two nested loops of 99,999) fails at start, exit 1, with a
//!   message that names the chat template and its budget;
//! - a template that passes the start-up probe but takes minutes on one conversation
//!   (within its instruction budget: each instruction upper-cases 20 MB) leaves
//!   `/health` answering while it runs, and SIGTERM ends the process within
//!   `--shutdown-timeout` plus the fixed grace, whatever the render is doing;
//! - a server whose log reader has gone (stderr a pipe nobody reads any more: a log
//!   collector that died) keeps answering, and SIGTERM still stops it cleanly.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const FIXTURE: &str = "tests/fixtures/qwen2-tiny-tied-q4_k_m.gguf";
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The fixture with `template` as its chat template, written under the target dir.
fn model_with_template(name: &str, template: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let bytes = std::fs::read(&source).expect("fixture");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("http_hardstop");
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(
        &path,
        gguf::with_string(&bytes, "tokenizer.chat_template", template),
    )
    .expect("write model");
    path
}

/// A running `tessera serve` and its log lines.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Receiver<String>,
}

fn start(model: &Path, extra: &[&str]) -> Server {
    let mut child = spawn_serve(model, extra);
    let stderr = child.stderr.take().expect("stderr");
    let (tx, log) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[server] {line}");
            let _ = tx.send(line);
        }
    });
    let line = wait_for_line(&log, "listening on http://");
    Server {
        addr: address_in(&line),
        child,
        log,
    }
}

/// `tessera serve` of `model` on a free port, its log (stderr) a pipe.
fn spawn_serve(model: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "serve",
            "--port",
            "0",
            "--served-model-name",
            "tiny",
            "--model",
        ])
        .arg(model)
        .args(["--kv-cache-memory", "16MiB", "--max-model-len", "512"])
        .args(extra)
        .env("TESSERA_DATA_DIR", common::fresh_data_dir("hardstop"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera serve")
}

/// The address in the server's `listening on http://…` line.
fn address_in(line: &str) -> SocketAddr {
    let addr = line
        .split("listening on http://")
        .nth(1)
        .and_then(|a| a.split_whitespace().next());
    addr.expect("address").parse().expect("address")
}

/// Waits for a log line containing `needle` (the guard only stops a hang).
fn wait_for_line(log: &Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    }
}

/// One request; the status and body (`None` when the connection ends without an answer).
fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(600)))
        .expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(body.as_bytes()).expect("write");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}

fn chat(content: &str) -> String {
    serde_json::json!({"model": "tiny", "max_tokens": 2,
        "messages": [{"role": "user", "content": content}]})
    .to_string()
}

/// Sends SIGTERM to the server.
fn sigterm(child: &Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
}

fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_endless_template_fails_at_start_with_a_clear_message() {
    let endless = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}";
    let model = model_with_template("endless", endless);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--port", "0", "--model"])
        .arg(&model)
        .env("TESSERA_DATA_DIR", common::fresh_data_dir("hardstop"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(120)),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("chat template") && stderr.contains("budget"),
        "{stderr}"
    );
}

#[test]
fn sigterm_ends_the_process_while_a_render_is_stuck() {
    let stall = format!(
        "{{% if messages[-1]['content'] == 'stall' %}}{{% set s = 'x' * 20000000 %}}\
         {{% for i in range(90000) %}}{{% set t = s | upper %}}{{% endfor %}}{{% endif %}}{CHATML}"
    );
    let model = model_with_template("stall", &stall);
    let mut server = start(&model, &["--shutdown-timeout", "1"]);
    wait_for_line(&server.log, "ready");
    let normal = call(server.addr, "POST", "/v1/chat/completions", &chat("hi"));
    assert_eq!(normal.as_ref().map(|r| r.0), Some(200), "{normal:?}");

    let addr = server.addr;
    let stuck =
        std::thread::spawn(move || call(addr, "POST", "/v1/chat/completions", &chat("stall")));
    wait_for_line(&server.log, "is still running");
    let health = call(server.addr, "GET", "/health", "");
    assert_eq!(
        health.map(|r| r.0),
        Some(200),
        "/health while a render is stuck"
    );
    assert!(!stuck.is_finished());

    let sent = Instant::now();
    sigterm(&server.child);
    // --shutdown-timeout 1 + 2 s for aborted streams + 3 s to stop: the hard deadline
    // is 6 s; the guard allows for a slow machine.
    let code = wait_exit(&mut server.child, Duration::from_secs(30));
    eprintln!("exited with {code} {:?} after SIGTERM", sent.elapsed());
    assert!(code == 0 || code == 1, "exit code {code}");
    let answer = stuck.join().expect("stuck request");
    assert!(
        answer.as_ref().is_none_or(|(status, _)| *status >= 500),
        "{answer:?}"
    );
}

#[test]
fn a_server_whose_log_reader_is_gone_answers_and_stops() {
    let mut child = Reaped(spawn_serve(&model_with_template("chatml", CHATML), &[]));
    let child = &mut child.0;
    let mut log = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let mut addr = None;
    while !line.contains(" ready models=") {
        line.clear();
        assert!(log.read_line(&mut line).expect("log") > 0, "the log ended");
        if line.contains("listening on http://") {
            addr = Some(address_in(&line));
        }
    }
    drop(log); // the reader is gone: every later log write fails (EPIPE)
    let addr = addr.expect("a listening line before ready");
    for _ in 0..3 {
        let answer = call(addr, "POST", "/v1/chat/completions", &chat("hi"));
        assert_eq!(answer.as_ref().map(|r| r.0), Some(200), "{answer:?}");
    }
    sigterm(child);
    // Nothing in flight: the drain ends at once; the guard only stops a hang.
    assert_eq!(wait_exit(child, Duration::from_secs(60)), 0);
}

/// A child process killed when the test ends, whatever its outcome (a failed test
/// leaves no server behind).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rewrites one string value of a GGUF file's metadata (the tensor data moves with the
/// metadata's new length, to the file's alignment).
mod gguf {
    const STRING: u32 = 8;
    const ARRAY: u32 = 9;

    struct Reader<'a> {
        bytes: &'a [u8],
        pos: usize,
    }

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> &[u8] {
            let out = &self.bytes[self.pos..self.pos + n];
            self.pos += n;
            out
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
        }
        fn u64(&mut self) -> u64 {
            u64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
        }
        fn string(&mut self) -> String {
            let len = self.u64() as usize;
            String::from_utf8_lossy(self.take(len)).into_owned()
        }
        fn skip_value(&mut self, kind: u32) {
            match kind {
                0 | 1 | 7 => self.pos += 1,
                2 | 3 => self.pos += 2,
                4..=6 => self.pos += 4,
                10..=12 => self.pos += 8,
                STRING => {
                    self.string();
                }
                ARRAY => {
                    let (inner, count) = (self.u32(), self.u64());
                    (0..count).for_each(|_| self.skip_value(inner));
                }
                other => panic!("unknown GGUF value type {other}"),
            }
        }
    }

    fn put_string(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }

    /// `file` with the metadata string `key` set to `value` (added when missing).
    pub fn with_string(file: &[u8], key: &str, value: &str) -> Vec<u8> {
        let mut r = Reader {
            bytes: file,
            pos: 0,
        };
        assert_eq!(r.take(4), b"GGUF");
        r.u32();
        let (tensors, kvs) = (r.u64(), r.u64());
        let mut out = file[..r.pos].to_vec();
        let (mut found, mut alignment) = (false, 32u64);
        for _ in 0..kvs {
            let start = r.pos;
            let name = r.string();
            let kind = r.u32();
            let value_at = r.pos;
            if name == "general.alignment" {
                alignment = u64::from(r.u32());
                r.pos = value_at;
            }
            r.skip_value(kind);
            if name == key {
                out.extend_from_slice(&file[start..value_at]);
                put_string(&mut out, value);
                found = true;
            } else {
                out.extend_from_slice(&file[start..r.pos]);
            }
        }
        if !found {
            put_string(&mut out, key);
            out.extend_from_slice(&STRING.to_le_bytes());
            put_string(&mut out, value);
            out[16..24].copy_from_slice(&(kvs + 1).to_le_bytes());
        }
        let infos = r.pos;
        for _ in 0..tensors {
            r.string();
            let dims = r.u32() as usize;
            r.pos += 8 * dims + 4 + 8;
        }
        out.extend_from_slice(&file[infos..r.pos]);
        let align = |n: usize| n.div_ceil(alignment as usize) * alignment as usize;
        let data = align(r.pos);
        out.resize(align(out.len()), 0);
        out.extend_from_slice(&file[data..]);
        out
    }
}
