//! Shared by the conversation-log tests: one engine over the default model, servers with
//! a given log configuration and store, calls with an API key and a request id of the
//! test's choosing, and the log read back from the server's store.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;
use tessera::audit::AuditConfig;
use tessera::config::EngineConfig;
use tessera::dialog::DialogConfig;
use tessera::engine::handle::EngineHandle;
use tessera::server::{ServerConfig, SpawnedServer};
use tessera::store::{Cursor, StoreConfig, StoredExchange};

use super::http_support::{
    request, serve, start_engine, wait_for, Response, SseStream, HANG_GUARD,
};

pub const USER_KEY: &str = "sk-audit-user";
pub const ADMIN_KEY: &str = "sk-audit-admin";
pub const MAX_NUM_SEQS: usize = 40;

/// The moderation policy of the tests (blocks "bomb" and "Paris", masks phone numbers,
/// flags "money laundering").
pub const POLICY: &str = include_str!("../fixtures/moderation/policy.toml");

pub fn engine() -> &'static EngineHandle {
    static ENGINE: OnceLock<EngineHandle> = OnceLock::new();
    ENGINE.get_or_init(|| {
        start_engine(&EngineConfig {
            kv_cache_memory: 256 << 20,
            max_model_len: Some(2048),
            max_num_seqs: MAX_NUM_SEQS,
            ..EngineConfig::default()
        })
    })
}

/// A new empty directory under the temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tessera-audit-{tag}-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn policy_file() -> PathBuf {
    let path = temp_dir("policy").join("policy.toml");
    std::fs::write(&path, POLICY).expect("policy written");
    path
}

/// A server with the test policy, a user key and an admin key, logging with `audit`
/// into `store`.
pub fn server(audit: AuditConfig, store: StoreConfig) -> SpawnedServer {
    let cfg = ServerConfig {
        moderation_policy: Some(policy_file()),
        api_keys: vec![USER_KEY.into()],
        admin_api_keys: vec![ADMIN_KEY.into()],
        dialog: DialogConfig {
            store,
            ..DialogConfig::default()
        },
        audit,
        ..ServerConfig::default()
    };
    serve(engine().clone(), MAX_NUM_SEQS, cfg)
}

fn auth(key: &str) -> String {
    format!("Bearer {key}")
}

/// `method path` with `key` and the request id `id`.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    id: &str,
    body: Option<&Value>,
) -> Response {
    let auth = auth(key);
    let bytes = body.map(Value::to_string);
    request(
        addr,
        method,
        path,
        &[("Authorization", &auth), ("X-Request-Id", id)],
        bytes.as_deref().map(str::as_bytes),
    )
}

/// A POST with the user key and request id `id`.
pub fn post_as(addr: SocketAddr, path: &str, id: &str, body: &Value) -> Response {
    call(addr, "POST", path, USER_KEY, id, Some(body))
}

/// A streamed POST with the user key and request id `id`.
pub fn stream_as(addr: SocketAddr, path: &str, id: &str, body: &Value) -> SseStream {
    let auth = auth(USER_KEY);
    SseStream::open_with(
        addr,
        path,
        &[("Authorization", &auth), ("X-Request-Id", id)],
        body,
    )
}

/// An admin GET; the JSON body (asserting 200).
pub fn admin_get(addr: SocketAddr, path: &str) -> Value {
    let res = call(addr, "GET", path, ADMIN_KEY, "admin", None);
    assert_eq!(res.status, 200, "GET {path}: {}", res.text());
    res.json()
}

/// Waits until the log has written everything submitted so far.
pub fn flush(server: &SpawnedServer) {
    let audit = server.state.audit().expect("the log is on");
    audit.flush(HANG_GUARD).expect("the log is written");
}

/// Waits until an exchange with request id `id` is logged (a request settles when its
/// handler is dropped, a moment after its client left).
pub fn wait_logged(server: &SpawnedServer, id: &str) {
    let logged = wait_for(HANG_GUARD, || {
        !with_request_id(&exchanges(server), id).is_empty()
    });
    assert!(logged, "no exchange with request id {id} was logged");
}

/// Every logged exchange, oldest first (after a flush).
pub fn exchanges(server: &SpawnedServer) -> Vec<StoredExchange> {
    flush(server);
    let pool = server.state.audit().expect("the log is on").pool().clone();
    pool.run_blocking(|s| s.export_audit(i64::MIN, i64::MAX, &Cursor::start(), 1_000_000))
        .expect("the log is readable")
}

/// The exchanges logged with request id `id`.
pub fn with_request_id<'a>(all: &'a [StoredExchange], id: &str) -> Vec<&'a StoredExchange> {
    all.iter().filter(|e| e.record.request_id == id).collect()
}

/// The one exchange logged with request id `id` (asserting there is exactly one).
pub fn the_exchange<'a>(all: &'a [StoredExchange], id: &str) -> &'a StoredExchange {
    let found = with_request_id(all, id);
    assert_eq!(found.len(), 1, "exchanges with request id {id}: {found:#?}");
    found[0]
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("stored JSON")
}

/// Runs `tessera audit export ARGS` (the real binary): (exit success, stdout, stderr).
pub fn export(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["audit", "export"])
        .args(args)
        .env_remove("TESSERA_DATABASE_URL")
        .output()
        .expect("tessera runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (out.status.success(), text(out.stdout), text(out.stderr))
}
