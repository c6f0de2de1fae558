//! Shared helpers for integration tests: locating cached files, starting engines, reading
//! the llama.cpp golden files.

#![allow(dead_code)]

pub mod golden_check;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tessera::config::{default_model_path, EngineConfig};
use tessera::engine::handle::{self, EngineHandle};
use tessera::request::SamplingParams;

/// The default model; fails (not skips) with the fix when it has not been fetched.
pub fn default_model() -> PathBuf {
    let path = default_model_path();
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        path.display()
    );
    path
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Loads `path` as `cfg` says (its context cap and `--quantization`) and starts an engine.
pub fn start(path: &Path, cfg: EngineConfig) -> EngineHandle {
    let options = tessera::model::LoadOptions {
        max_model_len: cfg.max_model_len,
        quantization: cfg.quantization,
    };
    let loaded = tessera::model::load_with(path, &options, |_, _| {})
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    handle::start(loaded, &cfg).expect("engine starts")
}

#[derive(Debug, Clone, Deserialize)]
pub struct GoldenFile {
    pub model_file: String,
    /// The LoRA adapter llama.cpp ran with (`lora-*.json`), repo-relative.
    #[serde(default)]
    pub adapter_file: Option<String>,
    pub cases: Vec<GoldenCase>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GoldenCase {
    pub name: String,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    /// llama.cpp's top-1 minus top-2 logit at each generated step.
    pub step_margins: Vec<f32>,
    /// The first step's ten largest logits `(id, logit)`, largest first.
    pub first_top: Vec<(u32, f32)>,
}

pub fn golden(name: &str) -> GoldenFile {
    let path = repo_path(&format!("tests/golden/{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Model path of a golden file: the cache for the default model, else repo-relative.
pub fn golden_model_path(file: &GoldenFile) -> PathBuf {
    if file.model_file.contains('/') {
        repo_path(&file.model_file)
    } else {
        let path = default_model();
        assert_eq!(path.file_name().unwrap().to_string_lossy(), file.model_file);
        path
    }
}

/// Greedy, exactly `n` tokens (EOS does not stop it).
pub fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n)
    }
}

/// Runs one prompt to completion and returns its token ids.
pub fn run_ids(engine: &EngineHandle, prompt: &[u32], params: SamplingParams) -> Vec<u32> {
    let stream = engine.submit(prompt.to_vec(), params).expect("submit");
    let (ids, _, _, _) = stream.blocking_collect().expect("completes");
    ids
}

/// Submits all prompts at once and collects each one's ids (in input order).
pub fn run_batch(
    engine: &EngineHandle,
    prompts: &[Vec<u32>],
    params: SamplingParams,
) -> Vec<Vec<u32>> {
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(p.clone(), params.clone()).expect("submit"))
        .collect();
    streams
        .into_iter()
        .map(|s| s.blocking_collect().expect("completes").0)
        .collect()
}

/// A data directory of its own for each spawned server (`TESSERA_DATA_DIR`), not the
/// working tree's: the tests run in parallel, and two servers opening one SQLite store at
/// once find it locked.
pub fn fresh_data_dir(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("tessera-{tag}-{}-{n}", std::process::id()))
}
