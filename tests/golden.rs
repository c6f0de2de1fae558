//! Greedy outputs against llama.cpp (tests/golden/, made by scripts/make_golden.py on the
//! same GGUF files) and batch invariance: every prompt gives bit-identical tokens alone,
//! in a batch of all of them, and when they arrive staggered.

mod common;

use std::time::Duration;

use common::*;
use tessera::config::EngineConfig;

const N: usize = 32;

fn engine_for(file: &GoldenFile, max_batched: usize) -> tessera::engine::handle::EngineHandle {
    let cfg = EngineConfig {
        max_num_batched_tokens: max_batched,
        kv_cache_memory: 256 << 20,
        ..EngineConfig::default()
    };
    start(&golden_model_path(file), cfg)
}

/// Our tokenizer reproduces llama.cpp's prompt ids, and greedy decoding its output ids.
fn check_against_llama_cpp(name: &str) {
    let g = golden(name);
    // A small step budget forces chunked prefill on the long prompts.
    let engine = engine_for(&g, 128);
    let tok = &engine.model().tokenizer;
    for case in &g.cases {
        let ours = tok.encode(&case.prompt, true, true).expect("tokenizes");
        assert_eq!(ours, case.prompt_ids, "{name}/{}: prompt tokenization", case.name);
        let got = run_ids(&engine, &case.prompt_ids, greedy(N));
        assert_eq!(
            got,
            case.output_ids[..N],
            "{name}/{}: greedy tokens differ from llama.cpp (min margin {})",
            case.name,
            case.min_margin
        );
    }
    engine.shutdown();
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_against_llama_cpp("smollm2");
}

#[test]
fn smollm2_knows_the_capital_of_france() {
    let g = golden("smollm2");
    let engine = engine_for(&g, 512);
    let prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = engine.model().tokenizer.encode(prompt, true, true).unwrap();
    let out = run_ids(&engine, &ids, greedy(7));
    assert_eq!(out, [504, 3575, 282, 4649, 314, 7042, 30]);
    let text = engine.model().tokenizer.decode(&out, true).unwrap();
    assert_eq!(text, "The capital of France is Paris.");
}

#[test]
fn fixtures_match_llama_cpp() {
    let dir = repo_path("tests/golden");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/golden exists")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json")?.to_string();
            (stem != "smollm2").then_some(stem)
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no fixture goldens in tests/golden");
    for name in names {
        check_against_llama_cpp(&name);
    }
}

#[test]
fn batch_invariance_together_and_staggered() {
    let g = golden("smollm2");
    let engine = engine_for(&g, 256);
    let prompts: Vec<Vec<u32>> = g.cases.iter().map(|c| c.prompt_ids.clone()).collect();
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| run_ids(&engine, p, greedy(N)))
        .collect();
    let together = run_batch(&engine, &prompts, greedy(N));
    assert_eq!(together, alone, "batched outputs differ from solo outputs");

    let staggered: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let engine = engine.clone();
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(40 * i as u64));
                    run_ids(&engine, p, greedy(N))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(staggered, alone, "staggered outputs differ from solo outputs");
    engine.shutdown();
}
