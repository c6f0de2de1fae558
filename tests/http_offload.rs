//! Request CPU work runs off the HTTP workers. While two ~10 MiB `/tokenize` requests are
//! being tokenized (provably in flight: the CPU pool reports both jobs running before and
//! after, and neither response has come back), `/health`, `/ready` and `/metrics` answer;
//! the latencies seen are printed (not asserted). A prompt whose text cannot fit the
//! context is refused before it is tokenized (by the byte bound, with the
//! `context_length_exceeded` error); a full pool queue answers 429.

mod http_support;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_support::{chat, completion, error_of, get, post, serve, start_engine, Response, MODEL};
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
use tessera::server::{ServerConfig, SpawnedServer};

/// Just under the default 10 MiB body limit: about 1.7M tokens.
const HELLOS: usize = 1_740_000;

fn engine() -> EngineHandle {
    static ENGINE: OnceLock<EngineHandle> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            start_engine(&EngineConfig {
                kv_cache_memory: 64 << 20,
                max_model_len: Some(2048),
                ..EngineConfig::default()
            })
        })
        .clone()
}

fn server(cpu_threads: usize, cpu_queue: usize) -> SpawnedServer {
    let cfg = ServerConfig {
        cpu_threads,
        cpu_queue,
        ..ServerConfig::default()
    };
    serve(engine(), 64, cfg)
}

/// A `/tokenize` request of `hellos` words, sent from its own thread.
fn tokenize_in_background(addr: SocketAddr, hellos: usize) -> JoinHandle<Response> {
    let body = json!({"model": MODEL, "prompt": "hello ".repeat(hellos)});
    std::thread::spawn(move || post(addr, "/tokenize", &body))
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    // Only a guard against a hang: the loop ends on the event.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn probes_answer_while_two_huge_prompts_are_tokenized() {
    let server = server(2, 8);
    let (addr, state) = (server.addr, server.state.clone());
    let heavy = [
        tokenize_in_background(addr, HELLOS),
        tokenize_in_background(addr, HELLOS),
    ];
    wait_until("both prompts are being tokenized", || {
        state.cpu.running() == 2
    });
    let mut latencies = Vec::new();
    for path in ["/health", "/ready", "/metrics"] {
        let started = Instant::now();
        let res = get(addr, path);
        latencies.push((path, started.elapsed()));
        assert_eq!(res.status, 200, "{path}: {}", res.text());
    }
    assert_eq!(
        state.cpu.running(),
        2,
        "a heavy request ended before the probes did"
    );
    assert!(
        heavy.iter().all(|h| !h.is_finished()),
        "a heavy response came first"
    );
    eprintln!("probe latencies while two ~10 MiB prompts were tokenized: {latencies:?}");
    for handle in heavy {
        let res = handle.join().expect("heavy request");
        assert_eq!(res.status, 200, "{}", res.text());
        assert!(res.json()["count"].as_u64().expect("count") >= HELLOS as u64);
    }
}

#[test]
fn prompts_that_cannot_fit_are_refused_before_tokenizing() {
    let server = server(2, 8);
    let limit = server
        .state
        .prompt_limit()
        .expect("SmolLM2's tokenizer bounds its tokens");
    let max_bytes = limit.max_model_len * limit.max_bytes_per_token;
    let too_long = "a".repeat(max_bytes + 1);
    let cases: [(&str, Value, &str); 3] = [
        (
            "/v1/chat/completions",
            chat(json!({"messages": [{"role": "user", "content": too_long}]})),
            "messages",
        ),
        (
            "/v1/completions",
            completion(json!({"prompt": too_long})),
            "prompt",
        ),
        (
            "/v1/completions",
            completion(json!({"prompt": ["short", "hello ".repeat(HELLOS)]})),
            "prompt",
        ),
    ];
    for (path, body, param) in cases {
        let started = Instant::now();
        let res = post(server.addr, path, &body);
        let elapsed = started.elapsed();
        let err = error_of(&res, 400);
        assert_eq!(err["code"], "context_length_exceeded", "{err}");
        assert_eq!(err["param"], param);
        let message = err["message"].as_str().expect("message");
        assert!(message.contains("bytes of text"), "{message}");
        eprintln!(
            "{path} with a {} byte body refused in {elapsed:?}",
            body.to_string().len()
        );
    }
    // At the bound the text is tokenized, and refused by its token count instead.
    let at_bound = completion(json!({"prompt": "hello ".repeat(max_bytes / 6)}));
    let err = error_of(&post(server.addr, "/v1/completions", &at_bound), 400);
    assert_eq!(err["code"], "context_length_exceeded");
    let message = err["message"].as_str().expect("message");
    assert!(
        message.contains("tokens") && !message.contains("bytes of text"),
        "{message}"
    );
}

#[test]
fn a_full_cpu_queue_answers_429() {
    let server = server(1, 0);
    let heavy = tokenize_in_background(server.addr, HELLOS / 2);
    wait_until("the one CPU thread is busy", || {
        server.state.cpu.running() == 1
    });
    let res = post(server.addr, "/v1/chat/completions", &chat(json!({})));
    let err = error_of(&res, 429);
    assert_eq!(err["code"], "server_busy", "{err}");
    assert_eq!(err["type"], "rate_limit_error");
    assert_eq!(res.header("retry-after"), Some("1"));
    assert_eq!(heavy.join().expect("heavy").status, 200);
    let after = post(server.addr, "/v1/chat/completions", &chat(json!({})));
    assert_eq!(after.status, 200, "{}", after.text());
}
