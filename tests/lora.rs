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
use tessera::request::{LoraRef, SamplingParams};

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

fn id_of(engine: &EngineHandle, name: &str) -> LoraRef {
    engine.model().adapters.by_name(name).expect("served").lora
}

fn with_lora(lora: Option<LoraRef>, n: usize) -> SamplingParams {
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

/// Submits every `(prompt, params)` at once and collects each one's ids and usage.
fn run_mixed(engine: &EngineHandle, jobs: &[(Vec<u32>, SamplingParams)]) -> Vec<(Vec<u32>, usize)> {
    let streams: Vec<_> = jobs
        .iter()
        .map(|(p, params)| engine.submit(p.clone(), params.clone()).expect("submit"))
        .collect();
    streams
        .into_iter()
        .map(|s| {
            let (ids, _, _, usage) = s.blocking_collect().expect("completes");
            (ids, usage.cached_tokens)
        })
        .collect()
}

/// One batch mixing three adapters and the base model, every prompt of the goldens
/// under each: every sequence gives llama.cpp's 32 greedy ids for its own adapter (the
/// base model's for the base rows), as it does alone (`each_adapter_matches_llama_cpp`).
#[test]
fn a_batch_mixing_three_adapters_and_the_base_matches_each_alone() {
    let base = golden("llama-tiny-f16-mixed");
    let engine = engine_with(&golden_model_path(&base), &LLAMA_ADAPTERS);
    // (name, adapter, golden) for the base and each adapter.
    let mut runs = vec![("base", None, base.clone())];
    for stem in LLAMA_ADAPTERS {
        runs.push((
            stem,
            Some(id_of(&engine, stem)),
            golden(&format!("lora-{stem}")),
        ));
    }
    let (mut jobs, mut expected) = (Vec::new(), Vec::new());
    for (i, case) in base.cases.iter().enumerate() {
        // Interleaved, so each step's rows alternate between adapters.
        for (stem, lora, g) in &runs {
            assert_eq!(g.cases[i].prompt_ids, case.prompt_ids);
            jobs.push((case.prompt_ids.clone(), with_lora(lora.clone(), N)));
            expected.push((*stem, &case.name, &g.cases[i].output_ids));
        }
    }
    let got = run_mixed(&engine, &jobs);
    for ((ids, _), (stem, case, want)) in got.iter().zip(&expected) {
        assert_eq!(
            ids, *want,
            "{stem}/{case}: mixed batch differs from llama.cpp"
        );
    }
    engine.shutdown();
}

/// The same long prompt under an adapter, then the base model, then another adapter,
/// then the first again: only the repeat hits the prefix cache, and every run gives its
/// own llama.cpp ids. Without the adapter in the block hash the base run would reuse the
/// adapter's K/V (cached_tokens > 0) and drift from the base model's golden.
#[test]
fn the_prefix_cache_does_not_share_blocks_across_adapters() {
    let base = golden("llama-tiny-f16-mixed");
    let engine = engine_with(&golden_model_path(&base), &LLAMA_ADAPTERS[..2]);
    let case = base
        .cases
        .iter()
        .find(|c| c.name == "chat_long")
        .expect("case");
    assert!(case.prompt_ids.len() > 200);
    let want = |stem: Option<&str>| {
        let g = stem.map_or_else(
            || golden("llama-tiny-f16-mixed"),
            |s| golden(&format!("lora-{s}")),
        );
        g.cases
            .into_iter()
            .find(|c| c.name == case.name)
            .unwrap()
            .output_ids
    };
    let (a, b) = (LLAMA_ADAPTERS[0], LLAMA_ADAPTERS[1]);
    let order = [Some(a), None, Some(b), Some(a), None];
    let mut cached = Vec::new();
    for stem in order {
        let lora = stem.map(|s| id_of(&engine, s));
        let job = [(case.prompt_ids.clone(), with_lora(lora, N))];
        let (ids, hit) = run_mixed(&engine, &job).remove(0);
        assert_eq!(
            ids,
            want(stem),
            "{stem:?}: ids after the other adapters ran"
        );
        cached.push(hit);
    }
    assert_eq!(
        cached[..3],
        [0, 0, 0],
        "a first run under an adapter hit another's blocks"
    );
    assert!(
        cached[3] > 0 && cached[4] > 0,
        "repeats hit their own blocks: {cached:?}"
    );
    engine.shutdown();
}

fn load_err(base: &str, options: &LoraOptions, names: &[String]) -> String {
    let base = repo_path(&format!("tests/fixtures/{base}.gguf"));
    let mut loaded = tessera::model::load(&base, None, |_, _| {}).expect("base loads");
    let err: LoraError = loaded.serve_adapters(options, names).expect_err("refused");
    err.to_string()
}

#[test]
fn bad_adapters_are_refused_with_clear_errors() {
    let llama = "llama-tiny-f16-mixed";
    let base_name = [llama.to_string()];
    let cases: Vec<(LoraOptions, &str)> = vec![
        // A model file is not an adapter.
        (
            LoraOptions {
                modules: vec![(
                    "x".into(),
                    repo_path(&format!("tests/fixtures/{llama}.gguf")),
                )],
                ..options(&[], 16)
            },
            "`general.type` must be \"adapter\"",
        ),
        (
            LoraOptions {
                modules: vec![("x".into(), repo_path("README.md"))],
                ..options(&[], 16)
            },
            "not a GGUF file",
        ),
        (
            options(&["llama-all-r16"], 8),
            "has rank 16; --max-lora-rank allows 1..=8",
        ),
        (
            options(&["qwen2-qv-r8"], 16),
            "is for architecture `qwen2`, but the base model is `llama`",
        ),
        (
            LoraOptions {
                max_loras: 1,
                ..options(&["llama-attn-r8", "llama-mlp-r4"], 16)
            },
            "2 adapters given by --lora-modules, but --max-loras is 1",
        ),
        (
            LoraOptions {
                modules: vec![
                    ("same".into(), adapter_path("llama-attn-r8")),
                    ("same".into(), adapter_path("llama-mlp-r4")),
                ],
                ..options(&["a", "b"], 16)
            },
            "name `same`: is given twice",
        ),
        (
            LoraOptions {
                modules: vec![(llama.into(), adapter_path("llama-attn-r8"))],
                ..options(&[], 16)
            },
            "is the base model's",
        ),
    ];
    for (opts, want) in cases {
        let got = load_err(llama, &opts, &base_name);
        assert!(got.contains(want), "expected {want:?} in: {got}");
    }
    // Same architecture, other shapes: the tiny llama's adapter on SmolLM2 (llama, 576 wide).
    let mut smollm2 = tessera::model::load(&default_model(), None, |_, _| {}).expect("loads");
    let err = smollm2
        .serve_adapters(&options(&["llama-attn-r8"], 16), &[])
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains(
            "`blk.0.attn_q.weight` is [576, 576] in the base model, but its lora_a is [8, 128]"
        ),
        "{err}"
    );
}

/// The PEFT folder of `llama-attn-r8` (the same numbers, as PEFT saves them: Hugging Face
/// names, q/k lora_B rows in half-split RoPE order) gives llama.cpp's ids for the GGUF.
#[test]
fn a_peft_folder_matches_its_gguf_conversion() {
    let g = golden("lora-llama-attn-r8");
    let cfg = engine_cfg();
    let mut loaded = tessera::model::load(&golden_model_path(&g), None, |_, _| {}).expect("loads");
    let peft = repo_path("tests/fixtures/lora/peft-llama-attn-r8");
    let options = LoraOptions {
        modules: vec![("peft".into(), peft)],
        ..options(&[], 16)
    };
    loaded
        .serve_adapters(&options, &[loaded.assets.name.clone()])
        .expect("the PEFT folder loads");
    let engine = handle::start(loaded, &cfg).expect("engine starts");
    let lora = id_of(&engine, "peft");
    check_engine_against("lora-llama-attn-r8 (PEFT)", &g, engine, 0.0, Some(lora));
}

/// A copy of the PEFT fixture in a fresh folder, its adapter_config.json changed by `edit`.
fn peft_copy(tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let src = repo_path("tests/fixtures/lora/peft-llama-attn-r8");
    let dir = std::env::temp_dir().join(format!("tessera-peft-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let weights = "adapter_model.safetensors";
    std::fs::copy(src.join(weights), dir.join(weights)).expect("copies");
    let text = std::fs::read_to_string(src.join("adapter_config.json")).expect("reads");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("json");
    edit(&mut config);
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).expect("writes");
    dir
}

#[test]
fn unsupported_peft_adapters_are_refused_with_clear_errors() {
    use serde_json::json;
    let llama = "llama-tiny-f16-mixed";
    let base_name = [llama.to_string()];
    // (adapter, expected message); every case but the last is a temporary copy.
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (
            peft_copy("fifo", |c| c["fan_in_fan_out"] = json!(true)),
            "`fan_in_fan_out: true`",
        ),
        (
            peft_copy("dora", |c| c["use_dora"] = json!(true)),
            "(DoRA) is not supported",
        ),
        (
            peft_copy("embed", |c| {
                c["target_modules"] = json!(["q_proj", "embed_tokens"])
            }),
            "target module \"embed_tokens\" cannot be adapted",
        ),
        (
            peft_copy("rank", |c| c["r"] = json!(4)),
            "has rank 8, but adapter_config.json says r = 4",
        ),
        (
            peft_copy("type", |c| c["peft_type"] = json!("IA3")),
            "`peft_type` must be \"LORA\"",
        ),
        (repo_path("tests/fixtures/lora"), "cannot be read"),
    ];
    let fixtures = repo_path("tests/fixtures");
    for (path, want) in cases {
        let opts = LoraOptions {
            modules: vec![("x".into(), path.clone())],
            ..options(&[], 16)
        };
        let got = load_err(llama, &opts, &base_name);
        assert!(got.contains(want), "expected {want:?} in: {got}");
        // Only the copies go: the checkout itself may live under the temp dir (a CI
        // clone in /tmp), so "under temp_dir" does not mean "a copy".
        if !path.starts_with(&fixtures) {
            std::fs::remove_dir_all(&path).expect("cleans up");
        }
    }
    let over = LoraOptions {
        modules: vec![(
            "x".into(),
            repo_path("tests/fixtures/lora/peft-llama-attn-r8"),
        )],
        ..options(&[], 4)
    };
    let got = load_err(llama, &over, &base_name);
    assert!(
        got.contains("has rank 8; --max-lora-rank allows 1..=4"),
        "{got}"
    );
}

/// An adapter unloaded after a request selected it: the request still runs with its
/// weights (llama.cpp's ids for that adapter), while the name is no longer served.
#[test]
fn a_request_keeps_its_adapter_through_an_unload() {
    let stem = LLAMA_ADAPTERS[0];
    let g = golden(&format!("lora-{stem}"));
    let engine = engine_with(&golden_model_path(&g), &[stem]);
    let lora = id_of(&engine, stem);
    engine.model().adapters.remove(stem).expect("unloads");
    assert!(engine.model().adapters.by_name(stem).is_none());
    assert!(engine.model().adapters.select(stem).is_err());
    let jobs: Vec<_> = g
        .cases
        .iter()
        .map(|c| (c.prompt_ids.clone(), with_lora(Some(lora.clone()), N)))
        .collect();
    for ((ids, _), case) in run_mixed(&engine, &jobs).iter().zip(&g.cases) {
        assert_eq!(
            ids, &case.output_ids,
            "{stem}/{}: after the unload",
            case.name
        );
    }
    engine.shutdown();
}
