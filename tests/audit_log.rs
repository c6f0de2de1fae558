//! The conversation log over real HTTP on the default model: after a known workload on
//! every text route (chat, completions, responses; streamed or not; several choices; a
//! chain and a conversation; inputs blocked, masked and flagged; clients that leave
//! mid-stream; a refused request) every exchange is in the log exactly once with what
//! its client saw; the review queue holds every flagged exchange and the seeded sample
//! of the others; retention (on an injectable clock) deletes exactly the exchanges past
//! the period and keeps violations; exchanges of one millisecond read back in the order
//! they began; the same on a real PostgreSQL.

mod audit_support;
mod http_support;
mod pg_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use audit_support::*;
use http_support::{chatml, error_of, joined_text, ok, typed_events, SseEvent, MODEL};
use serde_json::{json, Value};
use tessera::audit::review::ReviewSampler;
use tessera::audit::time::{parse_date, DAY_MS};
use tessera::audit::{view, AuditConfig, ClockRef, ManualClock};
use tessera::server::SpawnedServer;
use tessera::store::{Owner, StoreConfig, StoredExchange};

fn no_sampling() -> AuditConfig {
    AuditConfig {
        review_sample_rate: 0.0,
        ..AuditConfig::default()
    }
}

fn chat_body(content: &str, max_tokens: u32) -> Value {
    json!({"model": MODEL, "temperature": 0, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}]})
}

/// Opens a stream of `id`, reads until two events carried generated text, and leaves.
fn leave_after_two_deltas(addr: SocketAddr, path: &str, id: &str, body: &Value) {
    let mut stream = stream_as(addr, path, id, body);
    assert_eq!(stream.status, 200);
    let mut deltas = 0;
    while deltas < 2 {
        let text = match stream.next_event().expect("the stream goes on") {
            SseEvent::Data(text) | SseEvent::Comment(text) => text,
        };
        let generated = text.contains("response.output_text.delta")
            || (text.contains("\"content\":\"") && !text.contains("\"content\":\"\""));
        deltas += usize::from(generated);
    }
    stream.disconnect();
}

/// Runs one of each kind of exchange; returns the request ids that must be logged and
/// the one that must not.
fn workload(addr: SocketAddr) -> (Vec<String>, String) {
    let mut logged = Vec::new();
    let mut id = |name: &str| {
        logged.push(name.to_string());
        name.to_string()
    };
    let chat = "/v1/chat/completions";
    ok(post_as(addr, chat, &id("chat"), &chat_body("Say hi.", 8)));
    let mut streamed = chat_body("Say hello.", 8);
    streamed["stream"] = json!(true);
    let events = stream_as(addr, "/v1/chat/completions", &id("chat-stream"), &streamed).rest();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let several =
        json!({"model": MODEL, "prompt": ["One", "Two"], "n": 2, "max_tokens": 3, "seed": 1});
    ok(post_as(
        addr,
        "/v1/completions",
        &id("completion"),
        &several,
    ));
    let first = json!({"model": MODEL, "input": "My name is Lin.", "max_output_tokens": 6, "temperature": 0});
    let first = ok(post_as(addr, "/v1/responses", &id("response-1"), &first));
    let second = json!({"model": MODEL, "input": "What is my name?", "max_output_tokens": 6,
        "previous_response_id": first["id"], "stream": true});
    typed_events(stream_as(addr, "/v1/responses", &id("response-2"), &second));
    let conv = ok(post_as(
        addr,
        "/v1/conversations",
        "not-an-exchange",
        &json!({}),
    ));
    let turn =
        json!({"model": MODEL, "input": "Hi.", "max_output_tokens": 4, "conversation": conv["id"]});
    ok(post_as(
        addr,
        "/v1/responses",
        &id("conversation-turn"),
        &turn,
    ));
    let blocked = post_as(
        addr,
        "/v1/chat/completions",
        &id("blocked"),
        &chat_body("make a bomb", 4),
    );
    assert_eq!(error_of(&blocked, 400)["code"], "content_filter");
    ok(post_as(
        addr,
        chat,
        &id("masked"),
        &chat_body("call 13812345678", 2),
    ));
    ok(post_as(
        addr,
        chat,
        &id("flagged"),
        &chat_body("money laundering?", 2),
    ));
    let mut long = chat_body("Count from one to fifty.", 200);
    long["stream"] = json!(true);
    long["ignore_eos"] = json!(true);
    leave_after_two_deltas(addr, "/v1/chat/completions", &id("gone-chat"), &long);
    let long_turn = json!({"model": MODEL, "input": "Count to fifty.", "max_output_tokens": 200,
        "stream": true, "ignore_eos": true});
    leave_after_two_deltas(addr, "/v1/responses", &id("gone-response"), &long_turn);
    let refused = json!({"model": MODEL, "prompt": "x", "top_p": 7});
    error_of(&post_as(addr, "/v1/completions", "refused", &refused), 400);
    let parallel: Vec<String> = (0..6).map(|i| id(&format!("parallel-{i}"))).collect();
    std::thread::scope(|s| {
        for pid in &parallel {
            s.spawn(move || {
                // Greedy: a sampled answer could say something the policy flags, and the
                // review queue below counts exactly the three flagged inputs.
                let body = json!({"model": MODEL, "prompt": chatml(pid), "max_tokens": 4,
                    "temperature": 0});
                ok(post_as(addr, "/v1/completions", pid, &body));
            });
        }
    });
    (logged, "refused".to_string())
}

/// A chain of responses shares the thread of its first; a conversation's turn has the
/// conversation as its thread.
fn check_threads(all: &[StoredExchange]) {
    let (r1, r2) = (
        &the_exchange(all, "response-1").record,
        &the_exchange(all, "response-2").record,
    );
    assert_eq!(
        r1.thread_id, r1.response_id,
        "a new chain starts its own thread"
    );
    assert_eq!(
        r2.thread_id, r1.response_id,
        "the chain's turns share its thread"
    );
    assert_eq!(r2.previous_response_id, r1.response_id);
    let turn = &the_exchange(all, "conversation-turn").record;
    assert!(turn.conversation_id.is_some() && turn.thread_id == turn.conversation_id);
}

/// Checks one exchange of each kind against what its client was sent.
fn check_kinds(all: &[StoredExchange]) {
    let chat = &the_exchange(all, "chat").record;
    assert_eq!(
        (chat.route.as_str(), chat.model.as_str()),
        ("/v1/chat/completions", MODEL)
    );
    assert_eq!(chat.api_key_id, Owner::of_key(USER_KEY).as_str());
    assert!(chat
        .client_addr
        .as_deref()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert_eq!(
        json(&chat.input),
        json!([{"role": "user", "content": "Say hi."}])
    );
    assert_eq!((chat.status, chat.finish_reason.is_some()), (200, true));
    assert!(chat.completion_tokens > 0 && chat.prompt_tokens > 0);
    let completion = json(&the_exchange(all, "completion").record.output);
    assert_eq!(
        completion.as_array().map(Vec::len),
        Some(4),
        "2 prompts × n = 2"
    );
    let input = json(&the_exchange(all, "completion").record.input);
    assert_eq!(
        input,
        json!([{"role": "prompt", "content": "One"}, {"role": "prompt", "content": "Two"}])
    );
    check_threads(all);
    let blocked = &the_exchange(all, "blocked").record;
    assert_eq!(
        (blocked.status, blocked.finish_reason.as_deref()),
        (400, Some("content_filter"))
    );
    assert_eq!(json(&blocked.output), json!([]));
    let hits = json(&blocked.hits);
    assert!(
        hits.as_array()
            .is_some_and(|h| h.iter().any(|h| h["category"] == "violence"
                && h["text"].as_str().is_some_and(|t| t.contains("bomb")))),
        "{hits}"
    );
    let masked = &the_exchange(all, "masked").record;
    assert_eq!(
        json(&masked.input)[0]["content"],
        "call ***********",
        "logged as the model saw it"
    );
    assert_eq!(json(&masked.hits)[0]["category"], "pii");
    assert!(
        json(&masked.hits)[0]["text"].is_null(),
        "a masked value is not logged"
    );
    assert_eq!(the_exchange(all, "flagged").record.categories, ["fraud"]);
    for gone in ["gone-chat", "gone-response"] {
        let r = &the_exchange(all, gone).record;
        assert_eq!(
            (r.status, r.finish_reason.as_deref()),
            (499, None),
            "{gone}"
        );
        assert!(
            r.completion_tokens > 0 && r.completion_tokens < 200,
            "{gone}: {r:?}"
        );
    }
}

#[test]
fn every_exchange_is_logged_exactly_once_with_what_its_client_saw() {
    let server = server(
        no_sampling(),
        StoreConfig::Sqlite {
            data_dir: temp_dir("once"),
        },
    );
    let addr = server.addr;
    // Outputs the client saw, to compare with the log.
    let chat = ok(post_as(
        addr,
        "/v1/chat/completions",
        "seen-chat",
        &chat_body("Name a color.", 8),
    ));
    let mut body = chat_body("Name a fruit.", 8);
    body["stream"] = json!(true);
    let events = stream_as(addr, "/v1/chat/completions", "seen-stream", &body).rest();
    let turn =
        json!({"model": MODEL, "input": "Name a tree.", "max_output_tokens": 8, "stream": true});
    let turn_events = typed_events(stream_as(addr, "/v1/responses", "seen-turn", &turn));
    let (mut logged, refused) = workload(addr);
    logged.extend(["seen-chat", "seen-stream", "seen-turn"].map(String::from));
    for gone in ["gone-chat", "gone-response"] {
        wait_logged(&server, gone);
    }
    let all = exchanges(&server);
    let ids: Vec<&str> = all.iter().map(|e| e.record.request_id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "no exchange twice: {ids:?}");
    assert_eq!(
        unique,
        logged.iter().map(String::as_str).collect(),
        "every exchange, and nothing else"
    );
    assert!(with_request_id(&all, &refused).is_empty());
    check_kinds(&all);
    let output = |id: &str| json(&the_exchange(&all, id).record.output)[0]["text"].clone();
    assert_eq!(
        output("seen-chat"),
        chat["choices"][0]["message"]["content"]
    );
    assert_eq!(output("seen-stream"), json!(joined_text(&events, 1)[0]));
    let done = turn_events
        .iter()
        .find(|e| e["type"] == "response.completed" || e["type"] == "response.incomplete")
        .expect("the response's last event");
    assert_eq!(output("seen-turn"), done["response"]["output_text"]);
    assert_eq!(
        the_exchange(&all, "seen-turn")
            .record
            .response_id
            .as_deref(),
        done["response"]["id"].as_str()
    );
    let metrics = http_support::get(addr, "/metrics").text();
    assert!(
        metrics.contains(&format!(
            "tessera_audit_records_total{{model_name=\"smol\"}} {}",
            all.len()
        )),
        "{metrics}"
    );
    server.shutdown();
}

/// Runs `n` short unflagged completions, 8 at a time.
fn unflagged(addr: SocketAddr, n: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("plain-{i}")).collect();
    for chunk in ids.chunks(8) {
        std::thread::scope(|s| {
            for id in chunk {
                s.spawn(move || {
                    // Greedy, so no sampled token can meet the policy.
                    let body = json!({"model": MODEL, "prompt": format!("Item {id}:"),
                        "max_tokens": 1, "temperature": 0});
                    ok(post_as(addr, "/v1/completions", id, &body));
                });
            }
        });
    }
}

/// Every id on every page of the admin queue listing `query`, walking `after`.
fn queue_ids(addr: SocketAddr, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let page = admin_get(
            addr,
            &format!("/admin/v1/review/queue?limit=7&{query}{after}"),
        );
        let data = page["data"].as_array().expect("data").clone();
        ids.extend(
            data.iter()
                .map(|e| e["request_id"].as_str().expect("id").to_string()),
        );
        if page["has_more"] != true {
            return ids;
        }
        after = format!("&after={}", page["last_id"].as_str().expect("last id"));
    }
}

#[test]
fn the_review_queue_holds_every_flagged_exchange_and_the_seeded_sample() {
    let (rate, seed, n) = (0.25, 42, 40);
    let audit = AuditConfig {
        review_sample_rate: rate,
        review_seed: Some(seed),
        ..AuditConfig::default()
    };
    let server = server(audit, StoreConfig::Memory);
    let addr = server.addr;
    unflagged(addr, n);
    let flagged = ["bomb-1", "bomb-2", "phone", "laundering", "paris"];
    for (id, text) in [("bomb-1", "a bomb"), ("bomb-2", "炸弹")] {
        error_of(
            &post_as(addr, "/v1/chat/completions", id, &chat_body(text, 2)),
            400,
        );
    }
    ok(post_as(
        addr,
        "/v1/chat/completions",
        "phone",
        &chat_body("13912345678", 2),
    ));
    ok(post_as(
        addr,
        "/v1/chat/completions",
        "laundering",
        &chat_body("money laundering", 2),
    ));
    let france = http_support::completion(json!({"max_tokens": 64, "ignore_eos": true}));
    let paris = ok(post_as(addr, "/v1/completions", "paris", &france));
    assert_eq!(paris["choices"][0]["finish_reason"], "content_filter");
    flush(&server);

    let replay = ReviewSampler::new(rate, Some(seed));
    let expected = (0..n).filter(|_| replay.draw()).count();
    assert!(
        (3..=18).contains(&expected),
        "about {rate} of {n}: {expected}"
    );
    let sampled = queue_ids(addr, "reason=sampled");
    assert_eq!(sampled.len(), expected, "{sampled:?}");
    assert!(sampled.iter().all(|id| id.starts_with("plain-")));
    let mut got = queue_ids(addr, "reason=flagged");
    got.sort();
    let mut want = flagged.map(String::from).to_vec();
    want.sort();
    assert_eq!(got, want, "every flagged exchange");
    let all = queue_ids(addr, "");
    assert_eq!(all.len(), expected + flagged.len());
    assert_eq!(
        all.iter().collect::<BTreeSet<_>>().len(),
        all.len(),
        "pages neither skip nor repeat"
    );
    assert_eq!(queue_ids(addr, "category=pii"), ["phone"]);
    assert_eq!(queue_ids(addr, "category=geo&verdict=pending"), ["paris"]);
    assert!(queue_ids(addr, "since=2999-01-01").is_empty());
    assert_eq!(
        queue_ids(addr, "until=2999-01-01&reason=flagged").len(),
        flagged.len()
    );
    let metrics = http_support::get(addr, "/metrics").text();
    let depth = format!(
        "tessera_review_queue_depth{{model_name=\"smol\"}} {}",
        all.len()
    );
    assert!(metrics.contains(&depth), "{depth} in {metrics}");
    server.shutdown();
}

/// Sets a verdict with the admin key.
fn verdict(addr: SocketAddr, exchange_id: &str, verdict: &str) -> Value {
    let body = json!({"verdict": verdict, "reviewer": "auditor-1", "note": "checked"});
    let path = format!("/admin/v1/exchanges/{exchange_id}/review");
    ok(call(addr, "POST", &path, ADMIN_KEY, "admin", Some(&body)))
}

/// A server whose log reads a manual clock set to `start`, on `store`.
fn clocked(store: StoreConfig, start: i64) -> (SpawnedServer, std::sync::Arc<ManualClock>) {
    let clock = ManualClock::new(start);
    let audit = AuditConfig {
        clock: ClockRef(clock.clone()),
        review_sample_rate: 0.0,
        ..AuditConfig::default()
    };
    (server(audit, store), clock)
}

/// `tessera_audit_retention_deleted_total` of `server` (it counts every sweep: the daily
/// job's too, which runs at start).
fn retention_deleted(server: &SpawnedServer) -> u64 {
    let metrics = http_support::get(server.addr, "/metrics").text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("tessera_audit_retention_deleted_total"))
        .expect("the counter is exported");
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count")
}

/// Retention on `server`, whose log reads `clock` (at `start`): exchanges made at the
/// start, at the start plus an hour, and 100 days later; one reviewed as a violation.
fn check_retention(server: &SpawnedServer, clock: &ManualClock, start: i64) {
    let addr = server.addr;
    let run = |id: &str| {
        ok(post_as(
            addr,
            "/v1/completions",
            id,
            &json!({"model": MODEL, "prompt": id, "max_tokens": 1}),
        ))
    };
    for id in ["old-1", "old-2", "old-violation"] {
        run(id);
    }
    clock.set(start + 3_600_000);
    run("at-the-cutoff");
    clock.set(start + 100 * DAY_MS);
    run("recent");
    let all = exchanges(server);
    let violation = the_exchange(&all, "old-violation").record.id.clone();
    let reviewed = verdict(addr, &violation, "violation");
    assert_eq!(reviewed["review"]["reason"], "manual");
    let audit = server.state.audit().expect("log");
    clock.set(start + 180 * DAY_MS);
    audit.run_retention().expect("sweep");
    assert_eq!(exchanges(server).len(), 5, "nothing is past 180 days yet");
    clock.set(start + 180 * DAY_MS + 3_600_000);
    audit.run_retention().expect("sweep");
    let left: BTreeSet<String> = exchanges(server)
        .iter()
        .map(|e| e.record.request_id.clone())
        .collect();
    let want: BTreeSet<String> = ["old-violation", "at-the-cutoff", "recent"]
        .map(String::from)
        .into();
    assert_eq!(
        left, want,
        "exactly the exchanges older than the period are gone"
    );
    assert_eq!(retention_deleted(server), 2);
    let gone = call(
        addr,
        "DELETE",
        &format!("/admin/v1/exchanges/{violation}"),
        ADMIN_KEY,
        "admin",
        None,
    );
    assert_eq!(ok(gone)["deleted"], true);
    clock.set(start + 400 * DAY_MS);
    audit.run_retention().expect("sweep");
    assert!(exchanges(server).is_empty());
    assert_eq!(retention_deleted(server), 4);
}

/// Exchanges begun in the same millisecond (the clock stands still) read back in the
/// order they began: the log orders by time, then by id, and a replica's ids keep its
/// order (the chat socket's blocked input and the regeneration after it once swapped).
#[test]
fn exchanges_of_one_millisecond_read_back_in_the_order_they_began() {
    let start = parse_date("2025-02-01").expect("date");
    let (server, _clock) = clocked(StoreConfig::Memory, start);
    let ids: Vec<String> = (0..12).map(|i| format!("same-ms-{i:02}")).collect();
    for id in &ids {
        let body = json!({"model": MODEL, "prompt": "Count:", "max_tokens": 1});
        ok(post_as(server.addr, "/v1/completions", id, &body));
    }
    flush(&server);
    let read: Vec<String> = exchanges(&server)
        .iter()
        .map(|e| e.record.request_id.clone())
        .collect();
    assert_eq!(read, ids);
    server.shutdown();
}

#[test]
fn retention_deletes_exactly_the_exchanges_past_the_period() {
    let start = parse_date("2025-03-01").expect("date");
    let (server, clock) = clocked(StoreConfig::Memory, start);
    check_retention(&server, &clock, start);
    // A backlog larger than one delete batch goes in several transactions.
    let pool = server.state.audit().expect("log").pool().clone();
    let n = tessera::audit::retention::BATCH as usize * 2 + 3;
    let batch: Vec<_> = (0..n)
        .map(|i| tessera::store::AuditEntry {
            record: tessera::store::AuditRecord {
                id: format!("exch_backlog_{i}"),
                created_at_ms: start + i as i64,
                input: "[]".into(),
                output: "[]".into(),
                hits: "[]".into(),
                ..Default::default()
            },
            review: None,
        })
        .collect();
    pool.run_blocking(move |s| s.append_audit(&batch))
        .expect("backlog");
    let audit = server.state.audit().expect("log");
    assert_eq!(audit.run_retention().expect("sweep"), n as u64);
    assert!(exchanges(&server).is_empty());
    assert_eq!(retention_deleted(&server), 4 + n as u64);
    server.shutdown();
}

#[test]
fn the_log_on_postgresql_holds_every_exchange_once_and_keeps_its_rules() {
    let pg = pg_support::Postgres::start();
    let start = parse_date("2025-06-01").expect("date");
    let url = pg.new_database();
    let (server, clock) = clocked(StoreConfig::Postgres { url: url.clone() }, start);
    let (logged, refused) = workload(server.addr);
    for gone in ["gone-chat", "gone-response"] {
        wait_logged(&server, gone);
    }
    let all = exchanges(&server);
    assert_eq!(all.len(), logged.len());
    for id in &logged {
        the_exchange(&all, id);
    }
    assert!(with_request_id(&all, &refused).is_empty());
    check_kinds(&all);
    let flagged = queue_ids(server.addr, "reason=flagged&verdict=pending");
    assert_eq!(flagged.len(), 3, "blocked, masked, flagged: {flagged:?}");
    assert_eq!(queue_ids(server.addr, "category=violence"), ["blocked"]);
    assert!(all.iter().all(|e| e.record.created_at_ms == start));
    let range = ["--since", "2025-06-01", "--until", "2025-06-02"];
    let (success, stdout, stderr) = export(&[&["--database-url", &url][..], &range].concat());
    assert!(success, "{stderr}");
    let read: Vec<StoredExchange> = stdout
        .lines()
        .map(|l| view::parse(l).expect("a line parses"))
        .collect();
    assert_eq!(
        read, all,
        "the export from PostgreSQL reads back into the log"
    );
    clock.set(start + 181 * DAY_MS);
    let audit = server.state.audit().expect("log");
    audit.run_retention().expect("sweep");
    assert!(
        exchanges(&server).is_empty(),
        "everything was past the period"
    );
    server.shutdown();
    let (server, clock) = clocked(
        StoreConfig::Postgres {
            url: pg.new_database(),
        },
        start,
    );
    check_retention(&server, &clock, start);
    server.shutdown();
}
