//! The whole model on `--device cuda` (feature `cuda`), dense and MoE, against
//! independent references:
//! llama.cpp's goldens for the F32/F16/BF16 fixtures, our CPU backend (which equals
//! llama.cpp bit for bit) for quantized models, and the GPU's own single-stream run for a
//! batch of 64 streams.
//!
//! Tolerance: the GPU holds every weight in F16 and runs F16 GEMM inputs with F32
//! accumulation, where the CPU path reproduces ggml's arithmetic (8-bit activations for
//! quantized weights). So ids are compared at every step where the reference's top-1 minus
//! top-2 logit is at least `FLOAT_MARGIN` (float fixtures) or `QUANT_MARGIN` (quantized
//! models: the CPU's Q8 activations against the GPU's F16 ones); closer steps are
//! legitimate ties for a different arithmetic.
//!
//! Without a GPU each GPU test prints one `skipped: <reason>` line and passes;
//! `scripts/gpu-check.sh` fails if any was skipped. The start-up refusals run everywhere.
#![cfg(feature = "cuda")]

mod common;

use common::golden_check::{check_engine_against, N};
use common::*;
use tessera::backend::Device;
use tessera::config::EngineConfig;
use tessera::engine::handle::{self, EngineHandle};
use tessera::model::kv_storage::KvCacheDtype;
use tessera::ops::cuda::CudaDevice;
use tessera::request::SamplingParams;

/// Reference margin (logits) above which float fixtures must give llama.cpp's ids.
const FLOAT_MARGIN: f32 = 0.05;
/// Reference margin above which quantized models must give the CPU backend's ids.
const QUANT_MARGIN: f32 = 0.5;

fn cuda_cfg() -> EngineConfig {
    EngineConfig {
        device: Device::Cuda(0),
        max_num_batched_tokens: 128,
        gpu_memory_utilization: 0.5,
        ..EngineConfig::default()
    }
}

/// Whether a GPU is here; prints the `skipped:` line when not.
fn gpu() -> bool {
    match CudaDevice::open(0) {
        Ok(_) => true,
        Err(reason) => {
            println!("skipped: {reason}");
            false
        }
    }
}

fn cuda_engine(file: &GoldenFile) -> EngineHandle {
    start(&golden_model_path(file), cuda_cfg())
}

#[test]
fn float_fixtures_match_llama_cpp_on_cuda() {
    if !gpu() {
        return;
    }
    for name in [
        "internlm2-tiny-f32",
        "internlm2-tiny-f16",
        "hf-qwen2-tiny-f32",
        "hf-llama-tiny-bf16",
        "llama-tiny-f16-mixed",
        "mixtral-tiny-moe-f32",
        "qwen2moe-tiny-f32",
    ] {
        let g = golden(name);
        check_engine_against(name, &g, cuda_engine(&g), FLOAT_MARGIN, None);
        println!("{name}: llama.cpp's ids on cuda");
    }
}

#[test]
fn quantized_models_match_the_cpu_backend_on_cuda() {
    if !gpu() {
        return;
    }
    // The CPU backend equals these goldens bit for bit (tests/golden.rs), so they are
    // its ids and margins.
    for name in [
        "smollm2",
        "qwen2-tiny-untied-mixed",
        "qwen2-tiny-tied-q4_k_m",
        "internlm2-tiny-q8_0",
        "mixtral-tiny-moe-q8_0",
        "qwen2moe-tiny-q8_0",
    ] {
        let g = golden(name);
        check_engine_against(name, &g, cuda_engine(&g), QUANT_MARGIN, None);
        println!("{name}: the CPU backend's ids on cuda");
    }
}

/// The ids of `prompt` alone on `engine`, and at each step whether the top two logits
/// were at least `FLOAT_MARGIN` apart.
fn alone_with_margins(engine: &EngineHandle, prompt: &[u32]) -> (Vec<u32>, Vec<bool>) {
    let params = SamplingParams {
        logprobs: Some(2),
        ..greedy(N)
    };
    let mut stream = engine.submit(prompt.to_vec(), params).expect("submit");
    let (mut ids, mut decisive) = (Vec::new(), Vec::new());
    while let Some(event) = stream.blocking_next() {
        let event = event.expect("completes");
        for lp in event.logprobs.unwrap_or_default() {
            decisive.push(lp.top.len() < 2 || lp.top[0].1 - lp.top[1].1 >= FLOAT_MARGIN);
        }
        ids.extend(event.token_ids);
    }
    (ids, decisive)
}

#[test]
fn sixty_four_streams_on_cuda_give_their_single_stream_ids() {
    if !gpu() {
        return;
    }
    let g = golden("smollm2");
    let engine = cuda_engine(&g);
    let prompts: Vec<Vec<u32>> = (0..64)
        .map(|i| {
            let case = &g.cases[i % g.cases.len()];
            let mut p = case.prompt_ids.clone();
            p.extend(&case.output_ids[..i % 8]);
            p
        })
        .collect();
    let batched = run_batch(&engine, &prompts, greedy(N));
    for (i, (prompt, got)) in prompts.iter().zip(&batched).enumerate() {
        assert_eq!(got.len(), N, "stream {i}: {} tokens", got.len());
        let (alone, decisive) = alone_with_margins(&engine, prompt);
        let agree = decisive.iter().take_while(|&&d| d).count();
        assert_eq!(
            got[..agree],
            alone[..agree],
            "stream {i}: batched ids differ from its single-stream run before step {agree}"
        );
    }
    engine.shutdown();
}

fn start_error(path: &std::path::Path, cfg: EngineConfig) -> String {
    let options = tessera::model::LoadOptions::default();
    let loaded = tessera::model::load_with(path, &options, |_, _| {}).expect("loads");
    match handle::start(loaded, &cfg) {
        Ok(engine) => {
            engine.shutdown();
            panic!("{} started on cuda with {cfg:?}", path.display())
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn what_cuda_cannot_run_is_refused_at_start() {
    let g = golden("internlm2-tiny-f32");
    let q8_kv = EngineConfig {
        kv_cache_dtype: KvCacheDtype::Q8_0,
        ..cuda_cfg()
    };
    let err = start_error(&golden_model_path(&g), q8_kv);
    assert!(
        err.contains("--device cuda does not run --kv-cache-dtype q8_0"),
        "{err}"
    );
    let moe = golden("qwen2moe-tiny-f32");
    let err = start_error(&golden_model_path(&moe), cuda_cfg());
    assert!(err.contains("mixture-of-experts"), "{err}");
}

#[test]
fn a_kv_cache_that_does_not_fit_is_an_error_at_start() {
    if !gpu() {
        return;
    }
    let g = golden("internlm2-tiny-f32");
    let tiny_share = EngineConfig {
        gpu_memory_utilization: 1e-6,
        ..cuda_cfg()
    };
    let err = start_error(&golden_model_path(&g), tiny_share);
    assert!(
        err.contains("not enough GPU memory for the KV cache"),
        "{err}"
    );
}
