//! The per-request log line of the real binary: with `--log-format json` one JSON object
//! per line whose `tessera::request` line names the request id, model, token counts,
//! cached tokens, TTFT, e2e, finish reason and status; prompt and output text only with
//! `--log-requests`; a client that leaves is logged with status 499. The text format
//! carries the same fields.

mod common;
mod http_support;
mod metrics_support;

use std::time::Duration;

use http_support::{chatml, request, SseStream, FRANCE};
use metrics_support::Tessera;
use serde_json::{json, Value};

const LINE_WAIT: Duration = Duration::from_secs(30);

fn completion_with_id(server: &Tessera, id: &str, extra: Value) -> Value {
    let mut body =
        json!({"model": "smol", "prompt": chatml(FRANCE), "temperature": 0, "max_tokens": 8});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        body[k] = v;
    }
    let res = request(
        server.addr,
        "POST",
        "/v1/completions",
        &[("X-Request-Id", id)],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()
}

/// The JSON request line of request `id`.
fn request_line(server: &Tessera, id: &str) -> Value {
    let needle = format!("\"request_id\":\"{id}\"");
    let line = server
        .wait_line(LINE_WAIT, |l| {
            l.contains(&needle) && l.contains("\"tessera::request\"")
        })
        .unwrap_or_else(|| panic!("no request line for {id}"));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn json_lines_describe_each_finished_request_without_text() {
    let server = Tessera::start(&["--log-format", "json", "--served-model-name", "smol"]);
    let body = completion_with_id(&server, "log-json-1", json!({}));
    let line = request_line(&server, "log-json-1");
    assert_eq!(line["message"], "request finished", "{line}");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["model"], "smol");
    assert_eq!(line["status"], 200);
    assert_eq!(line["finish_reason"], body["choices"][0]["finish_reason"]);
    let usage = &body["usage"];
    assert_eq!(line["prompt_tokens"], usage["prompt_tokens"]);
    assert_eq!(line["generation_tokens"], usage["completion_tokens"]);
    assert_eq!(line["cached_tokens"], 0);
    let ttft = line["ttft_ms"].as_f64().expect("ttft_ms is a number");
    let e2e = line["e2e_ms"].as_f64().expect("e2e_ms is a number");
    assert!(ttft > 0.0 && ttft <= e2e, "{line}");
    assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(
        line.get("prompt").is_none() && line.get("output").is_none(),
        "{line}"
    );

    // A prompt of several blocks, twice: the second is served from the prefix cache.
    let long = json!({"prompt": chatml(&[FRANCE; 6].join(" "))});
    completion_with_id(&server, "log-json-2", long.clone());
    let first = request_line(&server, "log-json-2");
    assert_eq!(first["cached_tokens"], 0, "{first}");
    completion_with_id(&server, "log-json-3", long);
    let cached = request_line(&server, "log-json-3");
    assert!(
        cached["cached_tokens"].as_u64().is_some_and(|c| c > 0),
        "{cached}"
    );

    // A client that leaves after its first token: status 499, no finish reason.
    let body = json!({"model": "smol", "prompt": chatml(FRANCE), "max_tokens": 200,
                      "ignore_eos": true, "stream": true});
    let mut stream = SseStream::open_with(
        server.addr,
        "/v1/completions",
        &[("X-Request-Id", "gone-1")],
        &body,
    );
    assert!(stream.next_data().is_some());
    stream.disconnect();
    let gone = request_line(&server, "gone-1");
    assert_eq!(gone["status"], 499, "{gone}");
    assert_eq!(gone["finish_reason"], "", "{gone}");
    assert!(gone["generation_tokens"].as_u64().is_some_and(|n| n < 200));
}

#[test]
fn log_requests_adds_prompt_and_output_text() {
    let server = Tessera::start(&[
        "--log-format",
        "json",
        "--log-requests",
        "--served-model-name",
        "smol",
    ]);
    let body = completion_with_id(&server, "log-text-1", json!({}));
    let line = request_line(&server, "log-text-1");
    assert_eq!(line["prompt"], chatml(FRANCE), "{line}");
    assert_eq!(line["output"], body["choices"][0]["text"], "{line}");
    assert_eq!(line["model"], "smol");
}

#[test]
fn text_format_carries_the_same_fields() {
    let server = Tessera::start(&["--served-model-name", "smol"]);
    completion_with_id(&server, "log-plain-1", json!({"ignore_eos": true}));
    let line = server
        .wait_line(LINE_WAIT, |l| {
            l.contains("request_id=log-plain-1") && l.contains("request finished")
        })
        .expect("a text request line");
    for field in [
        "prompt_tokens=",
        "generation_tokens=8",
        "cached_tokens=",
        "ttft_ms=",
        "e2e_ms=",
        "finish_reason=length",
        "status=200",
    ] {
        assert!(line.contains(field), "`{field}` missing in {line}");
    }
    assert!(!line.contains("output="), "{line}");
    assert!(!line.trim_start().starts_with('{'), "{line}");
}
