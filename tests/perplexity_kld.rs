//! `tessera perplexity`'s KL divergence against llama.cpp's `llama-perplexity` on the
//! InternLM2 fixtures (tests/golden/internlm2-tiny-kld.json and the saved rows
//! tests/golden/internlm2-tiny-f32.kld, made by scripts/golden_kld.py):
//! - the rows we save from the F32 fixture are llama-perplexity's file: same header and
//!   tokens byte for byte, every row's stored log-probabilities within a few steps;
//! - our statistics of the Q8_0 fixture against llama-perplexity's file are its own;
//! - the F16 fixture quantized at load (`--quantization q8_0`) gives the Q8_0 file's;
//! - a model against its own saved rows diverges by nothing; a file of another
//!   vocabulary or a cut file is refused with the reason.

mod common;

use common::*;
use serde_json::Value;
use tessera::config::EngineConfig;
use tessera::model::quantize::Quantization;
use tessera::perplexity::kld::KlDivergence;
use tessera::perplexity::logits_file::LogitsReader;
use tessera::perplexity::{kl_divergence, perplexity, PerplexityRun};

const SAVED: &str = "tests/golden/internlm2-tiny-f32.kld";

fn golden() -> Value {
    let text = std::fs::read_to_string(repo_path("tests/golden/internlm2-tiny-kld.json"));
    serde_json::from_str(&text.expect("golden")).expect("JSON")
}

fn engine(
    model: &str,
    quantization: Option<Quantization>,
) -> tessera::engine::handle::EngineHandle {
    let cfg = EngineConfig {
        max_model_len: Some(512),
        kv_cache_memory: 16 << 20,
        quantization,
        ..EngineConfig::default()
    };
    start(&repo_path(model), cfg)
}

fn temp_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-kld-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn reader(path: &std::path::Path) -> LogitsReader<std::io::BufReader<std::fs::File>> {
    let file = std::fs::File::open(path).expect("open");
    LogitsReader::open(std::io::BufReader::new(file)).expect("a rows file")
}

/// Our statistics against llama-perplexity's printed ones.
fn check_figures(ours: &KlDivergence, want: &Value) {
    let f = |name: &str| want[name].as_f64().expect(name);
    let close = |got: f64, theirs: f64, tol: f64, what: &str| {
        assert!(
            (got - theirs).abs() <= tol,
            "{what}: ours {got}, llama-perplexity {theirs}"
        );
    };
    close(
        ours.ppl_base.0.ln(),
        f("ppl_base").ln(),
        1e-4,
        "ln PPL(base)",
    );
    close(ours.ppl.0.ln(), f("ppl").ln(), 2e-3, "ln PPL(Q)");
    close(
        ours.log_ppl_ratio.0,
        f("log_ppl_ratio"),
        2e-3,
        "ln(PPL(Q)/PPL(base))",
    );
    close(ours.kld.0, f("kld_mean"), 0.02 * f("kld_mean"), "mean KLD");
    close(
        f64::from(ours.kld_percentile(0.5)),
        f("kld_median"),
        0.05 * f("kld_median"),
        "median KLD",
    );
    close(
        f64::from(ours.kld_percentile(1.0)),
        f("kld_max"),
        0.05 * f("kld_max"),
        "max KLD",
    );
    // One position more or less with the same top token, out of `count`.
    close(
        100.0 * ours.same_top.0,
        f("same_top_percent"),
        100.0 / ours.count as f64 + 1e-3,
        "same top",
    );
}

#[test]
fn saved_rows_are_llama_perplexitys_file() {
    let g = golden();
    let text =
        std::fs::read_to_string(repo_path(g["text_file"].as_str().expect("text"))).expect("text");
    let ctx = g["ctx"].as_u64().expect("ctx") as usize;
    let chunks = g["chunks"].as_u64().expect("chunks") as usize;
    let base = engine(g["base_model"].as_str().expect("base"), None);
    let ours_path = temp_file("f32.kld");
    let run = PerplexityRun {
        n_ctx: ctx,
        max_chunks: Some(chunks),
        save_base: Some(&ours_path),
    };
    perplexity(&base, &text, run, |_, _| {}).expect("perplexity");
    base.shutdown();

    let (mut ours, mut theirs) = (reader(&ours_path), reader(&repo_path(SAVED)));
    assert_eq!(ours.header, theirs.header, "header and tokens");
    let (mut worst_step, mut rows) = (0i32, 0);
    while let Ok(want) = theirs.read() {
        let got = ours.read().expect("as many rows as llama-perplexity's");
        assert!(
            (got.min_log_prob - want.min_log_prob).abs() < 1e-3,
            "row {rows}"
        );
        assert!((got.scale / want.scale - 1.0).abs() < 1e-3, "row {rows}");
        for (a, b) in got.q.iter().zip(&want.q) {
            worst_step = worst_step.max((i32::from(*a) - i32::from(*b)).abs());
        }
        rows += 1;
    }
    assert!(ours.read().is_err(), "no rows beyond llama-perplexity's");
    assert_eq!(rows, chunks * (ctx - 1 - ctx / 2));
    // A step is 16 nats / 65535; logits agree with llama.cpp to ~1e-3 nats.
    assert!(worst_step <= 16, "rows differ by up to {worst_step} steps");
}

#[test]
fn kl_divergence_matches_llama_perplexity() {
    let g = golden();
    let q8 = engine(g["quantized_model"].as_str().expect("model"), None);
    let mut chunks_seen = 0;
    let ours = kl_divergence(&q8, &repo_path(SAVED), |i, _| chunks_seen = i).expect("kld");
    q8.shutdown();
    assert_eq!(chunks_seen, g["chunks"].as_u64().expect("chunks") as usize);
    check_figures(&ours, &g["figures"]);

    // The F16 fixture quantized at load is llama-quantize's Q8_0, bit for bit.
    let at_load = engine(
        "tests/fixtures/internlm2-tiny-f16.gguf",
        Some(Quantization::Q8_0),
    );
    let again = kl_divergence(&at_load, &repo_path(SAVED), |_, _| {}).expect("kld");
    at_load.shutdown();
    assert_eq!(again, ours);
}

#[test]
fn a_model_against_its_own_rows_does_not_diverge_and_bad_files_are_refused() {
    let g = golden();
    let model = engine(g["base_model"].as_str().expect("base"), None);
    let text =
        std::fs::read_to_string(repo_path(g["text_file"].as_str().expect("text"))).expect("text");
    let path = temp_file("self.kld");
    let run = PerplexityRun {
        n_ctx: 64,
        max_chunks: None,
        save_base: Some(&path),
    };
    let ppl = perplexity(&model, &text, run, |_, _| {}).expect("perplexity");
    let own = kl_divergence(&model, &path, |_, _| {}).expect("kld");
    assert!(own.kld.0 < 1e-5, "{}", own.kld.0);
    assert_eq!(own.same_top.0, 1.0);
    assert!(
        (own.ppl.0 / ppl.ppl - 1.0).abs() < 1e-6,
        "{} vs {}",
        own.ppl.0,
        ppl.ppl
    );

    let bytes = std::fs::read(&path).expect("saved");
    let cut = temp_file("cut.kld");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
    let err = kl_divergence(&model, &cut, |_, _| {})
        .expect_err("a cut file")
        .to_string();
    assert!(err.contains("reading a row"), "{err}");
    model.shutdown();

    let other = start(
        &default_model(),
        EngineConfig {
            max_model_len: Some(512),
            kv_cache_memory: 16 << 20,
            ..EngineConfig::default()
        },
    );
    let err = kl_divergence(&other, &path, |_, _| {})
        .expect_err("another vocabulary")
        .to_string();
    assert!(
        err.contains("vocabulary of 2412 tokens; this model has 49152"),
        "{err}"
    );
    let missing = kl_divergence(&other, &temp_file("none.kld"), |_, _| {})
        .expect_err("no file")
        .to_string();
    assert!(missing.contains("opening"), "{missing}");
    other.shutdown();
}
