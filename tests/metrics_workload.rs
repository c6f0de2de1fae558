//! The values at `/metrics` after a known workload over real HTTP: token counters,
//! successes by finish reason, failures by reason (validation, 429, client gone), every
//! request histogram counting exactly the finished sequences, HTTP series by route
//! pattern and status, build info, and the vLLM copies under `--metrics-compat vllm`.

mod common;
mod http_support;
mod metrics_support;

use std::time::Duration;

use http_support::{chat, completion, get, post, serve, start_engine, wait_for, SseStream};
use metrics_support::{parse, sum, value, Sample};
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::metrics::*;
use tessera::server::ServerConfig;

const MAX_NUM_SEQS: usize = 4;

/// Prompt and generated tokens of one finished sequence.
#[derive(Debug, Clone, Copy)]
struct Seq {
    prompt: u64,
    generated: u64,
}

fn scrape(addr: std::net::SocketAddr) -> Vec<Sample> {
    let res = get(addr, "/metrics");
    assert_eq!(res.status, 200, "{}", res.text());
    parse(&res.text())
}

/// Non-streamed: one `Seq` per choice (`n` choices of one prompt).
fn collect(addr: std::net::SocketAddr, body: &Value, n: usize) -> Vec<Seq> {
    let res = post(addr, "/v1/completions", body);
    assert_eq!(res.status, 200, "{}", res.text());
    let json = res.json();
    let prompt = json["usage"]["prompt_tokens"].as_u64().expect("usage");
    let total = json["usage"]["completion_tokens"].as_u64().expect("usage");
    for choice in json["choices"].as_array().expect("choices") {
        assert_eq!(choice["finish_reason"], "length", "{json}");
    }
    (0..n)
        .map(|_| Seq {
            prompt,
            generated: total / n as u64,
        })
        .collect()
}

/// Streams a chat request to the end; its `Seq` from the usage chunk.
fn stream_to_end(stream: SseStream) -> Seq {
    assert_eq!(stream.status, 200);
    let events = stream.rest();
    let usage = events
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).expect("chunk"))
        .find(|c| c["usage"].is_object())
        .expect("usage chunk");
    Seq {
        prompt: usage["usage"]["prompt_tokens"].as_u64().expect("usage"),
        generated: usage["usage"]["completion_tokens"].as_u64().expect("usage"),
    }
}

fn streamed_chat(max_tokens: usize) -> Value {
    chat(
        json!({"max_tokens": max_tokens, "ignore_eos": true, "stream": true,
                "stream_options": {"include_usage": true}}),
    )
}

#[test]
fn a_known_workload_shows_up_exactly_in_the_metrics() {
    let engine = start_engine(&EngineConfig {
        max_num_seqs: MAX_NUM_SEQS,
        kv_cache_memory: 128 << 20,
        max_model_len: Some(2048),
        ..EngineConfig::default()
    });
    let cfg = ServerConfig {
        max_queued_requests: 0,
        metrics_compat: MetricsCompat::Vllm,
        ..ServerConfig::default()
    };
    let server = serve(engine, MAX_NUM_SEQS, cfg);
    let addr = server.addr;
    let mut done: Vec<Seq> = Vec::new();

    // Successes: three completions, one completion with n = 2, two streamed chats.
    for max_tokens in [3, 5, 8] {
        let body = completion(json!({"max_tokens": max_tokens, "ignore_eos": true}));
        done.extend(collect(addr, &body, 1));
    }
    let body = completion(json!({"max_tokens": 4, "ignore_eos": true, "n": 2}));
    done.extend(collect(addr, &body, 2));
    for max_tokens in [2, 6] {
        done.push(stream_to_end(SseStream::open(
            addr,
            "/v1/chat/completions",
            &streamed_chat(max_tokens),
        )));
    }

    // Validation failures: a bad field (400) and an unknown model (404).
    let bad = post(
        addr,
        "/v1/completions",
        &completion(json!({"temperature": -1})),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    let unknown = post(
        addr,
        "/v1/chat/completions",
        &chat(json!({"model": "nope"})),
    );
    assert_eq!(unknown.status, 404, "{}", unknown.text());

    // Fill the server (capacity = max_num_seqs), get one 429, then one client leaves
    // after its first token and the others finish.
    let mut fillers: Vec<SseStream> = (0..MAX_NUM_SEQS)
        .map(|_| SseStream::open(addr, "/v1/chat/completions", &streamed_chat(24)))
        .collect();
    let refused = post(addr, "/v1/chat/completions", &chat(json!({})));
    assert_eq!(refused.status, 429, "{}", refused.text());
    let mut leaver = fillers.pop().expect("a filler");
    let _opening = leaver.next_data().expect("opening chunk");
    let _first_token = leaver.next_data().expect("a content chunk");
    let leaver_prompt = done.last().map_or(0, |s| s.prompt);
    leaver.disconnect();
    for filler in fillers {
        done.push(stream_to_end(filler));
    }
    assert!(
        wait_for(Duration::from_secs(20), || {
            let s = scrape(addr);
            sum(&s, REQUEST_FAILURE_TOTAL, &[("reason", "aborted_client")]) == 1.0
                && server.state.in_flight() == 0
        }),
        "the client that left is counted once"
    );

    let s = scrape(addr);
    check_outcomes(&s, &done);
    check_histograms(&s, &done, leaver_prompt);
    check_http_and_info(&s);
    server.shutdown();
}

fn check_outcomes(s: &[Sample], done: &[Seq]) {
    let sequences = done.len() as f64;
    assert_eq!(
        value(s, REQUEST_SUCCESS_TOTAL, &[("finished_reason", "length")]),
        sequences
    );
    assert_eq!(
        value(s, REQUEST_SUCCESS_TOTAL, &[("finished_reason", "stop")]),
        0.0
    );
    for (reason, count) in [
        ("validation", 2.0),
        ("rejected_429", 1.0),
        ("aborted_client", 1.0),
        ("engine_error", 0.0),
        ("unavailable", 0.0),
    ] {
        assert_eq!(
            value(s, REQUEST_FAILURE_TOTAL, &[("reason", reason)]),
            count,
            "failures by {reason}"
        );
    }
    let generated: u64 = done.iter().map(|d| d.generated).sum();
    let prompt: u64 = done.iter().map(|d| d.prompt).sum();
    // The client that left got at least one token of at most 24.
    let total_generated = value(s, GENERATION_TOKENS_TOTAL, &[]);
    assert!(
        (generated as f64 + 1.0..=generated as f64 + 24.0).contains(&total_generated),
        "{total_generated} vs {generated}"
    );
    assert_eq!(
        value(s, &format!("{REQUEST_GENERATION_TOKENS}_sum"), &[]),
        generated as f64
    );
    assert_eq!(
        value(s, &format!("{REQUEST_PROMPT_TOKENS}_sum"), &[]),
        prompt as f64
    );
}

fn check_histograms(s: &[Sample], done: &[Seq], leaver_prompt: u64) {
    let sequences = done.len() as f64;
    let count = |name: &str| value(s, &format!("{name}_count"), &[]);
    for name in [
        E2E_REQUEST_LATENCY_SECONDS,
        REQUEST_QUEUE_TIME_SECONDS,
        REQUEST_PREFILL_TIME_SECONDS,
        REQUEST_DECODE_TIME_SECONDS,
        REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS,
        REQUEST_PROMPT_TOKENS,
        REQUEST_GENERATION_TOKENS,
    ] {
        assert_eq!(
            count(name),
            sequences,
            "{name} counts every finished sequence"
        );
        let inf = value(s, &format!("{name}_bucket"), &[("le", "+Inf")]);
        assert_eq!(inf, sequences, "{name} +Inf bucket");
    }
    // TTFT: every finished sequence and the one that left after its first token.
    assert_eq!(count(TIME_TO_FIRST_TOKEN_SECONDS), sequences + 1.0);
    let prompt_total = value(s, PROMPT_TOKENS_TOTAL, &[]);
    let prompt: u64 = done.iter().map(|d| d.prompt).sum::<u64>() + leaver_prompt;
    assert_eq!(prompt_total, prompt as f64);
    // One inter-token latency per token after the first, for every sequence.
    let itl = count(INTER_TOKEN_LATENCY_SECONDS);
    let expected: u64 = done.iter().map(|d| d.generated - 1).sum();
    assert!(
        (expected as f64..=expected as f64 + 23.0).contains(&itl),
        "{itl} vs {expected}"
    );
    // Per step: as many steps timed as counted; tokens per step cover every token run.
    let steps = count(ITERATION_TOKENS);
    assert!(steps >= 24.0, "{steps} steps");
    assert_eq!(count(ENGINE_STEP_DURATION_SECONDS), steps);
    let step_tokens = value(s, &format!("{ITERATION_TOKENS}_sum"), &[]);
    assert!(step_tokens >= value(s, GENERATION_TOKENS_TOTAL, &[]) - done.len() as f64 - 1.0);
    assert!(step_tokens <= prompt as f64 + value(s, GENERATION_TOKENS_TOTAL, &[]));
    // The vLLM copies show the same values.
    assert_eq!(
        value(s, "vllm:e2e_request_latency_seconds_count", &[]),
        sequences
    );
    assert_eq!(
        value(s, "vllm:generation_tokens_total", &[]),
        value(s, GENERATION_TOKENS_TOTAL, &[])
    );
}

fn check_http_and_info(s: &[Sample]) {
    let http = |route: &str, status: &str| {
        sum(
            s,
            HTTP_REQUESTS_TOTAL,
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(http("/v1/completions", "200"), 4.0);
    assert_eq!(http("/v1/completions", "400"), 1.0);
    assert_eq!(
        http("/v1/chat/completions", "200"),
        2.0 + MAX_NUM_SEQS as f64
    );
    assert_eq!(http("/v1/chat/completions", "404"), 1.0);
    assert_eq!(http("/v1/chat/completions", "429"), 1.0);
    assert!(http("/metrics", "200") >= 1.0);
    let duration_count = sum(
        s,
        &format!("{HTTP_REQUEST_DURATION_SECONDS}_count"),
        &[("route", "/v1/completions"), ("status", "200")],
    );
    assert_eq!(duration_count, 4.0);
    let info = s.iter().find(|x| x.name == BUILD_INFO).expect("build info");
    assert_eq!(info.value, 1.0);
    assert_eq!(info.labels["model_name"], "smol");
    assert_eq!(info.labels["model"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(info.labels["dtype"], "Q4_1");
    assert_eq!(info.labels["backend"], "cpu");
    assert_eq!(info.labels["version"], env!("CARGO_PKG_VERSION"));
    let usage = value(s, KV_CACHE_USAGE_PERC, &[]);
    assert!((0.0..=1.0).contains(&usage), "{usage}");
    assert!(value(s, KV_CACHE_BLOCKS_TOTAL, &[]) > 0.0);
    for sample in s {
        assert_eq!(
            sample.labels.get("model_name").map(String::as_str),
            Some("smol"),
            "{sample:?}"
        );
    }
}
