//! Behaviour under stress over real HTTP: clients that disconnect (streaming or not) have
//! their sequences aborted and every block freed; a full server refuses excess requests
//! at once with 429 and `Retry-After` (while every slot is still held: no refusal waits
//! for capacity), and under 10× oversubscription admitted requests complete correctly
//! while the number of sequences in flight stays bounded; queued streams get keep-alive
//! comments. Every wait is for an event (a gauge, a metric, a message); `HANG_GUARD`
//! only bounds a wait that would never end.
//! One engine (`max_num_seqs` 8); tests take turns through a lock because they watch
//! the engine's idle state and the servers' counters.

mod common;
mod http_support;
mod metrics_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;

use http_support::{
    chatml, get, post, request, serve, start_engine, wait_for, SseEvent, SseStream, HANG_GUARD,
    MODEL,
};
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
use tessera::metrics::{GENERATION_TOKENS_TOTAL, REQUEST_FAILURE_TOTAL};
use tessera::server::{ServerConfig, SpawnedServer};

const MAX_NUM_SEQS: usize = 8;

struct Fixture {
    engine: EngineHandle,
    /// Room for 50 streams (8 running + 64 queued).
    roomy: SpawnedServer,
    /// 8 running + 8 queued; 100 ms keep-alives.
    tight: SpawnedServer,
}

fn fixture() -> (MutexGuard<'static, ()>, &'static Fixture) {
    static LOCK: Mutex<()> = Mutex::new(());
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let fixture = FIXTURE.get_or_init(|| {
        let cfg = EngineConfig {
            max_num_seqs: MAX_NUM_SEQS,
            kv_cache_memory: 256 << 20,
            max_model_len: Some(4096),
            ..EngineConfig::default()
        };
        let engine = start_engine(&cfg);
        let roomy = ServerConfig {
            max_queued_requests: 64,
            ..ServerConfig::default()
        };
        let tight = ServerConfig {
            max_queued_requests: 8,
            // Room for all of the oversubscription test's 160 parse jobs at once: its 429s
            // are the admission queue's (`queue_full`), not the request CPU pool's own
            // bound (`server_busy`, tested in `server::cpu`), which the default 128 let
            // a burst of simultaneous posts reach.
            cpu_queue: 256,
            sse_keepalive: std::time::Duration::from_millis(100),
            ..ServerConfig::default()
        };
        Fixture {
            roomy: serve(engine.clone(), MAX_NUM_SEQS, roomy),
            tight: serve(engine.clone(), MAX_NUM_SEQS, tight),
            engine,
        }
    });
    (guard, fixture)
}

/// Running 0, waiting 0 and every KV block free.
fn engine_idle(engine: &EngineHandle) -> bool {
    let s = engine.gauges().snapshot();
    s.num_running == 0 && s.num_waiting == 0 && s.kv_blocks_used == 0
}

/// Waits (up to the hang guard) until the engine is idle and `server` holds no sequence.
fn assert_idle(f: &Fixture, server: &SpawnedServer) {
    assert!(
        wait_for(HANG_GUARD, || engine_idle(&f.engine)),
        "the engine never became idle: {:?}",
        f.engine.gauges().snapshot()
    );
    assert!(
        wait_for(HANG_GUARD, || server.state.in_flight() == 0),
        "sequences still held: {}",
        server.state.in_flight()
    );
}

/// The sum of `server`'s `name` series that carry `labels`, read from its `/metrics`.
fn counter(server: &SpawnedServer, name: &str, labels: &[(&str, &str)]) -> f64 {
    let res = get(server.addr, "/metrics");
    assert_eq!(res.status, 200);
    metrics_support::sum(&metrics_support::parse(&res.text()), name, labels)
}

/// Requests of `server` that ended because their client went away.
fn aborted_by_client(server: &SpawnedServer) -> f64 {
    counter(
        server,
        REQUEST_FAILURE_TOTAL,
        &[("reason", "aborted_client")],
    )
}

fn long_stream(i: usize) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("Tell me a long story number {i}.")}],
        "max_tokens": 1500, "ignore_eos": true, "stream": true,
    })
}

/// Reads until the first content delta (after the role chunk).
fn read_first_token(stream: &mut SseStream) {
    loop {
        let data = stream
            .next_data()
            .expect("stream ended before its first token");
        let chunk: Value = serde_json::from_str(&data).expect("chunk");
        if chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            return;
        }
    }
}

/// Fills `server` to its capacity: `MAX_NUM_SEQS` long streams past their first token
/// and `queued` more waiting in the engine.
fn occupy(f: &Fixture, server: &SpawnedServer, queued: usize) -> Vec<SseStream> {
    let addr = server.addr;
    let mut streams: Vec<SseStream> = (0..MAX_NUM_SEQS)
        .map(|i| {
            let mut s = SseStream::open(addr, "/v1/chat/completions", &long_stream(i));
            assert_eq!(s.status, 200);
            read_first_token(&mut s);
            s
        })
        .collect();
    for i in 0..queued {
        let s = SseStream::open(addr, "/v1/chat/completions", &long_stream(100 + i));
        assert_eq!(s.status, 200);
        streams.push(s);
    }
    assert!(
        wait_for(HANG_GUARD, || f.engine.gauges().snapshot().num_waiting
            == queued),
        "never queued: {:?}",
        f.engine.gauges().snapshot()
    );
    streams
}

#[test]
fn fifty_streams_dropped_after_their_first_token_are_aborted_and_free_everything() {
    let (_turn, f) = fixture();
    let addr = f.roomy.addr;
    let aborted_before = aborted_by_client(&f.roomy);
    let clients: Vec<_> = (0..50)
        .map(|i| {
            thread::spawn(move || {
                let mut stream = SseStream::open(addr, "/v1/chat/completions", &long_stream(i));
                assert_eq!(stream.status, 200);
                read_first_token(&mut stream);
                stream.disconnect();
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    assert_idle(f, &f.roomy);
    // All 50 ended as aborted by their client (none ran its 1500 tokens to the end).
    assert!(
        wait_for(HANG_GUARD, || aborted_by_client(&f.roomy)
            == aborted_before + 50.0),
        "aborted by the client: {} (was {aborted_before})",
        aborted_by_client(&f.roomy)
    );
}

#[test]
fn a_non_streaming_client_that_leaves_is_aborted() {
    let (_turn, f) = fixture();
    let addr = f.roomy.addr;
    let aborted_before = aborted_by_client(&f.roomy);
    let generated = || counter(&f.roomy, GENERATION_TOKENS_TOTAL, &[]);
    let generated_before = generated();
    let body = json!({"model": MODEL, "prompt": "Count to a thousand:", "max_tokens": 3000, "ignore_eos": true});
    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
    let payload = body.to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    std::io::Write::write_all(&mut socket, head.as_bytes()).expect("send");
    // The request is decoding: it runs and has produced tokens. (The gauges are
    // published after each step, so they are waited for like the counter.)
    assert!(
        wait_for(HANG_GUARD, || generated() > generated_before
            && f.engine.gauges().snapshot().num_running == 1),
        "never started generating: {:?}",
        f.engine.gauges().snapshot()
    );
    socket.shutdown(std::net::Shutdown::Both).expect("close");
    drop(socket);
    assert_idle(f, &f.roomy);
    assert!(
        wait_for(HANG_GUARD, || aborted_by_client(&f.roomy)
            == aborted_before + 1.0),
        "not counted as aborted by its client"
    );
}

#[test]
fn a_full_server_refuses_at_once_with_429() {
    let (_turn, f) = fixture();
    let capacity = MAX_NUM_SEQS + 8;
    let holders = occupy(f, &f.tight, 8);
    assert_eq!(f.tight.state.in_flight(), capacity);
    let addr = f.tight.addr;
    let body = json!({"model": MODEL, "prompt": chatml("What is the capital of France?"), "temperature": 0, "max_tokens": 12});
    let clients: Vec<_> = (0..capacity * 10)
        .map(|_| {
            let body = body.clone();
            thread::spawn(move || post(addr, "/v1/completions", &body))
        })
        .collect();
    for c in clients {
        let res = c.join().expect("client");
        assert_eq!(res.status, 429, "{}", res.text());
        assert_eq!(res.header("retry-after"), Some("1"));
        assert_eq!(res.json()["error"]["code"], "queue_full");
    }
    // Every refusal came back while every slot was still held: none waited for room.
    assert_eq!(f.tight.state.in_flight(), capacity);
    for h in holders {
        h.disconnect();
    }
    assert_idle(f, &f.tight);
}

#[test]
fn ten_times_oversubscription_keeps_in_flight_bounded_and_answers_correct() {
    let (_turn, f) = fixture();
    let addr = f.tight.addr;
    let capacity = MAX_NUM_SEQS + 8;
    let body = json!({"model": MODEL, "prompt": chatml("What is the capital of France?"), "temperature": 0, "max_tokens": 12});
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (peak.clone(), done.clone());
        let (engine, state) = (f.engine.clone(), f.tight.state.clone());
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let s = engine.gauges().snapshot();
                let seen = (s.num_running + s.num_waiting).max(state.in_flight());
                peak.fetch_max(seen, Ordering::SeqCst);
                thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let clients: Vec<_> = (0..capacity * 10)
        .map(|_| {
            let body = body.clone();
            thread::spawn(move || post(addr, "/v1/completions", &body))
        })
        .collect();
    let results: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    done.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");
    let mut admitted = 0;
    for res in &results {
        match res.status {
            200 => {
                admitted += 1;
                assert_eq!(
                    res.json()["choices"][0]["text"],
                    "The capital of France is Paris."
                );
            }
            429 => {
                assert_eq!(res.header("retry-after"), Some("1"));
                assert_eq!(res.json()["error"]["code"], "queue_full");
            }
            other => panic!("unexpected {other}: {}", res.text()),
        }
    }
    // A 429 only comes with every slot taken, so at least a full batch and queue ran.
    assert!(admitted >= capacity, "admitted {admitted}");
    let max_seen = peak.load(Ordering::SeqCst);
    assert!(
        max_seen <= capacity,
        "in flight stayed within {capacity}: peak {max_seen}"
    );
    assert_idle(f, &f.tight);
}

#[test]
fn queued_streams_get_keep_alive_comments() {
    let (_turn, f) = fixture();
    let addr = f.tight.addr;
    let runners = occupy(f, &f.tight, 0);
    let mut queued = SseStream::open(addr, "/v1/chat/completions", &long_stream(99));
    assert_eq!(queued.status, 200);
    let mut comments = 0;
    while comments < 2 {
        match queued.next_event().expect("open stream") {
            SseEvent::Comment(c) => {
                assert_eq!(c, ": keep-alive");
                comments += 1;
            }
            SseEvent::Data(d) => {
                let chunk: Value = serde_json::from_str(&d).expect("chunk");
                assert!(
                    chunk["choices"][0]["delta"]["content"]
                        .as_str()
                        .unwrap_or("")
                        .is_empty(),
                    "a queued request got a token: {d}"
                );
            }
        }
    }
    assert!(
        wait_for(HANG_GUARD, || f.engine.gauges().snapshot().num_waiting == 1),
        "the stream is not queued: {:?}",
        f.engine.gauges().snapshot()
    );
    for r in runners {
        r.disconnect();
    }
    read_first_token(&mut queued);
    queued.disconnect();
    assert_idle(f, &f.tight);
    let ok = request(addr, "GET", "/ready", &[], None);
    assert_eq!(ok.status, 200);
}
