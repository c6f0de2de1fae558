//! The OpenAI API over real HTTP against the default model: response shapes, SSE
//! framing, streamed = whole text, n > 1, seeds, stop strings, lengths, logprobs, prompt
//! forms, echo and tokenize. One engine and one server for the whole file.

mod http_support;

use std::sync::OnceLock;

use http_support::{
    chat, chatml, completion, error_of, joined_text, merge, ok, post, request, serve, start_engine,
    SseStream, FRANCE, MODEL,
};
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
use tessera::server::{ServerConfig, SpawnedServer};

fn fixture() -> &'static (EngineHandle, SpawnedServer) {
    static FIXTURE: OnceLock<(EngineHandle, SpawnedServer)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let cfg = EngineConfig {
            kv_cache_memory: 256 << 20,
            max_model_len: Some(2048),
            ..EngineConfig::default()
        };
        let engine = start_engine(&cfg);
        let server = serve(engine.clone(), cfg.max_num_seqs, ServerConfig::default());
        (engine, server)
    })
}

fn addr() -> std::net::SocketAddr {
    fixture().1.addr
}

#[test]
fn a_spawned_server_shuts_down_and_frees_its_port() {
    let (engine, _) = fixture();
    let extra = serve(engine.clone(), 4, ServerConfig::default());
    let extra_addr = extra.addr;
    assert_eq!(
        ok(post(
            extra_addr,
            "/v1/completions",
            &completion(json!({"max_tokens": 2}))
        ))["object"],
        "text_completion"
    );
    extra.shutdown();
    assert!(
        std::net::TcpStream::connect(extra_addr).is_err(),
        "still accepting after shutdown"
    );
    assert_eq!(
        ok(http_support::get(addr(), "/ready"))["status"],
        "ready",
        "the engine serves on"
    );
}

#[test]
fn greedy_completion_answers_and_has_openai_shape() {
    let res = request(
        addr(),
        "POST",
        "/v1/completions",
        &[("X-Request-Id", "req-42")],
        Some(completion(json!({})).to_string().as_bytes()),
    );
    assert_eq!(res.header("x-request-id"), Some("req-42"));
    let body = ok(res);
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["id"], "cmpl-req-42");
    assert_eq!(body["model"], MODEL);
    assert!(body["system_fingerprint"]
        .as_str()
        .is_some_and(|s| s.starts_with("tessera-")));
    let choice = &body["choices"][0];
    assert_eq!(choice["text"], "The capital of France is Paris.");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["index"], 0);
    assert!(choice["logprobs"].is_null());
    let usage = &body["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(usage["total_tokens"].as_u64(), Some(p + c));
    assert!(usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .is_some());
}

#[test]
fn chat_response_shape_and_repeat_hits_the_prefix_cache() {
    let first = ok(post(
        addr(),
        "/v1/chat/completions",
        &chat(json!({"temperature": 0})),
    ));
    assert_eq!(first["object"], "chat.completion");
    assert!(first["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-")));
    let msg = &first["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert!(!msg["content"].as_str().unwrap_or("").is_empty());
    let second = ok(post(
        addr(),
        "/v1/chat/completions",
        &chat(json!({"temperature": 0})),
    ));
    assert_eq!(
        second["choices"][0]["message"],
        first["choices"][0]["message"]
    );
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= 16,
        "a repeated prompt reuses at least one full block: {cached}"
    );
}

/// Checks OpenAI's SSE framing and returns the chunks (without `[DONE]`).
fn check_sse(events: &[String], choices: usize, include_usage: bool, chat: bool) -> Vec<Value> {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("JSON chunk"))
        .collect();
    let mut seen_role = vec![false; choices];
    let mut finishes = vec![0; choices];
    for (k, chunk) in chunks.iter().enumerate() {
        assert_eq!(
            chunk.get("usage").is_some(),
            include_usage,
            "usage key iff include_usage: {chunk}"
        );
        let list = chunk["choices"].as_array().expect("choices");
        if list.is_empty() {
            assert!(
                include_usage && k == chunks.len() - 1,
                "only the last chunk has no choices"
            );
            assert!(chunk["usage"]["total_tokens"].as_u64().is_some());
            continue;
        }
        if include_usage {
            assert!(chunk["usage"].is_null());
        }
        for choice in list {
            let i = choice["index"].as_u64().unwrap() as usize;
            assert_eq!(finishes[i], 0, "nothing after a choice's finish chunk");
            if chat {
                let delta = &choice["delta"];
                assert_eq!(
                    delta.get("role").is_some(),
                    !seen_role[i],
                    "role exactly on the first delta: {chunk}"
                );
                seen_role[i] = true;
            }
            if !choice["finish_reason"].is_null() {
                finishes[i] += 1;
            }
        }
    }
    assert_eq!(
        finishes,
        vec![1; choices],
        "one finish_reason chunk per choice"
    );
    chunks
}

#[test]
fn streamed_text_equals_non_streamed_text_for_the_same_seed() {
    for (route, body, chat_route) in [
        (
            "/v1/chat/completions",
            chat(json!({"seed": 7, "temperature": 0.9, "max_tokens": 24})),
            true,
        ),
        (
            "/v1/completions",
            completion(json!({"seed": 7, "temperature": 0.9, "max_tokens": 24})),
            false,
        ),
    ] {
        let whole = ok(post(addr(), route, &body));
        let text = whole["choices"][0]["message"]["content"]
            .as_str()
            .or(whole["choices"][0]["text"].as_str())
            .unwrap()
            .to_string();
        let mut streamed_body = body.clone();
        streamed_body["stream"] = json!(true);
        streamed_body["stream_options"] = json!({"include_usage": true});
        let stream = SseStream::open(addr(), route, &streamed_body);
        assert_eq!(stream.status, 200);
        let events = stream.rest();
        let chunks = check_sse(&events, 1, true, chat_route);
        assert_eq!(joined_text(&events, 1), vec![text], "{route}");
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(
            usage["completion_tokens"],
            whole["usage"]["completion_tokens"]
        );
        assert_eq!(usage["prompt_tokens"], whole["usage"]["prompt_tokens"]);
    }
}

#[test]
fn stream_without_include_usage_has_no_usage_field() {
    let events = SseStream::open(
        addr(),
        "/v1/chat/completions",
        &chat(json!({"stream": true, "max_tokens": 4})),
    )
    .rest();
    check_sse(&events, 1, false, true);
}

#[test]
fn n_choices_are_separate_sequences_and_seeded_requests_repeat() {
    let body = chat(json!({"n": 2, "seed": 11, "temperature": 1.0, "max_tokens": 20}));
    let a = ok(post(addr(), "/v1/chat/completions", &body));
    let b = ok(post(addr(), "/v1/chat/completions", &body));
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(texts(&a).len(), 2);
    assert_eq!(texts(&a), texts(&b), "same seed, same choices");
    assert_eq!(a["choices"][1]["index"], 1);
    let single = ok(post(
        addr(),
        "/v1/chat/completions",
        &chat(json!({"seed": 11, "temperature": 1.0, "max_tokens": 20})),
    ));
    assert_eq!(
        texts(&single)[0],
        texts(&a)[0],
        "choice 0 uses the request's seed"
    );
    let completion_tokens = a["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion_tokens > texts(&single)[0].is_empty() as u64);
    assert_eq!(
        a["usage"]["prompt_tokens"], single["usage"]["prompt_tokens"],
        "the prompt counts once"
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = SseStream::open(addr(), "/v1/chat/completions", &streamed).rest();
    check_sse(&events, 2, false, true);
    assert_eq!(joined_text(&events, 2), texts(&a));
}

#[test]
fn stop_strings_end_the_text_before_the_stop() {
    let body = ok(post(
        addr(),
        "/v1/completions",
        &completion(json!({"stop": [" Paris", "zzz"]})),
    ));
    assert_eq!(body["choices"][0]["text"], "The capital of France is");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let events = SseStream::open(
        addr(),
        "/v1/completions",
        &completion(json!({"stop": " Paris", "stream": true})),
    )
    .rest();
    check_sse(&events, 1, false, false);
    assert_eq!(
        joined_text(&events, 1),
        vec!["The capital of France is".to_string()]
    );
}

#[test]
fn max_tokens_ends_with_length_and_max_completion_tokens_wins() {
    for extra in [
        json!({"max_tokens": 3}),
        json!({"max_tokens": 50, "max_completion_tokens": 3}),
    ] {
        let mut body = chat(json!({"ignore_eos": true}));
        merge(&mut body, extra.clone());
        let body = ok(post(addr(), "/v1/chat/completions", &body));
        assert_eq!(body["choices"][0]["finish_reason"], "length", "{extra}");
        assert_eq!(body["usage"]["completion_tokens"], 3, "{extra}");
    }
}

#[test]
fn logprobs_have_both_openai_shapes() {
    let body = ok(post(
        addr(),
        "/v1/chat/completions",
        &chat(
            json!({"logprobs": true, "top_logprobs": 3, "temperature": 0, "max_tokens": 6, "ignore_eos": true}),
        ),
    ));
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content logprobs")
        .clone();
    assert_eq!(content.len(), 6);
    let joined: String = content
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(
        joined,
        body["choices"][0]["message"]["content"].as_str().unwrap()
    );
    for entry in &content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(
            lps.windows(2).all(|w| w[0] >= w[1]) && lps[0] <= 0.0,
            "{lps:?}"
        );
        assert_eq!(
            entry["logprob"].as_f64(),
            Some(lps[0]),
            "greedy picks the top token"
        );
        assert_eq!(
            entry["bytes"].as_array().unwrap().len(),
            entry["token"].as_str().unwrap().len()
        );
    }
    let body = ok(post(
        addr(),
        "/v1/completions",
        &completion(json!({"logprobs": 2, "max_tokens": 5, "ignore_eos": true})),
    ));
    let lp = &body["choices"][0]["logprobs"];
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[key].as_array().map(Vec::len), Some(5), "{key}");
    }
    assert_eq!(lp["text_offset"][0], 0);
    let refused = post(
        addr(),
        "/v1/chat/completions",
        &chat(json!({"top_logprobs": 2, "logprobs": false})),
    );
    assert_eq!(error_of(&refused, 400)["param"], "top_logprobs");
    let too_many = post(
        addr(),
        "/v1/chat/completions",
        &chat(json!({"logprobs": true, "top_logprobs": 21})),
    );
    assert!(error_of(&too_many, 400)["message"]
        .as_str()
        .unwrap()
        .contains("21"));
}

#[test]
fn completion_prompts_as_lists_ids_and_echo() {
    let ids = ok(post(
        addr(),
        "/tokenize",
        &json!({"prompt": chatml(FRANCE)}),
    ))["tokens"]
        .clone();
    let by_ids = ok(post(
        addr(),
        "/v1/completions",
        &completion(json!({"prompt": ids})),
    ));
    assert_eq!(
        by_ids["choices"][0]["text"],
        "The capital of France is Paris."
    );
    let lists = ok(post(
        addr(),
        "/v1/completions",
        &completion(json!({"prompt": [ids.clone(), ids]})),
    ));
    assert_eq!(lists["choices"].as_array().unwrap().len(), 2);
    let two = ok(post(
        addr(),
        "/v1/completions",
        &completion(json!({"prompt": [chatml(FRANCE), "Once upon a time"], "n": 2})),
    ));
    let choices = two["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    assert_eq!(choices[1]["text"], "The capital of France is Paris.");
    assert_eq!(choices[3]["index"], 3);
    let echo = ok(post(
        addr(),
        "/v1/completions",
        &completion(json!({"echo": true})),
    ));
    assert_eq!(
        echo["choices"][0]["text"],
        format!("{}The capital of France is Paris.", chatml(FRANCE))
    );
    let events = SseStream::open(
        addr(),
        "/v1/completions",
        &completion(json!({"echo": true, "stream": true})),
    )
    .rest();
    assert_eq!(
        joined_text(&events, 1)[0],
        echo["choices"][0]["text"].as_str().unwrap()
    );
}

#[test]
fn tokenize_and_detokenize_round_trip() {
    let res = ok(post(
        addr(),
        "/tokenize",
        &json!({"prompt": "Hello world", "return_token_strs": true}),
    ));
    assert_eq!(res["count"], 2);
    assert_eq!(res["max_model_len"], 2048);
    assert_eq!(res["token_strs"].as_array().map(Vec::len), Some(2));
    let back = ok(post(
        addr(),
        "/detokenize",
        &json!({"tokens": res["tokens"]}),
    ));
    assert_eq!(back["prompt"], "Hello world");
    let via_chat = ok(post(
        addr(),
        "/tokenize",
        &json!({"messages": [{"role": "user", "content": FRANCE}]}),
    ));
    let chat_usage = ok(post(
        addr(),
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 1})),
    ))["usage"]["prompt_tokens"]
        .clone();
    assert_eq!(via_chat["count"], chat_usage);
    let bad = post(addr(), "/detokenize", &json!({"tokens": [999999]}));
    assert!(error_of(&bad, 400)["message"]
        .as_str()
        .unwrap()
        .contains("999999"));
}

#[test]
fn n_choices_share_the_prompt_blocks_through_the_prefix_cache() {
    let (engine, _) = fixture();
    // A prompt no other test sends: 3+ full blocks that only this request can hit.
    let prompt = format!(
        "{} Answer in one word.",
        "Zebra quartz lantern violet harbor. ".repeat(8)
    );
    let ids = ok(post(addr(), "/tokenize", &json!({"prompt": prompt})))["tokens"]
        .as_array()
        .unwrap()
        .len();
    let full_blocks_tokens = (ids / 16 * 16) as u64;
    assert!(full_blocks_tokens >= 48, "{ids} prompt tokens");
    let hits_before = engine.gauges().snapshot().prefix_cache_hits;
    let body = json!({"model": MODEL, "prompt": prompt, "n": 3, "seed": 1, "max_tokens": 4});
    let res = ok(post(addr(), "/v1/completions", &body));
    assert_eq!(res["choices"].as_array().unwrap().len(), 3);
    let hits = engine.gauges().snapshot().prefix_cache_hits - hits_before;
    assert!(
        hits >= 2 * full_blocks_tokens,
        "choices 1 and 2 reuse choice 0's {full_blocks_tokens} cached prompt tokens; hits: {hits}"
    );
}
