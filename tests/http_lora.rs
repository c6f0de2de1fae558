//! LoRA adapters over HTTP: `/v1/models` lists each adapter with the base model as its
//! `parent`; `model: "<adapter>"` runs that adapter on /v1/completions (llama.cpp's greedy
//! text with it), the base name runs the base model; an unknown name is the 404
//! `model_not_found` error on completions and chat.

mod common;
mod http_support;

use http_support::{error_of, get, ok, post, serve, MODEL};
use serde_json::{json, Value};
use tessera::config::{EngineConfig, LoraOptions};
use tessera::engine::handle::{self, EngineHandle};
use tessera::server::ServerConfig;

const ADAPTERS: [&str; 2] = ["llama-attn-r8", "llama-mlp-r4"];

fn engine() -> EngineHandle {
    let base = common::repo_path("tests/fixtures/llama-tiny-f16-mixed.gguf");
    let mut loaded = tessera::model::load(&base, None, |_, _| {}).expect("base loads");
    let options = LoraOptions {
        modules: ADAPTERS
            .iter()
            .map(|a| {
                let path = common::repo_path(&format!("tests/fixtures/lora/{a}.gguf"));
                (a.to_string(), path)
            })
            .collect(),
        max_loras: 2,
        max_lora_rank: 16,
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
