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

/// OpenAI's legacy `echo` + `logprobs`: the prompt's tokens lead the logprobs (the first
/// with `null`), then the completion's; the values equal vLLM's `prompt_logprobs` for the
/// same prompt, streamed or not, and a prefix-cache hit is not taken for them.
#[test]
fn echo_with_logprobs_scores_the_prompt() {
    let prompt = "The capital of France is";
    let body = json!({"model": http_support::MODEL, "prompt": prompt, "max_tokens": 3,
                      "temperature": 0, "echo": true, "logprobs": 2, "prompt_logprobs": 1});
    let res = ok(post(addr(), "/v1/completions", &body));
    let choice = &res["choices"][0];
    let n_prompt = res["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert!(choice["text"].as_str().unwrap().starts_with(prompt));
    let lp = &choice["logprobs"];
    let token_logprobs = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_logprobs.len(), n_prompt + 3, "{lp}");
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n_prompt + 3);
    assert!(token_logprobs[0].is_null() && lp["top_logprobs"][0].is_null());
    assert_eq!(lp["text_offset"][0], 0);
    for (i, v) in token_logprobs.iter().enumerate().skip(1) {
        let v = v.as_f64().unwrap_or_else(|| panic!("token {i}: {v}"));
        assert!(v <= 0.0, "token {i}: {v}");
        let alternatives = lp["top_logprobs"][i].as_object().unwrap();
        assert!(
            (2..=3).contains(&alternatives.len()),
            "token {i}: {alternatives:?}"
        );
    }
    // vLLM's shape on the same choice: the same numbers, keyed by token id.
    let ids = ok(post(addr(), "/tokenize", &json!({"prompt": prompt})))["tokens"].clone();
    let vllm = choice["prompt_logprobs"].as_array().unwrap();
    assert_eq!(vllm.len(), n_prompt);
    assert!(vllm[0].is_null());
    for i in 1..n_prompt {
        let entry = &vllm[i][ids[i].to_string()];
        assert_eq!(entry["logprob"], token_logprobs[i], "token {i}");
        assert!(entry["rank"].as_u64().unwrap() >= 1);
        assert_eq!(entry["decoded_token"], lp["tokens"][i]);
    }

    // The same again: the prompt is in the prefix cache now, but is recomputed.
    let again = ok(post(addr(), "/v1/completions", &body));
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(again["choices"][0]["logprobs"], *lp);

    // Streamed: the echo chunk carries the prompt's logprobs.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed.as_object_mut().unwrap().remove("prompt_logprobs");
    let events = post(addr(), "/v1/completions", &streamed).sse_data();
    let first: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], prompt);
    let first_lp = &first["choices"][0]["logprobs"];
    assert_eq!(
        first_lp["token_logprobs"].as_array().unwrap()[..],
        token_logprobs[..n_prompt]
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

/// vLLM's `prompt_logprobs`: on each completion choice, on the chat response; refused
/// with `stream` and outside 0..=20.
#[test]
fn prompt_logprobs_shapes_and_limits() {
    let chat_body = chat(json!({"prompt_logprobs": 2, "n": 2, "max_tokens": 2}));
    let res = ok(post(addr(), "/v1/chat/completions", &chat_body));
    let n_prompt = res["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    let lp = res["prompt_logprobs"]
        .as_array()
        .expect("top-level prompt_logprobs");
    assert_eq!(lp.len(), n_prompt);
    assert!(lp[0].is_null());
    for entry in &lp[1..] {
        let listed = entry.as_object().unwrap();
        assert!((2..=3).contains(&listed.len()), "{entry}");
        let ranks: Vec<u64> = listed
            .values()
            .map(|v| v["rank"].as_u64().unwrap())
            .collect();
        assert!(ranks.contains(&1) && ranks.contains(&2), "{entry}");
    }
    let two =
        completion(json!({"prompt": ["a b", "c d e"], "prompt_logprobs": 0, "max_tokens": 1}));
    let res = ok(post(addr(), "/v1/completions", &two));
    let lens: Vec<usize> = res["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["prompt_logprobs"].as_array().unwrap().len())
        .collect();
    assert_eq!(lens.len(), 2);
    assert!(lens[1] > lens[0], "{lens:?}");
    let plain = ok(post(addr(), "/v1/completions", &completion(json!({}))));
    assert!(plain["choices"][0].get("prompt_logprobs").is_none());
    for bad in [
        json!({"prompt_logprobs": -1}),
        json!({"prompt_logprobs": 21}),
        json!({"prompt_logprobs": 1, "stream": true}),
    ] {
        let res = post(addr(), "/v1/completions", &completion(bad.clone()));
        assert_eq!(error_of(&res, 400)["param"], "prompt_logprobs", "{bad}");
    }
}

/// The decisions behind openapi.yaml (OpenAI's behaviour, else vLLM's): integer fields
/// take integer-valued floats, `prompt: ""` starts a new document, `/tokenize` needs
/// exactly one of `prompt` or `messages`, `top_logprobs` above 0 needs `logprobs: true`,
/// and `"model": null` on `/tokenize` and `/detokenize` means "not given".
#[test]
fn spec_decisions_hold() {
    let floats = completion(json!({"max_tokens": 3.0, "n": 2.0, "seed": 5.0,
                                   "stop_token_ids": [0.0], "min_tokens": 1.0, "top_k": 40.0}));
    let res = ok(post(addr(), "/v1/completions", &floats));
    assert_eq!(res["choices"].as_array().map(Vec::len), Some(2));
    assert!(res["usage"]["completion_tokens"].as_u64().unwrap() <= 6);
    let ids = completion(json!({"prompt": [[504.0, 3575.0], [282]]}));
    assert_eq!(
        ok(post(addr(), "/v1/completions", &ids))["choices"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let fraction = post(
        addr(),
        "/v1/completions",
        &completion(json!({"max_tokens": 3.5})),
    );
    let err = error_of(&fraction, 400);
    assert_eq!(err["param"], "max_tokens");
    assert!(err["message"].as_str().unwrap().contains("3.5"), "{err}");
    let detok = ok(post(
        addr(),
        "/detokenize",
        &json!({"model": null, "tokens": [504.0, 3575]}),
    ));
    assert_eq!(detok["prompt"], "The capital");
    let tok = ok(post(
        addr(),
        "/tokenize",
        &json!({"model": null, "prompt": "The capital"}),
    ));
    assert_eq!(tok["tokens"], json!([504, 3575]));
    let empty = error_of(&post(addr(), "/tokenize", &json!({})), 400);
    assert_eq!(empty["param"], "prompt");

    let res = ok(post(
        addr(),
        "/v1/completions",
        &completion(json!({"prompt": "", "max_tokens": 2})),
    ));
    assert_eq!(res["usage"]["prompt_tokens"], 1, "one document-start token");
    assert_eq!(res["usage"]["completion_tokens"], 2);

    let top_only = post(
        addr(),
        "/v1/chat/completions",
        &chat(json!({"top_logprobs": 2})),
    );
    assert_eq!(error_of(&top_only, 400)["param"], "top_logprobs");
    let zero = ok(post(
        addr(),
        "/v1/chat/completions",
        &chat(json!({"top_logprobs": 0})),
    ));
    assert!(zero["choices"][0]["logprobs"].is_null());
}
