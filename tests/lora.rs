//! LoRA adapters against llama.cpp: each adapter of tests/fixtures/lora (made by
//! scripts/make_lora_fixtures.py) gives llama.cpp's greedy ids and first logits
//! (tests/golden/lora-*.json, llama.cpp run with the adapter), alone and inside a batch
//! that mixes three adapters and the base model; the prefix cache never hands one
//! adapter's KV blocks to another; bad adapters are refused with clear errors.

mod common;

use std::path::Path;

use common::golden_check::{check_engine_against, N};
use common::*;
use tessera::config::{EngineConfig, LoraOptions};
use tessera::engine::handle::{self, EngineHandle};
use tessera::model::lora::LoraError;
use tessera::request::{AdapterId, SamplingParams};

const LLAMA_ADAPTERS: [&str; 3] = ["llama-attn-r8", "llama-mlp-r4", "llama-all-r16"];

fn engine_cfg() -> EngineConfig {
    EngineConfig {
        // A small step budget forces chunked prefill on the long prompts.
        max_num_batched_tokens: 128,
        kv_cache_memory: 256 << 20,
        ..EngineConfig::default()
    }
}

fn options(adapters: &[&str], max_lora_rank: usize) -> LoraOptions {
    LoraOptions {
        modules: adapters
            .iter()
            .map(|a| (a.to_string(), adapter_path(a)))
            .collect(),
        max_loras: adapters.len().max(1),
        max_lora_rank,
    }
}

fn adapter_path(stem: &str) -> std::path::PathBuf {
    repo_path(&format!("tests/fixtures/lora/{stem}.gguf"))
}

/// An engine over `base` serving `adapters` (named by their stems).
fn engine_with(base: &Path, adapters: &[&str]) -> EngineHandle {
    let cfg = engine_cfg();
    let mut loaded = tessera::model::load(base, None, |_, _| {}).expect("base loads");
    loaded
        .serve_adapters(&options(adapters, 16), &[loaded.assets.name.clone()])
        .expect("adapters load");
    handle::start(loaded, &cfg).expect("engine starts")
}

fn id_of(engine: &EngineHandle, name: &str) -> AdapterId {
    engine.model().adapters.by_name(name).expect("served").id
}

fn with_lora(lora: Option<AdapterId>, n: usize) -> SamplingParams {
    SamplingParams { lora, ..greedy(n) }
}

#[test]
fn each_adapter_matches_llama_cpp() {
    for stem in LLAMA_ADAPTERS.iter().chain(&["qwen2-qv-r8"]) {
        let name = format!("lora-{stem}");
        let g = golden(&name);
        assert_eq!(
            g.adapter_file.as_deref(),
            Some(format!("tests/fixtures/lora/{stem}.gguf").as_str())
        );
        let engine = engine_with(&golden_model_path(&g), &[stem]);
        let id = id_of(&engine, stem);
        check_engine_against(&name, &g, engine, 0.0, Some(id));
    }
}
