//! The conversation log's operations: the admin API (admin keys only; reading exchanges
//! and whole dialogs, verdicts, deletes, refused bad queries), `tessera audit export`
//! read back into the records it was written from, a log that cannot be written
//! (503 `audit_unavailable` and `/ready` until it recovers, nothing lost), and the
//! pending records written before the process exits on SIGTERM (the real binary, its
//! store failing through the test hook until the shutdown has begun).

mod audit_support;
mod http_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use audit_support::*;
use http_support::{error_of, get, ok, typed_events, wait_for, HANG_GUARD, MODEL};
use serde_json::{json, Value};
use tessera::audit::time::{parse_date, DAY_MS};
use tessera::audit::{view, AuditConfig, ClockRef, ManualClock, FAIL_FILE_ENV};
use tessera::server::ServerConfig;
use tessera::store::{Cursor, StoreConfig, StorePool, Verdict};

fn quiet() -> AuditConfig {
    AuditConfig {
        review_sample_rate: 0.0,
        ..AuditConfig::default()
    }
}

fn turn(input: &str, previous: Option<&Value>) -> Value {
    json!({"model": MODEL, "input": input, "max_output_tokens": 3, "previous_response_id": previous})
}

/// The admin routes, with an existing exchange id and thread id filled in.
fn admin_routes(exchange: &str, thread: &str) -> Vec<(&'static str, String, Option<Value>)> {
    let review = json!({"verdict": "ok", "reviewer": "x"});
    vec![
        ("GET", "/admin/v1/review/queue".into(), None),
        ("GET", format!("/admin/v1/exchanges/{exchange}"), None),
        (
            "POST",
            format!("/admin/v1/exchanges/{exchange}/review"),
            Some(review),
        ),
        ("DELETE", format!("/admin/v1/exchanges/{exchange}"), None),
        ("GET", format!("/admin/v1/threads/{thread}"), None),
    ]
}

fn refuses_bad_queries(addr: SocketAddr, exchange: &str) {
    let bad = |path: &str, param: &str| {
        let res = call(addr, "GET", path, ADMIN_KEY, "admin", None);
        assert_eq!(error_of(&res, 400)["param"], param, "{path}");
    };
    bad("/admin/v1/review/queue?reason=bored", "reason");
    bad("/admin/v1/review/queue?verdict=maybe", "verdict");
    bad("/admin/v1/review/queue?since=yesterday", "since");
    bad("/admin/v1/review/queue?limit=0", "limit");
    bad("/admin/v1/review/queue?after=exch_nope", "after");
    bad("/admin/v1/review/queue?limit=", "limit");
    // Empty filters are not given (as forms send them).
    admin_get(
        addr,
        "/admin/v1/review/queue?category=&since=&until=&after=",
    );
    let review = |body: Value, param: &str| {
        let path = format!("/admin/v1/exchanges/{exchange}/review");
        let res = call(addr, "POST", &path, ADMIN_KEY, "admin", Some(&body));
        assert_eq!(error_of(&res, 400)["param"], param, "{body}");
    };
    review(json!({"verdict": "fine", "reviewer": "a"}), "verdict");
    review(json!({"verdict": "ok"}), "reviewer");
    review(
        json!({"verdict": "ok", "reviewer": "a", "note": "n".repeat(4001)}),
        "note",
    );
    for path in [
        "/admin/v1/exchanges/exch_nope",
        "/admin/v1/threads/resp_nope",
    ] {
        let res = call(addr, "GET", path, ADMIN_KEY, "admin", None);
        assert_eq!(error_of(&res, 404)["code"], "not_found");
    }
}

#[test]
fn the_admin_api_takes_only_admin_keys_and_reads_whole_dialogs() {
    let server = server(quiet(), StoreConfig::Memory);
    let addr = server.addr;
    let first = ok(post_as(addr, "/v1/responses", "t-1", &turn("Hi.", None)));
    let second = ok(post_as(
        addr,
        "/v1/responses",
        "t-2",
        &turn("And?", Some(&first["id"])),
    ));
    let third = turn("So?", Some(&second["id"]));
    let mut third_stream = third.clone();
    third_stream["stream"] = json!(true);
    typed_events(stream_as(addr, "/v1/responses", "t-3", &third_stream));
    let all = exchanges(&server);
    let exchange = the_exchange(&all, "t-2").record.id.clone();
    let thread = first["id"].as_str().expect("id").to_string();
    refuses_other_keys(addr, &exchange, &thread);
    reads_the_whole_dialog(addr, &thread);
    let one = call(
        addr,
        "GET",
        &format!("/admin/v1/exchanges/{exchange}"),
        ADMIN_KEY,
        "a",
        None,
    );
    assert_eq!(one.header("cache-control"), Some("no-store"));
    assert_eq!(one.json(), view::to_json(the_exchange(&all, "t-2")));
    refuses_bad_queries(addr, &exchange);
    reviews_and_deletes(addr, &exchange);
    server.shutdown();
}

/// Every admin route refuses an ordinary API key and no key alike.
fn refuses_other_keys(addr: SocketAddr, exchange: &str, thread: &str) {
    for (method, path, body) in admin_routes(exchange, thread) {
        let as_user = call(addr, method, &path, USER_KEY, "u", body.as_ref());
        assert_eq!(
            error_of(&as_user, 401)["code"],
            "invalid_admin_key",
            "{method} {path}"
        );
        let bare = http_support::request(addr, method, &path, &[], None);
        assert_eq!(
            error_of(&bare, 401)["code"],
            "invalid_admin_key",
            "{method} {path}"
        );
    }
}

/// The thread of turns t-1, t-2, t-3, whole and in pages.
fn reads_the_whole_dialog(addr: SocketAddr, thread: &str) {
    let dialog = admin_get(addr, &format!("/admin/v1/threads/{thread}"));
    let order: Vec<&str> = dialog["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["request_id"].as_str().expect("id"))
        .collect();
    assert_eq!(order, ["t-1", "t-2", "t-3"]);
    assert_eq!(
        dialog["data"][1]["input"],
        json!([{"role": "user", "content": "And?"}])
    );
    let page = admin_get(addr, &format!("/admin/v1/threads/{thread}?limit=2"));
    assert_eq!(
        (
            page["data"].as_array().map(Vec::len),
            page["has_more"].clone()
        ),
        (Some(2), json!(true))
    );
    let rest = admin_get(
        addr,
        &format!(
            "/admin/v1/threads/{thread}?after={}",
            page["last_id"].as_str().expect("last")
        ),
    );
    assert_eq!(rest["data"][0]["request_id"], "t-3");
}

/// A verdict puts the exchange in the queue under it; a delete takes it out.
fn reviews_and_deletes(addr: SocketAddr, exchange: &str) {
    let body = json!({"verdict": "ok", "reviewer": "auditor-7", "note": "fine"});
    let path = format!("/admin/v1/exchanges/{exchange}/review");
    let reviewed = ok(call(addr, "POST", &path, ADMIN_KEY, "a", Some(&body)));
    assert_eq!(reviewed["review"]["verdict"], "ok");
    assert_eq!(reviewed["review"]["reviewer"], "auditor-7");
    let listed = admin_get(addr, "/admin/v1/review/queue?verdict=ok");
    assert_eq!(listed["data"][0]["id"], json!(exchange));
    let gone = ok(call(
        addr,
        "DELETE",
        &format!("/admin/v1/exchanges/{exchange}"),
        ADMIN_KEY,
        "a",
        None,
    ));
    assert_eq!(gone["deleted"], true);
    assert!(admin_get(addr, "/admin/v1/review/queue")["data"]
        .as_array()
        .expect("data")
        .is_empty());
}

#[test]
fn without_admin_keys_or_a_log_the_admin_api_has_nothing() {
    let closed = http_support::serve(engine().clone(), 4, ServerConfig::default());
    let res = http_support::request(closed.addr, "GET", "/admin/v1/review/queue", &[], None);
    assert_eq!(error_of(&res, 403)["code"], "admin_api_disabled");
    closed.shutdown();
    let off = server_without_log();
    let res = call(
        off.addr,
        "GET",
        "/admin/v1/review/queue",
        ADMIN_KEY,
        "a",
        None,
    );
    assert_eq!(error_of(&res, 404)["code"], "audit_log_disabled");
    ok(post_as(
        off.addr,
        "/v1/completions",
        "unlogged",
        &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
    ));
    off.shutdown();
}

fn server_without_log() -> tessera::server::SpawnedServer {
    server(
        AuditConfig {
            enabled: false,
            ..AuditConfig::default()
        },
        StoreConfig::Memory,
    )
}

/// Four chats through `addr`, the clock set to `day`, `day` + 1 (twice, a minute apart)
/// and `day` + 2 (d2b is blocked by the policy: logged as refused); their request ids.
fn log_four_exchanges(addr: SocketAddr, clock: &ManualClock, day: i64) -> Vec<&'static str> {
    let mut ids = Vec::new();
    for (offset, id, text) in [
        (0, "d1", "one"),
        (DAY_MS, "d2a", "two"),
        // A minute later: the export is ordered by time (ties by the random id).
        (DAY_MS + 60_000, "d2b", "a bomb"),
        (2 * DAY_MS, "d3", "four"),
    ] {
        clock.set(day + offset);
        let res = post_as(
            addr,
            "/v1/chat/completions",
            id,
            &json!({"model": MODEL, "max_tokens": 2,
            "messages": [{"role": "user", "content": text}]}),
        );
        assert!(res.status == 200 || res.status == 400, "{}", res.text());
        ids.push(id);
    }
    ids
}

/// Bad arguments and a missing store are refused, naming what is wrong.
fn refuses_bad_exports(data_dir: &str) {
    for (args, says) in [
        (vec!["--since", "2025-01-10", "--format", "csv"], "--format"),
        (vec!["--since", "last week"], "--since"),
        (
            vec!["--since", "2025-01-12", "--until", "2025-01-11"],
            "--until",
        ),
    ] {
        let (success, _, stderr) = export(&[&["--data-dir", data_dir][..], &args].concat());
        assert!(!success && stderr.contains(says), "{args:?}: {stderr}");
    }
    let (success, _, stderr) = export(&[
        "--data-dir",
        "/nonexistent/tessera",
        "--since",
        "2025-01-01",
    ]);
    assert!(
        !success && stderr.contains("no conversation log"),
        "{stderr}"
    );
}

#[test]
fn the_export_reads_back_into_the_records_it_was_written_from() {
    let dir = temp_dir("export");
    let day = parse_date("2025-01-10T12:00:00Z").expect("date");
    let clock = ManualClock::new(day);
    let audit = AuditConfig {
        clock: ClockRef(clock.clone()),
        ..quiet()
    };
    let store = StoreConfig::Sqlite {
        data_dir: dir.clone(),
    };
    let server = server(audit, store);
    let addr = server.addr;
    let ids = log_four_exchanges(addr, &clock, day);
    let d2b = the_exchange(&exchanges(&server), "d2b").record.id.clone();
    let body = json!({"verdict": "violation", "reviewer": "r", "note": "threat"});
    let path = format!("/admin/v1/exchanges/{d2b}/review");
    ok(call(addr, "POST", &path, ADMIN_KEY, "a", Some(&body)));
    let all = exchanges(&server);
    let data_dir = dir.to_string_lossy().into_owned();
    let one_day = [
        "--data-dir",
        &data_dir,
        "--since",
        "2025-01-11",
        "--until",
        "2025-01-12",
        "--format",
        "jsonl",
    ];
    let (success, stdout, stderr) = export(&one_day);
    assert!(success, "{stderr}");
    assert!(stderr.contains("exported 2 exchanges"), "{stderr}");
    let read: Vec<_> = stdout
        .lines()
        .map(|l| view::parse(l).expect("a line parses"))
        .collect();
    let want: Vec<_> = ["d2a", "d2b"]
        .iter()
        .map(|id| the_exchange(&all, id).clone())
        .collect();
    assert_eq!(read, want, "the export reads back into the stored records");
    assert_eq!(
        read[1].review.as_ref().and_then(|r| r.verdict),
        Some(Verdict::Violation)
    );
    for line in stdout.lines() {
        let value: Value = serde_json::from_str(line).expect("json");
        let path = format!("/admin/v1/exchanges/{}", value["id"].as_str().expect("id"));
        let shown = admin_get(addr, &path);
        assert_eq!(value, shown, "the export and the admin API agree");
    }
    let file = dir.join("all.jsonl");
    let file_arg = file.to_string_lossy().into_owned();
    let whole = [
        "--data-dir",
        &data_dir,
        "--since",
        "2025-01-10",
        "-o",
        &file_arg,
    ];
    let (success, _, stderr) = export(&whole);
    assert!(success, "{stderr}");
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .expect("file")
        .lines()
        .map(|l| view::parse(l).expect("parses").record.request_id)
        .collect();
    assert_eq!(lines, ids, "oldest first, the whole range");
    refuses_bad_exports(&data_dir);
    server.shutdown();
}

#[test]
fn a_log_that_cannot_be_written_stops_new_requests_until_it_recovers() {
    let fail = temp_dir("lag").join("fail");
    std::fs::write(&fail, "").expect("hook file");
    let audit = AuditConfig {
        max_lag: Duration::from_millis(300),
        fail_file: Some(fail.clone()),
        ..quiet()
    };
    let server = server(audit, StoreConfig::Memory);
    let addr = server.addr;
    let chat = |id: &str| {
        post_as(
            addr,
            "/v1/chat/completions",
            id,
            &json!({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    ok(chat("before"));
    let lagging = wait_for(HANG_GUARD, || get(addr, "/ready").status == 503);
    assert!(lagging, "/ready reports the lag");
    assert_eq!(
        error_of(&get(addr, "/ready"), 503)["code"],
        "audit_unavailable"
    );
    let refused = chat("refused");
    assert_eq!(error_of(&refused, 503)["code"], "audit_unavailable");
    assert!(refused.header("retry-after").is_some());
    let turn = post_as(
        addr,
        "/v1/responses",
        "refused-turn",
        &json!({"model": MODEL, "input": "hi"}),
    );
    assert_eq!(error_of(&turn, 503)["code"], "audit_unavailable");
    let metrics = get(addr, "/metrics").text();
    assert!(
        !metrics.contains("tessera_audit_write_failures_total{model_name=\"smol\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("tessera_audit_records_total{model_name=\"smol\"} 0"));
    std::fs::remove_file(&fail).expect("the store works again");
    assert!(
        wait_for(HANG_GUARD, || get(addr, "/ready").status == 200),
        "recovered"
    );
    ok(chat("after"));
    let all = exchanges(&server);
    let logged: Vec<&str> = all.iter().map(|e| e.record.request_id.as_str()).collect();
    assert_eq!(
        logged,
        ["before", "after"],
        "nothing lost, nothing refused was served"
    );
    server.shutdown();
}

/// `tessera serve` with its conversation log in `dir`, failing while `fail` exists.
struct Binary {
    child: Child,
    addr: SocketAddr,
    lines: Receiver<String>,
}

impl Binary {
    fn start(dir: &Path, fail: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--served-model-name",
                MODEL,
            ])
            .args([
                "--max-model-len",
                "512",
                "--kv-cache-memory",
                "64MiB",
                "--audit-max-lag",
                "600",
            ])
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env(FAIL_FILE_ENV, fail)
            .env("RUST_LOG", "info")
            .env_remove("TESSERA_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tessera starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
        };
        let listening = server.wait_line("listening on http://");
        let addr = listening
            .split("listening on http://")
            .nth(1)
            .and_then(|r| r.split([' ', '"']).next());
        server.addr = addr.and_then(|a| a.parse().ok()).expect("address");
        assert!(
            wait_for(HANG_GUARD, || get(server.addr, "/ready").status == 200),
            "ready"
        );
        server
    }

    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "SIGTERM sent");
    }

    /// Waits for the process to exit: whether it exited 0, and the log lines not yet
    /// read (up to the end of its stderr).
    fn exit(mut self) -> (bool, Vec<String>) {
        let deadline = Instant::now() + HANG_GUARD;
        let success = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.success();
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(HANG_GUARD) {
            rest.push(line);
        }
        (success, rest)
    }
}

/// Request ids in the conversation log in `dir`.
fn logged_in(dir: &Path) -> Vec<String> {
    let pool = StorePool::open(&StoreConfig::Sqlite {
        data_dir: dir.to_path_buf(),
    })
    .expect("store");
    let all = pool
        .run_blocking(|s| s.export_audit(i64::MIN, i64::MAX, &Cursor::start(), 1000))
        .expect("log");
    all.into_iter().map(|e| e.record.request_id).collect()
}

fn three_completions(addr: SocketAddr) -> Vec<String> {
    let ids: Vec<String> = (0..3).map(|i| format!("exit-{i}")).collect();
    for id in &ids {
        let res = http_support::request(
            addr,
            "POST",
            "/v1/completions",
            &[("X-Request-Id", id)],
            Some(
                json!({"model": MODEL, "prompt": id, "max_tokens": 2})
                    .to_string()
                    .as_bytes(),
            ),
        );
        assert_eq!(res.status, 200, "{}", res.text());
    }
    ids
}

#[test]
fn pending_exchanges_are_written_before_the_process_exits() {
    let dir = temp_dir("exit");
    let fail = dir.join("fail");
    std::fs::write(&fail, "").expect("hook file");
    let server = Binary::start(&dir.join("data"), &fail, &[]);
    let ids = three_completions(server.addr);
    let metrics = get(server.addr, "/metrics").text();
    assert!(
        metrics.contains("tessera_audit_records_total{model_name=\"smol\"} 0"),
        "nothing written yet"
    );
    server.terminate();
    let flushing = server.wait_line("flushing the conversation log before exit");
    assert!(flushing.contains("pending=3"), "{flushing}");
    std::fs::remove_file(&fail).expect("the store works again");
    server.wait_line("conversation log flushed");
    assert!(server.exit().0, "a clean exit");
    assert_eq!(logged_in(&dir.join("data")), ids);

    // A store that never comes back: the exit says what was lost, with status 1.
    let dir = temp_dir("exit-lost");
    std::fs::write(&fail, "").expect("hook file");
    let server = Binary::start(&dir.join("data"), &fail, &["--shutdown-timeout", "1"]);
    let ids = three_completions(server.addr);
    server.terminate();
    let (clean, lines) = server.exit();
    assert!(!clean, "exit status 1");
    let lost: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("could not be written before exit"))
        .collect();
    for id in &ids {
        let named = lost.iter().any(|l| l.contains(&format!("\"{id}\"")));
        assert!(named, "{id} is named as lost: {lost:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("3 exchanges could not be written to the conversation log")),
        "{lines:?}"
    );
    assert!(logged_in(&dir.join("data")).is_empty());
}
