//! Speculative decoding with the n-gram drafter (`--speculative-ngram`) on the default
//! model: the output is the output without it. Greedy tokens are identical on the golden
//! prompts (alone and batched) and on prompts whose answer repeats them, where drafts are
//! really accepted (asserted, so the comparison cannot pass vacuously); seeded sampling
//! with penalties, logprobs, stop strings, EOS and `max_tokens` inside accepted runs, and
//! preemption under a tiny KV cache all give exactly what plain decoding gives; an
//! aborted speculating request frees its blocks.

mod common;

use common::*;
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
use tessera::request::{FinishReason, SamplingParams, TokenLogprobs};
use tessera::spec_decode::SpecDecodeConfig;

fn engine(speculative: Option<SpecDecodeConfig>, num_kv_blocks: Option<usize>) -> EngineHandle {
    let cfg = EngineConfig {
        kv_cache_memory: 256 << 20,
        num_kv_blocks,
        // A small pool holds one full-length request (the config rule), no more.
        max_model_len: Some(num_kv_blocks.map_or(1024, |n| n * 16)),
        speculative,
        ..EngineConfig::default()
    };
    start(&default_model(), cfg)
}

/// Eager drafting (1-grams too, long drafts): many drafts, many rejections.
fn eager() -> Option<SpecDecodeConfig> {
    Some(SpecDecodeConfig {
        num_speculative_tokens: 6,
        prompt_lookup_min: 1,
        prompt_lookup_max: 4,
    })
}

/// Text whose continuation repeats it: prompt lookup's workload.
const REPEAT: &str = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n\
def mul(a, b):\n    return a * b\n\n# The same four functions again, unchanged:\n\ndef add(a, b):\n";
const LIST: &str = "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. \
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. Monday,";

fn ids(engine: &EngineHandle, text: &str) -> Vec<u32> {
    engine
        .model()
        .tokenizer
        .encode(text, true, true)
        .expect("tokenizes")
}

/// Everything a request produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    ids: Vec<u32>,
    text: String,
    reason: FinishReason,
    logprobs: Vec<TokenLogprobs>,
}

fn run(engine: &EngineHandle, prompt: &[u32], params: SamplingParams) -> Outcome {
    let mut stream = engine.submit(prompt.to_vec(), params).expect("submit");
    let (mut ids, mut text, mut logprobs) = (Vec::new(), String::new(), Vec::new());
    while let Some(ev) = stream.blocking_next() {
        let ev = ev.expect("no engine error");
        ids.extend(&ev.token_ids);
        text.push_str(&ev.text);
        logprobs.extend(ev.logprobs.unwrap_or_default());
        if let Some(reason) = ev.finish_reason {
            return Outcome {
                ids,
                text,
                reason,
                logprobs,
            };
        }
    }
    panic!("stream ended without a finish reason");
}

/// Waits (up to 20 s) until the engine's published gauges show no KV block held: they
/// are published after the step whose output the consumer may already have seen.
fn wait_until_all_blocks_free(engine: &EngineHandle) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while engine.gauges().snapshot().kv_blocks_used > 0 {
        assert!(std::time::Instant::now() < deadline, "KV blocks left held");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn accepted(engine: &EngineHandle) -> u64 {
    engine.gauges().snapshot().spec_decode_num_accepted_tokens
}

#[test]
fn greedy_output_is_identical_on_the_golden_prompts() {
    let g = golden("smollm2");
    let prompts: Vec<Vec<u32>> = g.cases.iter().map(|c| c.prompt_ids.clone()).collect();
    let plain = engine(None, None);
    let want: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| run_ids(&plain, p, greedy(32)))
        .collect();
    plain.shutdown();
    for spec in [eager(), Some(SpecDecodeConfig::default())] {
        let spec_engine = engine(spec, None);
        for (p, want) in prompts.iter().zip(&want) {
            assert_eq!(
                &run_ids(&spec_engine, p, greedy(32)),
                want,
                "{spec:?} alone"
            );
        }
        assert_eq!(
            run_batch(&spec_engine, &prompts, greedy(32)),
            want,
            "{spec:?} batched"
        );
        let stats = spec_engine.gauges().snapshot();
        assert!(
            stats.spec_decode_num_drafts > 0,
            "{spec:?}: no draft at all"
        );
        spec_engine.shutdown();
    }
}

#[test]
fn drafts_are_accepted_where_the_answer_repeats_the_prompt() {
    let plain = engine(None, None);
    let spec = engine(Some(SpecDecodeConfig::default()), None);
    for text in [REPEAT, LIST] {
        let prompt = ids(&plain, text);
        let before = accepted(&spec);
        let want = run(&plain, &prompt, greedy(48));
        let got = run(&spec, &prompt, greedy(48));
        assert_eq!(got, want, "{text:?}");
        assert!(
            accepted(&spec) > before + 8,
            "few drafts accepted on {text:?}"
        );
    }
    let stats = spec.gauges().snapshot();
    assert!(stats.spec_decode_num_accepted_tokens <= stats.spec_decode_num_draft_tokens);
    wait_until_all_blocks_free(&spec);
    plain.shutdown();
    spec.shutdown();
}

#[test]
fn sampling_penalties_and_logprobs_are_unchanged() {
    let plain = engine(None, None);
    let spec = engine(eager(), None);
    let prompt = ids(&plain, REPEAT);
    let cases = [
        SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            seed: Some(7),
            max_tokens: 40,
            logprobs: Some(3),
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 0.0,
            presence_penalty: 0.4,
            repetition_penalty: 1.1,
            max_tokens: 40,
            logprobs: Some(2),
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 1.0,
            top_k: 5,
            min_p: 0.05,
            frequency_penalty: 0.3,
            seed: Some(99),
            max_tokens: 40,
            ..SamplingParams::default()
        },
    ];
    let before = accepted(&spec);
    for params in cases {
        let want = run(&plain, &prompt, params.clone());
        assert_eq!(run(&spec, &prompt, params.clone()), want, "{params:?}");
    }
    assert!(
        accepted(&spec) > before,
        "nothing accepted: the test would be vacuous"
    );
    plain.shutdown();
    spec.shutdown();
}

#[test]
fn stops_inside_accepted_runs_end_where_plain_decoding_ends() {
    let plain = engine(None, None);
    let spec = engine(eager(), None);
    let prompt = ids(&plain, LIST);
    let mut cases: Vec<SamplingParams> = (1..=7).map(SamplingParams::greedy).collect();
    cases.push(SamplingParams {
        stop: vec!["Friday".into()],
        ..SamplingParams::greedy(60)
    });
    cases.push(SamplingParams {
        stop: vec!["day, Sat".into(), "Sunday. Mon".into()],
        ..SamplingParams::greedy(60)
    });
    // The token after " Wednesday," as a stop token id: inside a run of accepted drafts.
    let stop_id = ids(&plain, " Thursday")[0];
    cases.push(SamplingParams {
        stop_token_ids: vec![stop_id],
        ..SamplingParams::greedy(60)
    });
    for params in cases {
        let want = run(&plain, &prompt, params.clone());
        let got = run(&spec, &prompt, params.clone());
        assert_eq!(got, want, "{params:?}");
        assert!(got.ids.len() <= params.max_tokens);
    }
    assert!(accepted(&spec) > 0);
    plain.shutdown();
    spec.shutdown();
}

#[test]
fn preemption_and_aborts_under_speculation() {
    let plain = engine(None, None);
    let prompts: Vec<Vec<u32>> = [
        REPEAT,
        LIST,
        "Count: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3,",
    ]
    .iter()
    .map(|t| ids(&plain, t))
    .collect();
    let want: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| run_ids(&plain, p, greedy(64)))
        .collect();
    plain.shutdown();
    // 16 blocks of 16 tokens for three requests growing to 100-140 tokens: preemptions.
    let spec = engine(eager(), Some(16));
    let got = run_batch(&spec, &prompts, greedy(64));
    assert_eq!(got, want);
    let stats = spec.gauges().snapshot();
    assert!(stats.num_preemptions > 0, "no preemption exercised");
    assert!(stats.spec_decode_num_accepted_tokens > 0);
    // An abort mid-generation (the consumer leaves) frees the request's blocks.
    let mut stream = spec
        .submit(prompts[1].clone(), greedy(200))
        .expect("submit");
    let first = stream.blocking_next().expect("an event").expect("no error");
    assert!(!first.token_ids.is_empty());
    drop(stream);
    wait_until_all_blocks_free(&spec);
    assert_eq!(
        run_ids(&spec, &prompts[0], greedy(64)),
        want[0],
        "serves on after the abort"
    );
    spec.shutdown();
}
