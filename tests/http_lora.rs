//! LoRA adapters over HTTP: `/v1/models` lists each adapter with the base model as its
//! `parent`; `model: "<adapter>"` runs that adapter on /v1/completions (llama.cpp's greedy
//! text with it), the base name runs the base model; an unknown name is the 404
//! `model_not_found` error on completions and chat. Adapters load and unload at run time
//! (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`): a loaded one gives the same
//! text as one loaded at start, an unloaded one is gone from `/v1/models` and 404s, a
//! name loaded again from another file never hits the previous load's cached blocks;
//! every refusal has vLLM's status and the OpenAI error shape; the routes take the admin
//! key when one is configured, else the API key.

mod common;
mod http_support;

use http_support::{error_of, get, ok, post, request, serve, Response, MODEL};
use serde_json::{json, Value};
use tessera::config::{EngineConfig, LoraOptions};
use tessera::engine::handle::{self, EngineHandle};
use tessera::server::{spawn, ServerConfig};

const ADAPTERS: [&str; 2] = ["llama-attn-r8", "llama-mlp-r4"];

fn adapter_path(stem: &str) -> String {
    let path = common::repo_path(&format!("tests/fixtures/lora/{stem}.gguf"));
    path.display().to_string()
}

/// The tiny llama serving `adapters` (named by their stems), room for `max_loras`.
fn engine_with(adapters: &[&str], max_loras: usize, max_lora_rank: usize) -> EngineHandle {
    let base = common::repo_path("tests/fixtures/llama-tiny-f16-mixed.gguf");
    let mut loaded = tessera::model::load(&base, None, |_, _| {}).expect("base loads");
    let options = LoraOptions {
        modules: adapters
            .iter()
            .map(|a| (a.to_string(), adapter_path(a).into()))
            .collect(),
        max_loras,
        max_lora_rank,
    };
    loaded
        .serve_adapters(&options, &[MODEL.to_string()])
        .expect("adapters load");
    let cfg = EngineConfig {
        kv_cache_memory: 64 << 20,
        ..EngineConfig::default()
    };
    handle::start(loaded, &cfg).expect("engine starts")
}

fn engine() -> EngineHandle {
    engine_with(&ADAPTERS, 2, 16)
}

/// llama.cpp's first `n` greedy tokens of golden `name`'s case `case`, as text.
fn golden_text(engine: &EngineHandle, name: &str, case: &str, n: usize) -> (String, String) {
    let g = common::golden(name);
    let case = g.cases.into_iter().find(|c| c.name == case).expect("case");
    let text = engine
        .model()
        .tokenizer
        .decode(&case.output_ids[..n], false)
        .expect("decodes");
    (case.prompt, text)
}

#[test]
fn adapters_are_served_models_selected_by_name() {
    let engine = engine();
    let server = serve(engine.clone(), 8, ServerConfig::default());
    let models = ok(get(server.addr, "/v1/models"));
    let cards: Vec<&Value> = models["data"].as_array().expect("list").iter().collect();
    let ids: Vec<&str> = cards.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [MODEL, ADAPTERS[0], ADAPTERS[1]]);
    assert_eq!(cards[0]["parent"], Value::Null);
    for card in &cards[1..] {
        assert_eq!(card["parent"], MODEL);
        assert!(card["root"].as_str().unwrap().ends_with(".gguf"), "{card}");
    }
    let card = ok(get(server.addr, &format!("/v1/models/{}", ADAPTERS[1])));
    assert_eq!(card["parent"], MODEL);

    let n = 8;
    for (model, golden) in [
        (MODEL, "llama-tiny-f16-mixed".to_string()),
        (ADAPTERS[0], format!("lora-{}", ADAPTERS[0])),
        (ADAPTERS[1], format!("lora-{}", ADAPTERS[1])),
    ] {
        let (prompt, want) = golden_text(&engine, &golden, "raw_text", n);
        let body = json!({"model": model, "prompt": prompt, "temperature": 0,
            "max_tokens": n, "ignore_eos": true});
        let got = ok(post(server.addr, "/v1/completions", &body));
        assert_eq!(got["model"], model);
        assert_eq!(got["choices"][0]["text"], want, "{model}: completions");
    }
    for route in ["/v1/completions", "/v1/chat/completions"] {
        let body = json!({"model": "no-such-adapter", "prompt": "x",
            "messages": [{"role": "user", "content": "x"}]});
        let err = error_of(&post(server.addr, route, &body), 404);
        assert_eq!(err["code"], "model_not_found", "{route}");
        assert_eq!(err["param"], "model");
    }
    server.shutdown();
    engine.shutdown();
}

/// `POST route` with `body` and an optional bearer `key`.
fn post_as(addr: std::net::SocketAddr, route: &str, body: &Value, key: Option<&str>) -> Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let header = auth.as_deref().map(|a| ("Authorization", a));
    request(
        addr,
        "POST",
        route,
        header.as_slice(),
        Some(body.to_string().as_bytes()),
    )
}

fn load_body(name: &str, path: &str) -> Value {
    json!({"lora_name": name, "lora_path": path})
}

/// `n` greedy tokens of `prompt` under `model`: the text and the prompt tokens the
/// prefix cache served.
fn complete(addr: std::net::SocketAddr, model: &str, prompt: &str, n: usize) -> (String, u64) {
    let body = json!({"model": model, "prompt": prompt, "temperature": 0,
        "max_tokens": n, "ignore_eos": true});
    let got = ok(post(addr, "/v1/completions", &body));
    let cached = got["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens");
    (
        got["choices"][0]["text"].as_str().unwrap().to_string(),
        cached,
    )
}

fn model_ids(addr: std::net::SocketAddr) -> Vec<String> {
    let models = ok(get(addr, "/v1/models"));
    let cards = models["data"].as_array().expect("list");
    cards
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// Load → use → unload → 404, and a name loaded again from another file: its text is the
/// new file's and its first request hits no block of the previous load.
#[test]
fn adapters_load_and_unload_at_run_time() {
    let (attn, mlp) = (ADAPTERS[0], ADAPTERS[1]);
    let engine = engine_with(&[attn], 2, 16);
    let server = serve(engine.clone(), 8, ServerConfig::default());
    let addr = server.addr;
    let n = 8;
    let (prompt, want_attn) = golden_text(&engine, &format!("lora-{attn}"), "chat_long", n);
    let (_, want_mlp) = golden_text(&engine, &format!("lora-{mlp}"), "chat_long", n);

    let loaded = post(
        addr,
        "/v1/load_lora_adapter",
        &load_body("sql", &adapter_path(mlp)),
    );
    assert_eq!(loaded.status, 200, "{}", loaded.text());
    assert_eq!(
        loaded.text(),
        "Success: LoRA adapter 'sql' added successfully."
    );
    assert_eq!(model_ids(addr), [MODEL, attn, "sql"]);
    let card = ok(get(addr, "/v1/models/sql"));
    assert_eq!(card["parent"], MODEL);
    assert_eq!(card["root"], adapter_path(mlp));
    // The run-time load gives llama.cpp's text, as the start-up load of the same file does.
    assert_eq!(complete(addr, "sql", &prompt, n).0, want_mlp);
    assert_eq!(complete(addr, attn, &prompt, n).0, want_attn);

    let unloaded = post(addr, "/v1/unload_lora_adapter", &json!({"lora_name": attn}));
    assert_eq!(unloaded.status, 200, "{}", unloaded.text());
    assert_eq!(
        unloaded.text(),
        format!("Success: LoRA adapter '{attn}' removed successfully.")
    );
    assert_eq!(model_ids(addr), [MODEL, "sql"]);
    let body = json!({"model": attn, "prompt": "x", "max_tokens": 1});
    let gone = error_of(&post(addr, "/v1/completions", &body), 404);
    assert_eq!(gone["code"], "model_not_found");
    assert_eq!(
        error_of(&get(addr, &format!("/v1/models/{attn}")), 404)["param"],
        "model"
    );
    let again = post(addr, "/v1/unload_lora_adapter", &json!({"lora_name": attn}));
    let err = error_of(&again, 404);
    assert_eq!(err["code"], "lora_adapter_not_found");
    assert_eq!(err["param"], "lora_name");

    // The name again, now on the other file: the previous load's K/V (same name, same
    // prompt) must not be served to it.
    let reloaded = post(
        addr,
        "/v1/load_lora_adapter",
        &load_body(attn, &adapter_path(mlp)),
    );
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let (text, cached) = complete(addr, attn, &prompt, n);
    assert_eq!((text.as_str(), cached), (want_mlp.as_str(), 0));
    // Its own blocks it does reuse.
    assert!(complete(addr, attn, &prompt, n).1 > 0);
    server.shutdown();
    engine.shutdown();
}

/// Every refusal of the load route, with vLLM's status and the field it is about.
#[test]
fn bad_loads_are_refused_with_clear_errors() {
    let engine = engine_with(&[ADAPTERS[0]], 2, 8);
    let cfg = ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        served_model_names: vec![MODEL.into(), "alias".into()],
        ..ServerConfig::default()
    };
    let server = spawn(engine.clone(), 8, cfg).expect("server starts");
    let addr = server.addr;
    let readme = common::repo_path("README.md").display().to_string();
    let cases: Vec<(Value, u16, &str, &str, &str)> = vec![
        (
            json!({"lora_path": adapter_path(ADAPTERS[1])}),
            400,
            "invalid_value",
            "lora_name",
            "`lora_name` is required",
        ),
        (
            json!({"lora_name": "x"}),
            400,
            "invalid_value",
            "lora_path",
            "`lora_path` is required",
        ),
        (
            json!({"lora_name": 3, "lora_path": "p"}),
            400,
            "invalid_value",
            "lora_name",
            "lora_name",
        ),
        (
            load_body("x", "/nonexistent/a.gguf"),
            404,
            "lora_adapter_not_found",
            "lora_path",
            "no such file or folder",
        ),
        (
            load_body("x", &readme),
            400,
            "invalid_lora_adapter",
            "lora_path",
            "not a GGUF file",
        ),
        (
            load_body("x", &adapter_path("llama-all-r16")),
            400,
            "invalid_lora_adapter",
            "lora_path",
            "has rank 16; --max-lora-rank allows 1..=8",
        ),
        (
            load_body("x", &adapter_path("qwen2-qv-r8")),
            400,
            "invalid_lora_adapter",
            "lora_path",
            "is for architecture `qwen2`",
        ),
        (
            load_body(ADAPTERS[0], &adapter_path(ADAPTERS[1])),
            400,
            "invalid_value",
            "lora_name",
            "is given twice",
        ),
        (
            load_body(MODEL, &adapter_path(ADAPTERS[1])),
            400,
            "invalid_value",
            "lora_name",
            "is the base model's",
        ),
        (
            load_body("alias", &adapter_path(ADAPTERS[1])),
            400,
            "invalid_value",
            "lora_name",
            "is the base model's",
        ),
    ];
    for (body, status, code, param, message) in cases {
        let err = error_of(&post(addr, "/v1/load_lora_adapter", &body), status);
        assert_eq!(
            (err["code"].as_str(), err["param"].as_str()),
            (Some(code), Some(param)),
            "{body}: {err}"
        );
        let text = err["message"].as_str().unwrap();
        assert!(
            text.contains(message),
            "{body}: expected {message:?} in {text}"
        );
    }
    assert_eq!(
        model_ids(addr),
        [MODEL, "alias", ADAPTERS[0]],
        "no refused load is served"
    );
    // Room for one more: the second is over --max-loras (2).
    ok_text(post(
        addr,
        "/v1/load_lora_adapter",
        &load_body("b", &adapter_path(ADAPTERS[1])),
    ));
    let full = post(
        addr,
        "/v1/load_lora_adapter",
        &load_body("c", &adapter_path(ADAPTERS[1])),
    );
    let err = error_of(&full, 409);
    assert_eq!(err["code"], "max_loras_reached");
    assert!(
        err["message"].as_str().unwrap().contains("--max-loras"),
        "{err}"
    );
    let missing = error_of(&post(addr, "/v1/unload_lora_adapter", &json!({})), 400);
    assert_eq!(missing["param"], "lora_name");
    server.shutdown();
    engine.shutdown();
}

fn ok_text(res: Response) -> String {
    assert_eq!(res.status, 200, "{}", res.text());
    res.text()
}

/// With an admin key configured the routes take only it (an API key is refused); with
/// API keys only, an API key opens them.
#[test]
fn the_routes_take_the_admin_key_when_one_is_set() {
    let engine = engine_with(&[], 1, 16);
    let with_admin = ServerConfig {
        api_keys: vec!["k1".into()],
        admin_api_keys: vec!["a1".into()],
        ..ServerConfig::default()
    };
    let server = serve(engine.clone(), 8, with_admin);
    let body = load_body("x", &adapter_path(ADAPTERS[0]));
    for route in ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"] {
        for key in [None, Some("k1"), Some("wrong")] {
            let err = error_of(&post_as(server.addr, route, &body, key), 401);
            assert_eq!(err["code"], "invalid_admin_key", "{route} with {key:?}");
        }
    }
    ok_text(post_as(
        server.addr,
        "/v1/load_lora_adapter",
        &body,
        Some("a1"),
    ));
    ok_text(post_as(
        server.addr,
        "/v1/unload_lora_adapter",
        &body,
        Some("a1"),
    ));
    server.shutdown();

    let keys_only = ServerConfig {
        api_keys: vec!["k1".into()],
        ..ServerConfig::default()
    };
    let server = serve(engine.clone(), 8, keys_only);
    let err = error_of(
        &post_as(server.addr, "/v1/load_lora_adapter", &body, None),
        401,
    );
    assert_eq!(err["code"], "invalid_api_key");
    ok_text(post_as(
        server.addr,
        "/v1/load_lora_adapter",
        &body,
        Some("k1"),
    ));
    server.shutdown();
    engine.shutdown();
}
