//! Errors, limits and the side routes over real HTTP: the one error mapping (400 naming
//! the field, 404, 405, 413), API keys (401 on `/v1` and tokenize, probes open), request
//! ids, models, `/health`, `/ready`, `/version`, `/metrics`. One engine for the file; a
//! second server with API keys shares it.

mod http_support;

use std::sync::OnceLock;

use http_support::{
    chat, completion, error_of, get, ok, post, request, serve, start_engine, MODEL,
};
use serde_json::json;
use tessera::config::EngineConfig;
use tessera::server::{ServerConfig, SpawnedServer};

struct Servers {
    open: SpawnedServer,
    keyed: SpawnedServer,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let cfg = EngineConfig {
            kv_cache_memory: 128 << 20,
            max_model_len: Some(2048),
            ..EngineConfig::default()
        };
        let engine = start_engine(&cfg);
        let base = ServerConfig {
            max_request_bytes: 64 << 10,
            ..ServerConfig::default()
        };
        let keyed_cfg = ServerConfig {
            api_keys: vec!["sk-first".into(), "sk-second".into()],
            ..base.clone()
        };
        Servers {
            open: serve(engine.clone(), cfg.max_num_seqs, base),
            keyed: serve(engine, cfg.max_num_seqs, keyed_cfg),
        }
    })
}

fn addr() -> std::net::SocketAddr {
    servers().open.addr
}

#[test]
fn models_are_listed_and_unknown_ones_are_404() {
    let list = ok(get(addr(), "/v1/models"));
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(ok(get(addr(), &format!("/v1/models/{MODEL}")))["id"], MODEL);
    let missing = get(addr(), "/v1/models/gpt-4");
    assert_eq!(error_of(&missing, 404)["code"], "model_not_found");
    let wrong_model = post(
        addr(),
        "/v1/chat/completions",
        &chat(json!({"model": "gpt-4"})),
    );
    assert_eq!(error_of(&wrong_model, 404)["param"], "model");
}

#[test]
fn malformed_requests_get_400_naming_the_field() {
    let raw = |body: &str| {
        request(
            addr(),
            "POST",
            "/v1/chat/completions",
            &[],
            Some(body.as_bytes()),
        )
    };
    assert_eq!(
        error_of(&raw("{not json"), 400)["type"],
        "invalid_request_error"
    );
    assert!(error_of(&raw("[1, 2]"), 400)["message"]
        .as_str()
        .unwrap()
        .contains("object"));
    let typed = error_of(
        &post(
            addr(),
            "/v1/chat/completions",
            &chat(json!({"temperature": "hot"})),
        ),
        400,
    );
    assert_eq!(typed["param"], "temperature");
    assert!(typed["message"].as_str().unwrap().contains("hot"));
    let range = error_of(
        &post(addr(), "/v1/chat/completions", &chat(json!({"top_p": 3}))),
        400,
    );
    assert_eq!(range["message"], "`top_p` must be in [0, 1]. Given: 3");
    let nested = error_of(
        &post(
            addr(),
            "/v1/chat/completions",
            &chat(json!({"messages": [{"role": "user", "content": 5}]})),
        ),
        400,
    );
    assert!(
        nested["param"].as_str().unwrap().starts_with("messages[0]"),
        "{nested}"
    );
}

#[test]
fn unsupported_and_out_of_range_requests_get_400_with_the_numbers() {
    let mut body = chat(json!({}));
    body["response_format"] = json!({"type": "json_schema"});
    let err = error_of(&post(addr(), "/v1/chat/completions", &body), 400);
    assert_eq!(err["param"], "response_format");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("`response_format.json_schema`"),
        "{err}"
    );
    let mut body = chat(json!({}));
    body["functions"] = json!([{"name": "f"}]);
    let err = error_of(&post(addr(), "/v1/chat/completions", &body), 400);
    assert_eq!(err["param"], "functions");
    assert!(
        err["message"].as_str().unwrap().contains("not supported"),
        "{err}"
    );
    // Tools are served; a choice naming a tool that `tools` lacks is a 400 naming it.
    let mut body = chat(json!({}));
    body["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "g"}});
    let err = error_of(&post(addr(), "/v1/chat/completions", &body), 400);
    assert_eq!(err["param"], "tool_choice");
    assert!(err["message"].as_str().unwrap().contains("\"g\""), "{err}");
    let ctx = error_of(
        &post(
            addr(),
            "/v1/completions",
            &completion(json!({"max_tokens": 5000})),
        ),
        400,
    );
    assert_eq!(ctx["code"], "context_length_exceeded");
    assert!(
        ctx["message"].as_str().unwrap().contains("2048")
            && ctx["message"].as_str().unwrap().contains("5000"),
        "{ctx}"
    );
    let opts = error_of(
        &post(
            addr(),
            "/v1/chat/completions",
            &chat(json!({"stream_options": {"include_usage": true}})),
        ),
        400,
    );
    assert_eq!(opts["param"], "stream_options");
    let empty = error_of(
        &post(
            addr(),
            "/v1/completions",
            &completion(json!({"prompt": []})),
        ),
        400,
    );
    assert_eq!(empty["param"], "prompt");
}

#[test]
fn routes_sizes_and_methods_map_to_404_413_405() {
    assert_eq!(
        error_of(&get(addr(), "/v2/nothing"), 404)["code"],
        "unknown_route"
    );
    assert_eq!(
        error_of(&get(addr(), "/v1/chat/completions"), 405)["code"],
        "method_not_allowed"
    );
    let big = json!({"model": MODEL, "prompt": "x".repeat(70 << 10)});
    assert_eq!(
        error_of(&post(addr(), "/v1/completions", &big), 413)["code"],
        "request_too_large"
    );
}

#[test]
fn api_keys_guard_v1_and_tokenize_but_not_probes() {
    let keyed = servers().keyed.addr;
    let body = completion(json!({"max_tokens": 2})).to_string();
    let call = |path: &str, auth: Option<&str>| {
        let header = auth.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("Authorization", h.as_str()))
            .collect();
        request(keyed, "POST", path, &headers, Some(body.as_bytes()))
    };
    assert_eq!(
        error_of(&call("/v1/completions", None), 401)["code"],
        "invalid_api_key"
    );
    assert_eq!(
        error_of(&call("/v1/completions", Some("sk-wrong")), 401)["type"],
        "authentication_error"
    );
    assert_eq!(call("/v1/completions", Some("sk-second")).status, 200);
    assert_eq!(call("/tokenize", None).status, 401);
    assert_eq!(request(keyed, "GET", "/v1/models", &[], None).status, 401);
    for open in ["/health", "/ready", "/metrics", "/version"] {
        assert_eq!(get(keyed, open).status, 200, "{open} stays open");
    }
}

#[test]
fn request_ids_are_returned_and_made_when_missing() {
    let made = get(addr(), "/health");
    let id = made
        .header("x-request-id")
        .expect("an id is made")
        .to_string();
    assert_eq!(id.len(), 32);
    assert_ne!(
        get(addr(), "/health").header("x-request-id"),
        Some(id.as_str())
    );
    let kept = request(
        addr(),
        "GET",
        "/v1/models",
        &[("X-Request-Id", "trace-abc")],
        None,
    );
    assert_eq!(kept.header("x-request-id"), Some("trace-abc"));
}

#[test]
fn probes_version_and_metrics() {
    assert_eq!(ok(get(addr(), "/health"))["status"], "ok");
    assert_eq!(ok(get(addr(), "/ready"))["status"], "ready");
    assert_eq!(
        ok(get(addr(), "/version"))["version"],
        env!("CARGO_PKG_VERSION")
    );
    ok(post(
        addr(),
        "/v1/completions",
        &completion(json!({"max_tokens": 2})),
    ));
    let metrics = get(addr(), "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let text = metrics.text();
    for name in [
        tessera::metrics::NUM_REQUESTS_RUNNING,
        tessera::metrics::NUM_REQUESTS_WAITING,
        tessera::metrics::KV_CACHE_BLOCKS_TOTAL,
        tessera::metrics::KV_CACHE_BLOCKS_USED,
        tessera::metrics::PREFIX_CACHE_HITS_TOTAL,
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{text}"
        );
    }
    let length_finishes = text
        .lines()
        .find(|l| l.starts_with("tessera_request_success_total{finished_reason=\"length\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(length_finishes.is_some_and(|n| n >= 1.0), "{text}");
}

#[test]
fn a_stopped_engine_fails_health_and_requests_with_500() {
    let cfg = EngineConfig {
        kv_cache_memory: 16 << 20,
        max_model_len: Some(512),
        ..EngineConfig::default()
    };
    let engine = start_engine(&cfg);
    let server = serve(engine.clone(), cfg.max_num_seqs, ServerConfig::default());
    assert_eq!(ok(get(server.addr, "/health"))["status"], "ok");
    // The engine thread ends while the server still serves (as after a failure it could
    // not recover from): liveness says so, so an orchestrator restarts the process.
    engine.shutdown();
    let health = get(server.addr, "/health");
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json()["status"], "engine_failed");
    let err = error_of(
        &post(server.addr, "/v1/completions", &completion(json!({}))),
        500,
    );
    assert_eq!(err["code"], "internal_error");
    assert!(
        err["message"].as_str().unwrap().contains("restart"),
        "{err}"
    );
    error_of(&get(server.addr, "/ready"), 500);
}
