//! Field rules that real OpenAI clients and benchmark tools depend on, over real HTTP:
//! `min_tokens` against each prompt's own budget, OpenAI's sampling ranges, integer
//! fields given as integer-valued floats, the `/tokenize` and `/detokenize` edge cases
//! `openapi.yaml` documents. One engine for the file.

mod http_support;

use std::sync::OnceLock;

use http_support::{chat, completion, error_of, ok, post, serve, start_engine};
use serde_json::json;
use tessera::config::EngineConfig;
use tessera::server::{ServerConfig, SpawnedServer};

fn addr() -> std::net::SocketAddr {
    static SERVER: OnceLock<SpawnedServer> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let cfg = EngineConfig {
                kv_cache_memory: 128 << 20,
                max_model_len: Some(1024),
                ..EngineConfig::default()
            };
            serve(
                start_engine(&cfg),
                cfg.max_num_seqs,
                ServerConfig::default(),
            )
        })
        .addr
}

/// What benchmark clients send: exactly `max_tokens` tokens, EOS ignored. It used to be
/// refused with "`min_tokens` must be <= max_tokens (1)" (checked against a placeholder).
#[test]
fn min_tokens_up_to_the_prompts_max_tokens_is_accepted() {
    let body = completion(json!({"max_tokens": 8, "min_tokens": 8, "ignore_eos": true}));
    let res = ok(post(addr(), "/v1/completions", &body));
    assert_eq!(res["usage"]["completion_tokens"], 8, "{res}");
    assert_eq!(res["choices"][0]["finish_reason"], "length");

    // Chat without `max_tokens`: the budget is what the context leaves.
    let res = ok(post(
        addr(),
        "/v1/chat/completions",
        &json!({"model": http_support::MODEL, "messages": [{"role": "user", "content": "Hi"}],
                "min_tokens": 4, "max_completion_tokens": 4, "ignore_eos": true}),
    ));
    assert_eq!(res["usage"]["completion_tokens"], 4, "{res}");

    // Above the prompt's budget is still refused, naming the resolved budget.
    let over = completion(json!({"max_tokens": 8, "min_tokens": 9}));
    let err = error_of(&post(addr(), "/v1/completions", &over), 400);
    assert_eq!(err["param"], "min_tokens");
    assert_eq!(
        err["message"],
        "`min_tokens` must be <= max_tokens (8). Given: 9"
    );
    // Several prompts: each is checked against its own budget.
    let two = completion(json!({"prompt": ["a", "b"], "max_tokens": 3, "min_tokens": 3}));
    let res = ok(post(addr(), "/v1/completions", &two));
    assert_eq!(res["choices"].as_array().map(Vec::len), Some(2));
}

/// OpenAI answers 400 for a temperature outside [0, 2]; top_p accepts [0, 1] (0 keeps
/// only the most likely token).
#[test]
fn sampling_fields_outside_openais_ranges_are_refused() {
    for bad in [5.0, 2.01, -0.5] {
        let res = post(
            addr(),
            "/v1/chat/completions",
            &chat(json!({"temperature": bad})),
        );
        let err = error_of(&res, 400);
        assert_eq!(err["param"], "temperature", "{bad}");
        assert_eq!(
            err["message"],
            format!("`temperature` must be in [0, 2]. Given: {bad}")
        );
    }
    for (field, bad) in [
        ("top_p", 1.5),
        ("top_p", -0.1),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3.0),
    ] {
        let res = post(addr(), "/v1/completions", &completion(json!({field: bad})));
        assert_eq!(error_of(&res, 400)["param"], field, "{field} = {bad}");
    }
    let edge = completion(json!({"temperature": 2, "top_p": 0, "seed": 7, "max_tokens": 4}));
    let greedy = completion(json!({"temperature": 0, "max_tokens": 4}));
    let edge_text = ok(post(addr(), "/v1/completions", &edge))["choices"][0]["text"].clone();
    let greedy_text = ok(post(addr(), "/v1/completions", &greedy))["choices"][0]["text"].clone();
    assert_eq!(edge_text, greedy_text, "top_p 0 keeps only the top token");
}
