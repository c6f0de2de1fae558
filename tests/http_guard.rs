//! Errors the HTTP layer makes itself, over raw TCP: an over-long URL (414), too many or
//! too large header fields (431), a garbage or malformed head (400), a slow or silent
//! client (408), unknown routes (404), wrong methods (405 with `Allow`) and extractor
//! failures all answer with the OpenAI error body, a request id, and (for refused heads)
//! `Connection: close`. Keep-alive and pipelined requests around them still work,
//! including a chunked body followed by a bad request on the same connection; a chunked
//! body whose framing breaks mid-way gets 400 and the connection ends.

mod http_support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use http_support::{serve, start_engine, MODEL};
use serde_json::Value;
use tessera::config::EngineConfig;
use tessera::server::{ServerConfig, SpawnedServer};

const HEAD_TIMEOUT: Duration = Duration::from_millis(1500);

fn addr() -> SocketAddr {
    static SERVER: OnceLock<SpawnedServer> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let cfg = EngineConfig {
                kv_cache_memory: 64 << 20,
                max_model_len: Some(1024),
                ..EngineConfig::default()
            };
            let server_cfg = ServerConfig {
                request_head_timeout: HEAD_TIMEOUT,
                ..ServerConfig::default()
            };
            serve(start_engine(&cfg), cfg.max_num_seqs, server_cfg)
        })
        .addr
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts `status` and the OpenAI error body; returns the error's `code`.
    fn error_code(&self, status: u16) -> String {
        let text = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{text}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {text:?}"));
        for key in ["message", "type", "param", "code"] {
            assert!(body["error"].get(key).is_some(), "no `{key}` in {body}");
        }
        assert!(self.header("x-request-id").is_some(), "{:?}", self.headers);
        body["error"]["code"].as_str().expect("code").to_string()
    }
}

fn connect() -> TcpStream {
    let stream = TcpStream::connect(addr()).expect("connect");
    // Only a guard against a hang: every read below waits for an event.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream
}

/// One response (the body by `Content-Length`); `None` at the end of the stream.
fn read_reply(reader: &mut impl BufRead) -> Option<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        match line.trim_end().split_once(':') {
            Some((k, v)) => headers.push((k.trim().to_string(), v.trim().to_string())),
            None => break,
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().expect("length"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// Sends `bytes` (the server may stop reading early) and reads the one response.
fn exchange(bytes: &[u8]) -> Reply {
    let mut stream = connect();
    let _ = stream.write_all(bytes);
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader).expect("a response")
}

#[test]
fn oversized_and_malformed_heads_get_openai_errors() {
    let long_url = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(100_000));
    let many: String = (0..500).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let many_headers = format!("GET /health HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nx-big: {}\r\n\r\n",
        "v".repeat(40_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("100 KB URL", long_url.into_bytes(), 414, "uri_too_long"),
        ("500 headers", many_headers.into_bytes(), 431, "request_header_fields_too_large"),
        ("40 KB header", big_header.into_bytes(), 431, "request_header_fields_too_large"),
        ("TLS hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(), 400, "invalid_request"),
        ("garbage line", b"HELLO THERE\r\n\r\n".to_vec(), 400, "invalid_request"),
        ("no Host", b"GET /health HTTP/1.1\r\n\r\n".to_vec(), 400, "invalid_request"),
        (
            "length and chunked",
            b"POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
        ("bad length", b"POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Length: x1\r\n\r\n".to_vec(), 400, "invalid_request"),
        (
            "reserved header",
            b"GET /health HTTP/1.1\r\nHost: t\r\nX-Tessera-Refusal: 200 fine\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
    ];
    for (name, bytes, status, code) in cases {
        let reply = exchange(&bytes);
        assert_eq!(reply.error_code(status), code, "{name}");
        assert_eq!(reply.header("connection"), Some("close"), "{name}");
    }
}

#[test]
fn slow_or_silent_clients_get_408() {
    for partial in [&b""[..], b"GET /health HTTP/1.1\r\nHo"] {
        let mut stream = connect();
        stream.write_all(partial).expect("write");
        let reply = read_reply(&mut BufReader::new(stream)).expect("a response");
        assert_eq!(reply.error_code(408), "request_timeout");
        assert_eq!(reply.header("connection"), Some("close"));
    }
}

#[test]
fn keep_alive_and_pipelined_requests_around_a_refusal() {
    let stream = connect();
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    for path in ["/health", "/version", "/health"] {
        write!(writer, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        let reply = read_reply(&mut reader).expect("keep-alive response");
        assert_eq!(reply.status, 200, "{path}");
    }
    // A chunked body, then (in the same write) a bad request: the guard finds where the
    // body ends, the first request is served, the second refused, then the connection ends.
    let body = format!(r#"{{"model": "{MODEL}", "prompt": "hello world"}}"#);
    let (first, second) = body.split_at(10);
    let pipelined = format!(
        "POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n\
         GET /health HTTP/1.1\r\nHost: t\r\n\r\n\
         BAD\x01REQUEST\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n",
        first.len(),
        second.len()
    );
    writer.write_all(pipelined.as_bytes()).expect("write");
    let tokenized = read_reply(&mut reader).expect("tokenize response");
    assert_eq!(
        tokenized.status,
        200,
        "{}",
        String::from_utf8_lossy(&tokenized.body)
    );
    let tokens: Value = serde_json::from_slice(&tokenized.body).expect("JSON");
    assert!(tokens["count"].as_u64().expect("count") >= 2, "{tokens}");
    assert_eq!(read_reply(&mut reader).expect("health").status, 200);
    let refused = read_reply(&mut reader).expect("refusal");
    assert_eq!(refused.error_code(400), "invalid_request");
    assert!(
        read_reply(&mut reader).is_none(),
        "nothing after the refusal"
    );
}

#[test]
fn a_chunked_body_whose_framing_breaks_gets_400_and_the_connection_ends() {
    let stream = connect();
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    writer
        .write_all(
            b"POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\n{\"pro\r\nzz\r\nmpt\"\r\n",
        )
        .expect("write");
    let reply = read_reply(&mut reader).expect("a response");
    assert_eq!(reply.error_code(400), "invalid_value");
    assert!(read_reply(&mut reader).is_none(), "nothing after it");
}

#[test]
fn unknown_routes_wrong_methods_and_extractor_errors_have_openai_bodies() {
    let get = |method: &str, path: &str| {
        exchange(
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    assert_eq!(get("GET", "/nope").error_code(404), "unknown_route");
    let wrong = get("POST", "/health");
    assert_eq!(wrong.error_code(405), "method_not_allowed");
    assert_eq!(wrong.header("allow"), Some("GET"));
    let wrong = get("DELETE", "/v1/chat/completions");
    assert_eq!(wrong.error_code(405), "method_not_allowed");
    assert_eq!(wrong.header("allow"), Some("POST"));
    // Not UTF-8 once decoded: actix's path extractor refuses it (with plain text, before).
    let bad_segment = get("GET", "/v1/models/%FF%FE");
    assert!(bad_segment.status >= 400, "{bad_segment:?}");
    bad_segment.error_code(bad_segment.status);
}
