//! `tessera perplexity` against llama.cpp's `llama-perplexity` on the default model
//! (tests/golden/smollm2_perplexity.json, made by scripts/golden_perplexity.py on
//! tests/fixtures/perplexity/lighthouse.txt): the same chunking (chunks of `ctx` tokens,
//! BOS first when the vocabulary adds one, the second half of each scored), the same
//! running estimate after every chunk and the same final number, within 0.1 %.

mod common;

use common::*;
use serde_json::Value;
use tessera::config::EngineConfig;
use tessera::perplexity::PerplexityRun;

#[test]
fn perplexity_matches_llama_perplexity() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("tests/golden/smollm2_perplexity.json"))
            .expect("golden"),
    )
    .expect("JSON");
    let text = std::fs::read_to_string(repo_path(golden["text_file"].as_str().expect("text")))
        .expect("text file");
    let cfg = EngineConfig {
        max_model_len: Some(2048),
        kv_cache_memory: 64 << 20,
        ..EngineConfig::default()
    };
    let engine = start(&default_model(), cfg);
    for run in golden["runs"].as_array().expect("runs") {
        let ctx = run["ctx"].as_u64().expect("ctx") as usize;
        let want: Vec<f64> = serde_json::from_value(run["chunks"].clone()).expect("chunks");
        let mut got = Vec::new();
        let result = tessera::perplexity::perplexity(
            &engine,
            &text,
            PerplexityRun::chunks_of(ctx),
            |i, ppl| {
                assert_eq!(i, got.len() + 1);
                got.push(ppl);
            },
        )
        .expect("perplexity");
        assert_eq!(got.len(), want.len(), "ctx {ctx}: chunks");
        assert_eq!(result.chunks, want.len());
        assert_eq!(result.scored, want.len() * (ctx - 1 - ctx / 2));
        for (i, (ours, theirs)) in got.iter().zip(&want).enumerate() {
            let rel = (ours / theirs - 1.0).abs();
            assert!(
                rel < 1e-3,
                "ctx {ctx}, chunk {}: ours {ours:.4}, llama-perplexity {theirs:.4} ({:.3} %)",
                i + 1,
                rel * 100.0
            );
        }
        let ppl = run["ppl"].as_f64().expect("ppl");
        assert!(
            (result.ppl / ppl - 1.0).abs() < 1e-3,
            "ctx {ctx}: {} vs {ppl}",
            result.ppl
        );
    }
    let short = tessera::perplexity::perplexity(
        &engine,
        "too short",
        PerplexityRun::chunks_of(128),
        |_, _| {},
    );
    let err = short.expect_err("a short text is refused").to_string();
    assert!(err.contains("at least 256 tokens"), "{err}");
    engine.shutdown();
}
