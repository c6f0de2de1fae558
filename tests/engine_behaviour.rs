//! Engine behaviour on the real default model: prefix-cache reuse, preemption under a tiny
//! KV cache (both with the f16 and the `--kv-cache-dtype q8_0` cache), aborts, stop strings, seeded sampling and request validation (once, before
//! submitting: `server::validate::validate_sequence`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use tessera::config::EngineConfig;
use tessera::engine::error::EngineError;
use tessera::engine::handle::EngineHandle;
use tessera::error::ApiError;
use tessera::model::kv_storage::KvCacheDtype;
use tessera::request::{FinishReason, SamplingParams};
use tessera::server::validate::validate_sequence;

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

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn all_blocks_free(engine: &EngineHandle) -> bool {
    engine.gauges().snapshot().kv_blocks_used == 0
}

#[test]
fn prefix_cache_reuses_blocks_and_gives_the_cold_output() {
    prefix_cache_hit_gives_the_cold_output(KvCacheDtype::Auto);
}

#[test]
fn kv_q8_0_prefix_cache_reuses_blocks_and_gives_the_cold_output() {
    prefix_cache_hit_gives_the_cold_output(KvCacheDtype::Q8_0);
}

fn prefix_cache_hit_gives_the_cold_output(kv: KvCacheDtype) {
    let long = "The history of the printing press is a story of many hands. ".repeat(30);
    let warm = engine(EngineConfig {
        kv_cache_dtype: kv,
        ..EngineConfig::default()
    });
    let first = chat_ids(&warm, &format!("{long}\nSummarize this in one line."));
    let second = chat_ids(&warm, &format!("{long}\nWho invented it?"));
    run_ids(&warm, &first, greedy(8));
    let stream = warm.submit(second.clone(), greedy(16)).unwrap();
    let (warm_ids, _, _, usage) = stream.blocking_collect().unwrap();
    assert!(
        usage.cached_tokens >= 256,
        "expected the shared prefix to be served from cache, got {} cached of {} tokens",
        usage.cached_tokens,
        second.len()
    );
    assert!(usage.cached_tokens < second.len());
    warm.shutdown();

    let cold = engine(EngineConfig {
        enable_prefix_caching: false,
        kv_cache_dtype: kv,
        ..EngineConfig::default()
    });
    let stream = cold.submit(second, greedy(16)).unwrap();
    let (cold_ids, _, _, usage) = stream.blocking_collect().unwrap();
    assert_eq!(usage.cached_tokens, 0);
    assert_eq!(warm_ids, cold_ids, "prefix-cache hit changed the output");
    cold.shutdown();
}

#[test]
fn preemption_under_a_tiny_cache_keeps_outputs_and_frees_every_block() {
    preemption_keeps_outputs(KvCacheDtype::Auto);
}

#[test]
fn kv_q8_0_preemption_under_a_tiny_cache_keeps_outputs_and_frees_every_block() {
    preemption_keeps_outputs(KvCacheDtype::Q8_0);
}

fn preemption_keeps_outputs(kv: KvCacheDtype) {
    let prompts: Vec<String> = (0..16)
        .map(|i| format!("Write a short poem about the number {i} and the sea."))
        .collect();
    let big = engine(EngineConfig {
        kv_cache_dtype: kv,
        ..EngineConfig::default()
    });
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| chat_ids(&big, p)).collect();
    let want = run_batch(&big, &ids, greedy(48));
    big.shutdown();

    // ~40-token prompts + 48 outputs need 6 blocks each: 96 for all 16, we give 24.
    let small = engine(EngineConfig {
        num_kv_blocks: Some(24),
        max_model_len: Some(384),
        kv_cache_dtype: kv,
        ..EngineConfig::default()
    });
    let got = run_batch(&small, &ids, greedy(48));
    let stats = small.gauges().snapshot();
    assert!(
        stats.num_preemptions > 0,
        "the small cache should have forced preemptions"
    );
    assert_eq!(
        got, want,
        "preempted requests must recompute to the same outputs"
    );
    wait_until("all blocks free", || all_blocks_free(&small));
    small.shutdown();
}

#[test]
fn dropped_streams_are_aborted_and_free_their_blocks() {
    let e = engine(EngineConfig::default());
    let ids = chat_ids(&e, "Tell me a very long story about dragons.");
    let streams: Vec<_> = (0..8)
        .map(|_| e.submit(ids.clone(), greedy(200)).unwrap())
        .collect();
    let mut streams = streams;
    for s in &mut streams {
        let first = s.blocking_next().expect("an event").expect("no error");
        assert!(!first.token_ids.is_empty());
    }
    drop(streams);
    wait_until("running = 0", || e.gauges().snapshot().num_running == 0);
    wait_until("all blocks free", || all_blocks_free(&e));
    e.shutdown();
}

#[test]
fn stop_strings_end_the_stream_without_emitting_the_stop() {
    let e = engine(EngineConfig::default());
    let ids = chat_ids(&e, "What is the capital of France?");
    // Greedy output is "The capital of France is Paris."; "of France" spans tokens.
    let params = SamplingParams {
        stop: vec!["of France".to_string()],
        ..greedy(32)
    };
    let (_, text, reason, _) = e.submit(ids, params).unwrap().blocking_collect().unwrap();
    assert_eq!(text, "The capital ");
    assert_eq!(reason, FinishReason::Stop);
    e.shutdown();
}

#[test]
fn seeded_sampling_is_reproducible_alone_and_in_a_batch() {
    let e = engine(EngineConfig::default());
    let ids = chat_ids(&e, "Invent a name for a cat.");
    let params = |seed| SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        seed: Some(seed),
        ignore_eos: true,
        max_tokens: 24,
        ..SamplingParams::default()
    };
    let alone = run_ids(&e, &ids, params(7));
    assert_eq!(run_ids(&e, &ids, params(7)), alone);
    let batch: Vec<Vec<u32>> = (0..4).map(|_| ids.clone()).collect();
    let streams: Vec<_> = batch
        .iter()
        .enumerate()
        .map(|(i, p)| {
            e.submit(p.clone(), params(if i == 2 { 7 } else { 100 + i as u64 }))
                .unwrap()
        })
        .collect();
    let outs: Vec<Vec<u32>> = streams
        .into_iter()
        .map(|s| s.blocking_collect().unwrap().0)
        .collect();
    assert_eq!(
        outs[2], alone,
        "seed 7 inside a batch must match seed 7 alone"
    );
    assert!(outs.iter().enumerate().any(|(i, o)| i != 2 && *o != alone));
    e.shutdown();
}

#[test]
fn invalid_requests_get_clear_errors() {
    let e = engine(EngineConfig {
        max_model_len: Some(64),
        ..EngineConfig::default()
    });
    let ids = chat_ids(&e, "hi");
    let refuse = |prompt: Vec<u32>, params: SamplingParams| match validate_sequence(
        prompt,
        params,
        e.info(),
    )
    .err()
    .unwrap()
    {
        ApiError::Engine(err) => err,
        other => panic!("not an engine error: {other}"),
    };
    let err = refuse(vec![], greedy(4));
    assert_eq!(err, EngineError::EmptyPrompt);
    let err = refuse(ids.clone(), greedy(60));
    assert!(
        matches!(
            err,
            EngineError::ContextLength {
                max_model_len: 64,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("64"));
    let err = refuse(vec![1, 2, 9_999_999], greedy(4));
    assert!(
        matches!(err, EngineError::InvalidToken { position: 2, .. }),
        "{err}"
    );
    let bad = SamplingParams {
        top_p: 1.5,
        ..greedy(4)
    };
    let err = refuse(ids.clone(), bad);
    assert!(err.to_string().contains("top_p"), "{err}");
    // What passes validation runs.
    let (ids, params) = validate_sequence(ids, greedy(3), e.info()).expect("valid");
    assert_eq!(run_ids(&e, &ids, params).len(), 3);
    e.shutdown();
}

/// Panics on the engine thread during the third step that ran tokens, once.
struct PanicOnThirdStep(std::sync::atomic::AtomicUsize);

impl tessera::engine::handle::StepObserver for PanicOnThirdStep {
    fn on_step(&self, _: &tessera::engine::core::StepStats, _: Duration) {
        if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 2 {
            panic!("injected step failure");
        }
    }
}

#[test]
fn a_panicking_step_fails_the_requests_in_flight_and_the_engine_goes_on() {
    let e = engine(EngineConfig::default());
    let ids = chat_ids(&e, "Name three colors.");
    let reference = run_ids(&e, &ids, greedy(12));
    let observer = std::sync::Arc::new(PanicOnThirdStep(0.into()));
    assert!(e.set_step_observer(observer));
    let mut streams: Vec<_> = (0..3)
        .map(|_| e.submit(ids.clone(), greedy(100)).unwrap())
        .collect();
    for s in &mut streams {
        let err = std::iter::from_fn(|| s.blocking_next())
            .find_map(Result::err)
            .expect("the stream ends with an error");
        match err {
            EngineError::Internal(msg) => assert!(
                msg.contains("engine step failed: injected step failure"),
                "{msg}"
            ),
            other => panic!("expected an internal error, got {other:?}"),
        }
        assert!(s.blocking_next().is_none(), "nothing after the error");
    }
    wait_until("all blocks free", || all_blocks_free(&e));
    assert!(e.is_running());
    assert_eq!(
        run_ids(&e, &ids, greedy(12)),
        reference,
        "same output after the failure"
    );
    e.shutdown();
    assert!(!e.is_running());
}
