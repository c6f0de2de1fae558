//! Behaviour under stress over real HTTP: clients that disconnect (streaming or not) have
//! their sequences aborted and blocks freed within a second; 10× oversubscription gets
//! fast 429s with `Retry-After` while admitted requests complete correctly and the number
//! of sequences in flight stays bounded; queued streams get keep-alive comments.
//! One engine (`max_num_seqs` 8); tests take turns through a lock because they measure
//! the engine's idle state.

mod http_support;

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use http_support::{
    chatml, post, request, serve, start_engine, wait_for, SseEvent, SseStream, MODEL,
};
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
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
            sse_keepalive: Duration::from_millis(100),
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

#[test]
fn fifty_streams_dropped_after_their_first_token_free_everything_within_a_second() {
    let (_turn, f) = fixture();
    let addr = f.roomy.addr;
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
    let dropped = Instant::now();
    assert!(
        wait_for(Duration::from_secs(1), || engine_idle(&f.engine)),
        "not idle 1 s after the last disconnect: {:?}",
        f.engine.gauges().snapshot()
    );
    assert!(wait_for(Duration::from_secs(1), || f
        .roomy
        .state
        .in_flight()
        == 0));
    eprintln!("idle {:?} after the last disconnect", dropped.elapsed());
}

#[test]
fn a_non_streaming_client_that_leaves_is_aborted() {
    let (_turn, f) = fixture();
    let addr = f.roomy.addr;
    let body = json!({"model": MODEL, "prompt": "Count to a thousand:", "max_tokens": 3000, "ignore_eos": true});
    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
    let payload = body.to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    std::io::Write::write_all(&mut socket, head.as_bytes()).expect("send");
    assert!(
        wait_for(Duration::from_secs(10), || f
            .engine
            .gauges()
            .snapshot()
            .num_running
            == 1),
        "never started"
    );
    thread::sleep(Duration::from_millis(200));
    socket.shutdown(std::net::Shutdown::Both).expect("close");
    drop(socket);
    assert!(
        wait_for(Duration::from_secs(1), || engine_idle(&f.engine)),
        "still busy 1 s after the client left: {:?}",
        f.engine.gauges().snapshot()
    );
}

#[test]
fn ten_times_oversubscription_gets_fast_429s_and_correct_answers() {
    let (_turn, f) = fixture();
    let addr = f.tight.addr;
    let capacity = MAX_NUM_SEQS + 8;
    let body = json!({"model": MODEL, "prompt": chatml("What is the capital of France?"), "temperature": 0, "max_tokens": 12});
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let (peak, engine, state) = (peak.clone(), f.engine.clone(), f.tight.state.clone());
        thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(20);
            while Instant::now() < until
                && peak.load(std::sync::atomic::Ordering::SeqCst) != usize::MAX
            {
                let s = engine.gauges().snapshot();
                let seen = (s.num_running + s.num_waiting).max(state.in_flight());
                peak.fetch_max(seen, std::sync::atomic::Ordering::SeqCst);
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let clients: Vec<_> = (0..capacity * 10)
        .map(|_| {
            let body = body.clone();
            thread::spawn(move || {
                let started = Instant::now();
                let res = post(addr, "/v1/completions", &body);
                (res, started.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let max_seen = peak.swap(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    watcher.join().expect("watcher");
    let (mut admitted, mut refused) = (0, 0);
    for (res, took) in &results {
        match res.status {
            200 => {
                admitted += 1;
                assert_eq!(
                    res.json()["choices"][0]["text"],
                    "The capital of France is Paris."
                );
            }
            429 => {
                refused += 1;
                assert_eq!(res.header("retry-after"), Some("1"));
                assert_eq!(res.json()["error"]["code"], "queue_full");
                assert!(*took < Duration::from_secs(2), "a 429 took {took:?}");
            }
            other => panic!("unexpected {other}: {}", res.text()),
        }
    }
    assert!(
        admitted >= capacity,
        "at least one full batch and queue is served: {admitted}"
    );
    assert!(
        refused >= capacity * 5,
        "most of the excess is refused: {refused} of {}",
        results.len()
    );
    assert!(
        max_seen <= capacity,
        "in flight stayed within {capacity}: peak {max_seen}"
    );
    assert!(wait_for(Duration::from_secs(2), || engine_idle(&f.engine)));
}

#[test]
fn queued_streams_get_keep_alive_comments() {
    let (_turn, f) = fixture();
    let addr = f.tight.addr;
    let mut runners: Vec<SseStream> = (0..MAX_NUM_SEQS)
        .map(|i| {
            let mut s = SseStream::open(addr, "/v1/chat/completions", &long_stream(i));
            read_first_token(&mut s);
            s
        })
        .collect();
    let mut queued = SseStream::open(addr, "/v1/chat/completions", &long_stream(99));
    assert_eq!(queued.status, 200);
    let mut comments = 0;
    let deadline = Instant::now() + Duration::from_millis(600);
    while Instant::now() < deadline {
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
    assert!(comments >= 2, "keep-alives while queued: {comments}");
    assert_eq!(f.engine.gauges().snapshot().num_waiting, 1);
    for r in runners.drain(..) {
        r.disconnect();
    }
    read_first_token(&mut queued);
    queued.disconnect();
    assert!(wait_for(Duration::from_secs(1), || engine_idle(&f.engine)));
    let ok = request(addr, "GET", "/ready", &[], None);
    assert_eq!(ok.status, 200);
}
