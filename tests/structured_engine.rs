//! Structured output through the engine on the real default model: every constrained
//! output matches its grammar; a constrained request samples the same tokens alone and
//! in a batch with unconstrained ones, and after preemption under a tiny KV cache; a
//! `max_tokens` cut ends with `Length`; dropped constrained streams are aborted and free
//! their blocks.

mod common;

use common::*;
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
use tessera::request::{FinishReason, SamplingParams};
use tessera::structured::{GrammarSpec, Guide};

fn engine(cfg: EngineConfig) -> EngineHandle {
    start(&default_model(), cfg)
}

fn chat_ids(engine: &EngineHandle, user: &str) -> Vec<u32> {
    let prompt = format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n");
    engine
        .model()
        .tokenizer
        .encode(&prompt, true, true)
        .unwrap()
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "minItems": 1, "maxItems": 3}
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": false
    })
}

fn guide(engine: &EngineHandle, spec: GrammarSpec) -> Guide {
    engine
        .grammar_compiler()
        .expect("compiler")
        .compile(&spec)
        .expect("compiles")
}

fn sampled(guide: &Guide, seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        max_tokens,
        guide: Some(guide.clone()),
        ..SamplingParams::default()
    }
}

fn check_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(
        v["name"].as_str().is_some_and(|n| n.chars().count() <= 12),
        "{text}"
    );
    assert!(
        v["age"].as_i64().is_some_and(|a| (0..=120).contains(&a)),
        "{text}"
    );
    let pets = v["pets"].as_array().expect("pets");
    assert!((1..=3).contains(&pets.len()), "{text}");
    assert!(
        pets.iter()
            .all(|p| matches!(p.as_str(), Some("cat" | "dog" | "fish"))),
        "{text}"
    );
    assert_eq!(v.as_object().map(|o| o.len()), Some(3), "{text}");
}

#[test]
fn constrained_outputs_match_the_schema_alone_and_batched_with_free_ones() {
    let e = engine(EngineConfig::default());
    let g = guide(&e, GrammarSpec::JsonSchema(person_schema()));
    let prompt = chat_ids(&e, "Describe a person as JSON.");
    let alone: Vec<(Vec<u32>, String, FinishReason)> = (0..4)
        .map(|seed| {
            let (ids, text, finish, _) = e
                .submit(prompt.clone(), sampled(&g, seed, 200))
                .unwrap()
                .blocking_collect()
                .unwrap();
            (ids, text, finish)
        })
        .collect();
    for (_, text, finish) in &alone {
        assert_eq!(*finish, FinishReason::Stop, "{text}");
        check_person(text);
    }
    // The same four among eight unconstrained sampled requests, all at once.
    let free = chat_ids(&e, "Write a story about a lighthouse.");
    let mut streams = Vec::new();
    for seed in 0..4u64 {
        let params = SamplingParams {
            seed: Some(100 + seed),
            max_tokens: 40,
            ..SamplingParams::default()
        };
        streams.push((None, e.submit(free.clone(), params.clone()).unwrap()));
        streams.push((
            Some(seed as usize),
            e.submit(prompt.clone(), sampled(&g, seed, 200)).unwrap(),
        ));
        streams.push((None, e.submit(free.clone(), params).unwrap()));
    }
    for (which, stream) in streams {
        let (ids, text, _, _) = stream.blocking_collect().unwrap();
        if let Some(i) = which {
            assert_eq!(
                ids, alone[i].0,
                "seed {i}: batched output differs from alone: {text}"
            );
        }
    }
    e.shutdown();
}

#[test]
fn preemption_and_recompute_keep_constrained_outputs() {
    let big = engine(EngineConfig::default());
    let g = guide(&big, GrammarSpec::JsonSchema(person_schema()));
    // ~60-token prompts and ~40-token outputs need 7 blocks each: 84 for all 12; the
    // tiny engine gets 16.
    let filler = "They live by the sea, keep a small garden and read in the evenings. ".repeat(3);
    let prompts: Vec<Vec<u32>> = (0..12)
        .map(|i| {
            chat_ids(
                &big,
                &format!("{filler}Describe person number {i} as JSON, please."),
            )
        })
        .collect();
    let run = |e: &EngineHandle, g: &Guide| -> Vec<(Vec<u32>, String)> {
        let streams: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| e.submit(p.clone(), sampled(g, i as u64, 120)).unwrap())
            .collect();
        streams
            .into_iter()
            .map(|s| {
                let (ids, text, _, _) = s.blocking_collect().unwrap();
                (ids, text)
            })
            .collect()
    };
    let want = run(&big, &g);
    big.shutdown();
    let tiny = engine(EngineConfig {
        num_kv_blocks: Some(16),
        max_model_len: Some(256),
        ..EngineConfig::default()
    });
    let g_tiny = guide(&tiny, GrammarSpec::JsonSchema(person_schema()));
    let got = run(&tiny, &g_tiny);
    assert!(
        tiny.gauges().snapshot().num_preemptions > 0,
        "the tiny cache must preempt"
    );
    for ((want_ids, want_text), (got_ids, _)) in want.iter().zip(&got) {
        assert_eq!(want_ids, got_ids, "preemption changed a constrained output");
        check_person(want_text);
    }
    tiny.shutdown();
}

#[test]
fn max_tokens_cuts_with_length_and_choices_hold() {
    let e = engine(EngineConfig::default());
    let g = guide(&e, GrammarSpec::JsonSchema(person_schema()));
    let prompt = chat_ids(&e, "Describe a person as JSON.");
    let (ids, text, finish, _) = e
        .submit(prompt.clone(), sampled(&g, 7, 5))
        .unwrap()
        .blocking_collect()
        .unwrap();
    assert_eq!((ids.len(), finish), (5, FinishReason::Length), "{text}");
    assert!(text.starts_with('{'), "{text}");
    let choices = vec!["red".to_string(), "green".into(), "blue sky".into()];
    let g = guide(&e, GrammarSpec::Choice(choices.clone()));
    let q = chat_ids(&e, "Pick a colour.");
    for seed in 0..6 {
        let (_, text, finish, _) = e
            .submit(q.clone(), sampled(&g, seed, 20))
            .unwrap()
            .blocking_collect()
            .unwrap();
        assert_eq!(finish, FinishReason::Stop);
        assert!(choices.contains(&text), "{text:?}");
    }
    let g = guide(&e, GrammarSpec::Regex(r"[0-9]{3}-[a-z]{2,4}".into()));
    for seed in 0..6 {
        let (_, text, _, _) = e
            .submit(q.clone(), sampled(&g, seed, 20))
            .unwrap()
            .blocking_collect()
            .unwrap();
        let ok = text.len() >= 6
            && text[..3].bytes().all(|b| b.is_ascii_digit())
            && &text[3..4] == "-"
            && text[4..].bytes().all(|b| b.is_ascii_lowercase())
            && (2..=4).contains(&(text.len() - 4));
        assert!(ok, "{text:?}");
    }
    e.shutdown();
}

#[test]
fn dropped_constrained_streams_are_aborted_and_free_their_blocks() {
    let e = engine(EngineConfig::default());
    let g = guide(&e, GrammarSpec::Regex("[a-z ]+".into()));
    let prompt = chat_ids(&e, "Tell me a long story.");
    let mut streams: Vec<_> = (0..6)
        .map(|seed| {
            let params = SamplingParams {
                min_tokens: 200,
                ..sampled(&g, seed, 200)
            };
            e.submit(prompt.clone(), params).unwrap()
        })
        .collect();
    for s in &mut streams {
        let first = s.blocking_next().expect("an event").expect("no error");
        assert!(!first.token_ids.is_empty());
    }
    drop(streams);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while e.gauges().snapshot().kv_blocks_used != 0 || e.gauges().snapshot().num_running != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "blocks still held after the drop"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The engine goes on serving constrained requests after the aborts.
    let (_, text, finish, _) = e
        .submit(prompt, sampled(&g, 9, 8))
        .unwrap()
        .blocking_collect()
        .unwrap();
    assert!(
        text.bytes().all(|b| b.is_ascii_lowercase() || b == b' '),
        "{text:?}"
    );
    assert!(matches!(finish, FinishReason::Length | FinishReason::Stop));
    e.shutdown();
}
