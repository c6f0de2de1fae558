//! `openapi.yaml` is the contract: every route it lists exists on the live server and
//! every route the server has is in it; each operation's example request gets a response
//! that validates against the spec's schema (JSON bodies, and each SSE `data:` event of
//! streamed variants); error responses validate against the `Error` schema.

mod http_support;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use http_support::schema::Spec;
use http_support::{get, post, request, serve, start_engine, Response, MODEL};
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::server::routes::ROUTES;
use tessera::server::{ServerConfig, SpawnedServer};

fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        Spec::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml"))
    })
}

fn server() -> &'static SpawnedServer {
    static SERVER: OnceLock<SpawnedServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let cfg = EngineConfig {
            kv_cache_memory: 128 << 20,
            max_model_len: Some(1024),
            ..EngineConfig::default()
        };
        let policy =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/moderation/example.toml");
        let server_cfg = ServerConfig {
            api_keys: vec!["sk-test".into()],
            // One key for both, so every route's example can be called alike.
            admin_api_keys: vec!["sk-test".into()],
            moderation_policy: Some(policy),
            max_request_bytes: 4096,
            ..ServerConfig::default()
        };
        serve(start_engine(&cfg), cfg.max_num_seqs, server_cfg)
    })
}

const AUTH: (&str, &str) = ("Authorization", "Bearer sk-test");

/// Validates `res` against the spec's response for `method path`.
fn check_response(method: &str, path: &str, res: &Response) {
    let content_type = res
        .header("content-type")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let schema = spec()
        .response_schema(method, path, res.status, &content_type)
        .unwrap_or_else(|| {
            panic!(
                "{method} {path}: the spec has no {} {content_type} response",
                res.status
            )
        });
    if content_type == "text/event-stream" {
        let events = res.sse_data();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        for data in &events[..events.len() - 1] {
            let value: Value = serde_json::from_str(data).expect("SSE data is JSON");
            spec()
                .check(schema, &value)
                .unwrap_or_else(|e| panic!("{method} {path} SSE event: {e}\n{data}"));
        }
    } else if content_type == "application/json" {
        spec()
            .check(schema, &res.json())
            .unwrap_or_else(|e| panic!("{method} {path} {}: {e}\n{}", res.status, res.text()));
    } else {
        spec()
            .check(schema, &Value::String(res.text()))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    }
}

/// The spec's example body for an operation, pointed at the served model name.
fn example(method: &str, path: &str) -> Option<Value> {
    let mut body = spec().operation(method, path)["requestBody"]["content"]["application/json"]
        ["example"]
        .clone();
    if body.is_null() {
        return None;
    }
    if body.get("model").is_some() {
        body["model"] = json!(MODEL);
    }
    if path == "/v1/load_lora_adapter" {
        // An adapter for the served model (SmolLM2), made by scripts/make_lora_fixtures.py.
        let fixture = "tests/fixtures/lora/smollm2-q-r1.gguf";
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        body["lora_path"] = json!(dir.join(fixture).display().to_string());
    }
    Some(body)
}

/// `path` with its parameters filled in: `{model}`, for the dialog routes a new
/// conversation (holding one item) and a new stored response, for the admin routes a
/// new logged exchange (or its thread).
fn concrete(path: &str) -> String {
    let mut concrete = path.replace("{model}", MODEL).replace("{file}", "app.js");
    if concrete.starts_with("/admin/v1/exchanges/") || concrete.starts_with("/admin/v1/threads/") {
        let (exchange, thread) = http_support::logged_exchange(server(), AUTH.1);
        let id = if concrete.starts_with("/admin/v1/threads/") {
            thread
        } else {
            exchange
        };
        return concrete.replace("{id}", &id);
    }
    if concrete.contains("{id}") || concrete.contains("{item_id}") {
        let made = |path: &str, body: Value| {
            let bytes = body.to_string();
            let res = request(server().addr, "POST", path, &[AUTH], Some(bytes.as_bytes()));
            assert_eq!(res.status, 200, "{path}: {}", res.text());
            res.json()
        };
        let id = if concrete.starts_with("/v1/responses/") {
            let body = json!({"model": MODEL, "input": "Hi", "max_output_tokens": 2});
            made("/v1/responses", body)["id"].clone()
        } else {
            let body = json!({"items": [{"role": "user", "content": "Hi"}]});
            let conv = made("/v1/conversations", body)["id"].clone();
            let items = call(
                "GET",
                &format!("/v1/conversations/{}/items", conv.as_str().unwrap_or("")),
                None,
            );
            concrete = concrete.replace(
                "{item_id}",
                items.json()["data"][0]["id"].as_str().unwrap_or(""),
            );
            conv
        };
        concrete = concrete.replace("{id}", id.as_str().unwrap_or(""));
    }
    concrete
}

fn call(method: &str, path: &str, body: Option<&Value>) -> Response {
    let concrete = concrete(path);
    let bytes = body.map(Value::to_string);
    request(
        server().addr,
        method,
        &concrete,
        &[AUTH],
        bytes.as_deref().map(str::as_bytes),
    )
}

#[test]
fn spec_routes_are_exactly_the_server_routes() {
    let in_spec: BTreeSet<(String, String)> = spec().operations().into_iter().collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|&(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        in_spec, served,
        "openapi.yaml and server::routes::ROUTES differ"
    );
    for (method, path) in &in_spec {
        // The LoRA routes get `{}` (400): their examples load and unload an adapter, which
        // `every_example_response_validates_against_its_schema` does, on the same server.
        let lora_route = path.ends_with("_lora_adapter");
        let body = example(method, path)
            .filter(|_| !lora_route)
            .or_else(|| (method == "POST").then(|| json!({})));
        let res = call(method, path, body.as_ref());
        assert!(
            ![404, 405].contains(&res.status),
            "{method} {path}: {} {}",
            res.status,
            res.text()
        );
    }
    let unknown = request(server().addr, "GET", "/v1/engines", &[AUTH], None);
    assert_eq!(unknown.status, 404);
    check_response("GET", "/v1/models", &unknown);
}

#[test]
fn every_example_response_validates_against_its_schema() {
    for (method, path) in spec().operations() {
        let body = example(&method, &path);
        let res = call(&method, &path, body.as_ref());
        if path == "/v1/chat/ws" {
            // A plain GET is not an upgrade: the documented 400 (the socket itself is
            // tested in tests/ws_chat.rs).
            assert_eq!(res.status, 400, "{method} {path}: {}", res.text());
            check_response(&method, &path, &res);
            continue;
        }
        assert_eq!(res.status, 200, "{method} {path}: {}", res.text());
        check_response(&method, &path, &res);
        if let Some(mut streamed) = body.filter(|b| b.get("max_tokens").is_some()) {
            streamed["stream"] = json!(true);
            streamed["stream_options"] = json!({"include_usage": true});
            if path == "/v1/chat/completions" {
                streamed["logprobs"] = json!(true);
                streamed["top_logprobs"] = json!(2);
                streamed["n"] = json!(2);
            }
            let res = call(&method, &path, Some(&streamed));
            assert_eq!(res.status, 200, "{method} {path} streamed: {}", res.text());
            check_response(&method, &path, &res);
        }
    }
    let chat_logprobs = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "logprobs": true, "top_logprobs": 2});
    check_response(
        "POST",
        "/v1/chat/completions",
        &call("POST", "/v1/chat/completions", Some(&chat_logprobs)),
    );
    let echo = json!({"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2, "echo": true, "n": 2, "stream": true});
    check_response(
        "POST",
        "/v1/completions",
        &call("POST", "/v1/completions", Some(&echo)),
    );
    // Prompt logprobs: the echo shape (null first entries), streamed and not, and vLLM's.
    let scored = json!({"model": MODEL, "prompt": "a b c", "max_tokens": 2, "echo": true, "logprobs": 2, "prompt_logprobs": 2});
    let mut streamed = scored.clone();
    streamed["stream"] = json!(true);
    streamed["prompt_logprobs"] = Value::Null;
    let chat_scored = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "prompt_logprobs": 1});
    for (path, body) in [
        ("/v1/completions", scored),
        ("/v1/completions", streamed),
        ("/v1/chat/completions", chat_scored),
    ] {
        let res = call("POST", path, Some(&body));
        assert_eq!(res.status, 200, "{path}: {}", res.text());
        check_response("POST", path, &res);
    }
}

#[test]
fn error_responses_validate_against_the_error_schema() {
    let addr = server().addr;
    let cases: Vec<(&str, &str, Response, u16)> = vec![
        (
            "POST",
            "/v1/chat/completions",
            request(
                addr,
                "POST",
                "/v1/chat/completions",
                &[AUTH],
                Some(b"{oops"),
            ),
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            post(addr, "/v1/chat/completions", &json!({"model": MODEL})),
            401,
        ),
        (
            "POST",
            "/v1/completions",
            call(
                "POST",
                "/v1/completions",
                Some(&json!({"model": "nope", "prompt": "x"})),
            ),
            404,
        ),
        (
            "POST",
            "/v1/completions",
            call(
                "POST",
                "/v1/completions",
                Some(&json!({"model": MODEL, "prompt": "x".repeat(5000)})),
            ),
            413,
        ),
        (
            "GET",
            "/v1/models/{model}",
            request(addr, "GET", "/v1/models/unknown", &[AUTH], None),
            404,
        ),
        (
            "POST",
            "/tokenize",
            call("POST", "/tokenize", Some(&json!({}))),
            400,
        ),
        (
            "POST",
            "/detokenize",
            call("POST", "/detokenize", Some(&json!({"tokens": [1, -1]}))),
            400,
        ),
    ];
    for (method, path, res, status) in cases {
        assert_eq!(res.status, status, "{method} {path}: {}", res.text());
        check_response(method, path, &res);
    }
    assert_eq!(get(addr, "/ready").status, 200);
}

#[test]
fn the_checker_rejects_what_the_spec_forbids() {
    let schemas = &spec().root["components"]["schemas"];
    let usage = json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "prompt_tokens_details": {"cached_tokens": 0}});
    assert!(spec().check(&schemas["Usage"], &usage).is_ok());
    let mut extra = usage.clone();
    extra["surprise"] = json!(1);
    assert!(
        spec().check(&schemas["Usage"], &extra).is_err(),
        "additionalProperties: false"
    );
    let mut missing = usage.clone();
    missing.as_object_mut().unwrap().remove("total_tokens");
    assert!(
        spec().check(&schemas["Usage"], &missing).is_err(),
        "required"
    );
    assert!(
        spec()
            .check(&schemas["FinishReason"], &json!("abort"))
            .is_err(),
        "enum"
    );
    let err = json!({"error": {"message": "m", "type": "t", "param": null, "code": 3}});
    assert!(spec().check(&schemas["Error"], &err).is_err(), "type list");
}
