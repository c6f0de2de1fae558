//! Shared by the moderation HTTP tests: one engine over the default model, a plain
//! server and a moderated one (the test policy, an API key and an admin key), and
//! helpers to call them and check answers against `openapi.yaml`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
use tessera::server::{ServerConfig, SpawnedServer};

use super::http_support::schema::Spec;
use super::http_support::{chat, merge, request, serve, start_engine, Response, SseStream};

pub const USER_KEY: &str = "sk-user";
pub const ADMIN_KEY: &str = "sk-admin";

/// Blocks "炸弹", "bomb", "make a bomb" (input and output) and "Paris" (output), masks
/// mainland phone numbers, flags "洗钱" and "money laundering" (shared with the unit tests).
pub const POLICY: &str = include_str!("../fixtures/moderation/policy.toml");

pub struct Fixture {
    pub engine: EngineHandle,
    pub plain: SpawnedServer,
    pub moderated: SpawnedServer,
}

pub fn write_policy(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-http-moderation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("policy written");
    path
}

pub fn moderated_config(policy: PathBuf) -> ServerConfig {
    ServerConfig {
        moderation_policy: Some(policy),
        api_keys: vec![USER_KEY.into()],
        admin_api_keys: vec![ADMIN_KEY.into()],
        ..ServerConfig::default()
    }
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let cfg = EngineConfig {
            kv_cache_memory: 256 << 20,
            max_model_len: Some(2048),
            max_num_seqs: 40,
            ..EngineConfig::default()
        };
        let engine = start_engine(&cfg);
        let plain = serve(engine.clone(), cfg.max_num_seqs, ServerConfig::default());
        let policy = write_policy("policy.toml", POLICY);
        let moderated = serve(engine.clone(), cfg.max_num_seqs, moderated_config(policy));
        Fixture {
            engine,
            plain,
            moderated,
        }
    })
}

pub fn authed(addr: SocketAddr, path: &str, key: &str, body: &Value) -> Response {
    let auth = format!("Bearer {key}");
    request(
        addr,
        "POST",
        path,
        &[("Authorization", &auth)],
        Some(body.to_string().as_bytes()),
    )
}

/// POST to the moderated server with the user key.
pub fn post_m(path: &str, body: &Value) -> Response {
    authed(fixture().moderated.addr, path, USER_KEY, body)
}

/// Asserts that `value` (a whole response, or one SSE chunk when `sse`) is what
/// `openapi.yaml` says `POST path` answers.
pub fn conforms(path: &str, sse: bool, value: &Value) {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        Spec::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml"))
    });
    let kind = if sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    let schema = spec
        .response_schema("POST", path, 200, kind)
        .expect("the spec has the response");
    spec.check(schema, value)
        .unwrap_or_else(|e| panic!("POST {path}: {e}\n{value}"));
}

pub fn stream_m(path: &str, body: &Value) -> Vec<String> {
    let auth = format!("Bearer {USER_KEY}");
    let stream = SseStream::open_with(
        fixture().moderated.addr,
        path,
        &[("Authorization", &auth)],
        body,
    );
    assert_eq!(stream.status, 200);
    stream.rest()
}

/// A greedy chat request with one user message and `extra` fields.
pub fn greedy_chat(content: &str, extra: Value) -> Value {
    let mut body =
        chat(json!({"temperature": 0, "messages": [{"role": "user", "content": content}]}));
    merge(&mut body, extra);
    body
}
