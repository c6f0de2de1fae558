//! The conversation log on a PostgreSQL that stops answering: the database server and
//! its backends frozen by pid (SIGSTOP), so every log write hangs. Once the oldest
//! unwritten exchange is older than `--audit-max-lag`, new requests get 503
//! `audit_unavailable` and `/ready` says so; when the database runs again (SIGCONT) the
//! log catches up, requests are served again, and every served exchange is in the log
//! exactly once (the refused one is not: it was never served).

mod audit_support;
mod http_support;
mod pg_support;

use std::time::Duration;

use audit_support::*;
use http_support::{error_of, get, ok, wait_for, Response, HANG_GUARD, MODEL};
use serde_json::json;
use tessera::audit::AuditConfig;
use tessera::store::StoreConfig;

fn chat(addr: std::net::SocketAddr, id: &str) -> Response {
    let body = json!({"model": MODEL, "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}]});
    post_as(addr, "/v1/chat/completions", id, &body)
}

#[test]
fn a_stalled_postgresql_stops_new_requests_until_it_answers_again() {
    let pg = pg_support::Postgres::start();
    let audit = AuditConfig {
        max_lag: Duration::from_millis(500),
        review_sample_rate: 0.0,
        ..AuditConfig::default()
    };
    let url = pg.new_database();
    let server = server(audit, StoreConfig::Postgres { url });
    let addr = server.addr;
    ok(chat(addr, "before"));
    flush(&server);

    pg.pause();
    ok(chat(addr, "during"));
    let stalled = wait_for(HANG_GUARD, || get(addr, "/ready").status == 503);
    assert!(stalled, "/ready reports the stalled log");
    assert_eq!(
        error_of(&get(addr, "/ready"), 503)["code"],
        "audit_unavailable"
    );
    let refused = chat(addr, "refused");
    assert_eq!(error_of(&refused, 503)["code"], "audit_unavailable");
    let metrics = get(addr, "/metrics").text();
    let lag_line = metrics
        .lines()
        .find(|l| l.starts_with("tessera_audit_write_lag_seconds{"))
        .expect("the lag gauge is exported");
    let lag: f64 = lag_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(lag > 0.0, "the gauge shows the lag: {lag_line}");

    pg.resume();
    let recovered = wait_for(HANG_GUARD, || get(addr, "/ready").status == 200);
    assert!(recovered, "/ready recovers once the database answers");
    ok(chat(addr, "after"));
    let logged: Vec<String> = exchanges(&server)
        .into_iter()
        .map(|e| e.record.request_id)
        .collect();
    assert_eq!(logged, ["before", "during", "after"]);
    server.shutdown();
}
