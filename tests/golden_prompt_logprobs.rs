//! Prompt log-probabilities against llama.cpp (tests/golden/smollm2_prompt_logprobs.json,
//! made by scripts/golden_prompt_logprobs.py on the default model with llama.cpp's
//! single-token path): every prompt token's logprob within the logit goldens' 2e-3, the
//! same rank and the same top-5 (where llama.cpp's own neighbours are not within the
//! tolerance). The long case runs through chunked prefill (a 64-token step budget), and
//! every prompt was already run once so its blocks sit in the prefix cache: a request
//! that wants prompt logprobs must bypass them and still score every position.

mod common;

use common::{default_model, greedy, repo_path, start};
use serde::Deserialize;
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
use tessera::request::{PromptLogprob, SamplingParams};

/// The tolerance of the logit goldens (tests/golden.rs).
const TOLERANCE: f32 = 2e-3;
const TOP_K: usize = 5;

#[derive(Deserialize)]
struct GoldenFile {
    model_file: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prompt_ids: Vec<u32>,
    /// One entry per prompt token after the first.
    prompt_logprobs: Vec<Entry>,
}

/// `[logprob, rank, [[id, logprob]; 5]]` of one prompt token.
type Entry = (f32, usize, Vec<(u32, f32)>);

fn golden() -> GoldenFile {
    let path = repo_path("tests/golden/smollm2_prompt_logprobs.json");
    let text = std::fs::read_to_string(&path).expect("golden file");
    serde_json::from_str(&text).expect("golden parses")
}

fn engine() -> EngineHandle {
    let cfg = EngineConfig {
        max_num_batched_tokens: 64,
        kv_cache_memory: 128 << 20,
        max_model_len: Some(1024),
        ..EngineConfig::default()
    };
    start(&default_model(), cfg)
}

/// The first event's prompt logprobs and its usage's cached tokens.
fn prompt_logprobs(engine: &EngineHandle, ids: &[u32], k: usize) -> (Vec<PromptLogprob>, usize) {
    let params = SamplingParams {
        prompt_logprobs: Some(k),
        ..greedy(1)
    };
    let mut stream = engine.submit(ids.to_vec(), params).expect("submit");
    let event = stream.blocking_next().expect("an event").expect("no error");
    let got = event
        .prompt_logprobs
        .expect("first event carries prompt logprobs");
    (got, event.usage.cached_tokens)
}

/// Whether llama.cpp's top list has a near-tie around place `j` (order may then differ).
fn near_tie(top: &[(u32, f32)], j: usize) -> bool {
    let close = |a: usize, b: usize| match (top.get(a), top.get(b)) {
        (Some(x), Some(y)) => (x.1 - y.1).abs() < 2.0 * TOLERANCE,
        _ => false,
    };
    (j > 0 && close(j - 1, j)) || close(j, j + 1)
}

#[test]
fn prompt_logprobs_match_llama_cpp() {
    let g = golden();
    assert_eq!(
        default_model().file_name().unwrap().to_string_lossy(),
        g.model_file
    );
    let engine = engine();
    let mut max_diff = 0.0f32;
    let mut scored = 0;
    for case in &g.cases {
        // Fill the prefix cache with this prompt's blocks first.
        common::run_ids(&engine, &case.prompt_ids, greedy(1));
        let (ours, cached) = prompt_logprobs(&engine, &case.prompt_ids, TOP_K);
        assert_eq!(
            cached, 0,
            "{}: prompt logprobs took prefix-cache hits",
            case.name
        );
        assert_eq!(
            ours.len(),
            case.prompt_ids.len() - 1,
            "{}: one entry per prompt token after the first",
            case.name
        );
        for (i, (got, (logprob, rank, top))) in ours.iter().zip(&case.prompt_logprobs).enumerate() {
            let at = format!("{} token {}", case.name, i + 1);
            let diff = (got.logprob - logprob).abs();
            max_diff = max_diff.max(diff);
            assert!(
                diff < TOLERANCE,
                "{at}: logprob {} vs llama.cpp {logprob}",
                got.logprob
            );
            let tie_at_rank = top
                .iter()
                .any(|&(_, l)| (l - logprob).abs() < 2.0 * TOLERANCE && l != *logprob);
            if !tie_at_rank {
                assert_eq!(got.rank, *rank, "{at}: rank");
            }
            assert_eq!(got.top.len(), TOP_K, "{at}");
            for (j, (&(id, lp), &(our_id, our_lp))) in top.iter().zip(&got.top).enumerate() {
                if !near_tie(top, j) {
                    assert_eq!(our_id, id, "{at}: top-{TOP_K} place {j}");
                }
                max_diff = max_diff.max((our_lp - lp).abs());
                assert!(
                    (our_lp - lp).abs() < TOLERANCE || near_tie(top, j),
                    "{at}: top place {j}"
                );
            }
            scored += 1;
        }
    }
    eprintln!("prompt logprobs: {scored} positions, max |ours - llama.cpp| = {max_diff:.2e}");
    engine.shutdown();
}

/// Asking for prompt logprobs changes nothing else: the same greedy tokens, and a second
/// request for the same prompt gets bit-identical values (batch invariance).
#[test]
fn prompt_logprobs_are_deterministic_and_leave_generation_alone() {
    let g = golden();
    let engine = engine();
    let case = g
        .cases
        .iter()
        .find(|c| c.name == "long_passage")
        .expect("case");
    let plain = common::run_ids(&engine, &case.prompt_ids, greedy(4));
    let params = SamplingParams {
        prompt_logprobs: Some(0),
        ..greedy(4)
    };
    let with = common::run_ids(&engine, &case.prompt_ids, params);
    assert_eq!(plain, with);
    let (first, _) = prompt_logprobs(&engine, &case.prompt_ids, 0);
    let (second, _) = prompt_logprobs(&engine, &case.prompt_ids, 0);
    assert_eq!(first, second);
    assert!(first.iter().all(|e| e.top.is_empty()));
    engine.shutdown();
}
