//! `--quantization q8_0|q4_0`: float weights quantized at load are the blocks
//! llama-quantize writes (tests/fixtures/internlm2-tiny-q8_0.gguf and -q4_0.gguf are its
//! Q8_0 and `--pure` Q4_0 of internlm2-tiny-f16.gguf; scripts/make_fixtures.py), a Hugging
//! Face folder quantizes like its GGUF conversion, and quantized models are refused by
//! name. The greedy goldens of the quantized-at-load models are checked in tests/golden.rs
//! (`f16_quantized_at_load_matches_llama_quantize`).

mod common;

use std::path::Path;

use common::*;
use tessera::config::EngineConfig;
use tessera::engine::handle;
use tessera::model::gguf::{GgmlDType, GgufFile};
use tessera::model::quantize::Quantization;
use tessera::model::{load_with, LoadOptions, LoadedModel};
use tessera::ops::quant::{QMatrix, QuantError};

fn q8_0() -> LoadOptions {
    LoadOptions {
        quantization: Some(Quantization::Q8_0),
        ..LoadOptions::default()
    }
}

fn load_q8_0(path: &Path) -> LoadedModel {
    load_with(path, &q8_0(), |_, _| {}).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every tensor llama-quantize made `dtype` in `tests/fixtures/<stem>.gguf` is, byte for
/// byte, `convert` of the F16 fixture's tensor; every tensor it left alone is a norm (1-D,
/// F32 in both files).
fn blocks_equal_llama_quantizes(
    stem: &str,
    dtype: GgmlDType,
    convert: fn(&QMatrix) -> Result<QMatrix, QuantError>,
) {
    let f16 = GgufFile::open(&repo_path("tests/fixtures/internlm2-tiny-f16.gguf")).expect("f16");
    let theirs = GgufFile::open(&repo_path(&format!("tests/fixtures/{stem}.gguf"))).expect(stem);
    let mut converted = 0;
    for info in theirs.tensors() {
        let src = f16.tensor(&info.name).expect("same tensors in both files");
        if info.dtype != dtype {
            assert_eq!(info.dims.len(), 1, "{} kept as {:?}", info.name, info.dtype);
            continue;
        }
        assert_eq!(src.dtype, GgmlDType::F16, "{}", info.name);
        let (cols, rows) = (src.dims[0], src.dims[1..].iter().product());
        let f16_matrix = QMatrix::from_ggml(GgmlDType::F16, rows, cols, f16.tensor_data(src))
            .expect("f16 matrix");
        let ours = convert(&f16_matrix).expect("quantizes");
        assert_eq!(ours.dtype(), dtype, "{}", info.name);
        assert!(
            ours.ggml_bytes() == theirs.tensor_data(info),
            "{}: our {dtype:?} blocks differ from llama-quantize's",
            info.name
        );
        converted += 1;
    }
    // token_embd, output and 7 matrices per layer over 2 layers.
    assert_eq!(converted, 16, "{stem}");
}

#[test]
fn q8_0_blocks_equal_llama_quantizes() {
    blocks_equal_llama_quantizes("internlm2-tiny-q8_0", GgmlDType::Q8_0, QMatrix::to_q8_0);
}

#[test]
fn q4_0_blocks_equal_llama_quantize_pures() {
    blocks_equal_llama_quantizes("internlm2-tiny-q4_0", GgmlDType::Q4_0, QMatrix::to_q4_0);
}

/// The BF16 Hugging Face folder quantized at load equals its BF16 GGUF (converted by
/// llama.cpp) quantized at load: same greedy tokens and logits.
#[test]
fn hf_folder_quantizes_like_its_gguf() {
    let dir = repo_path("tests/fixtures/hf-llama-tiny-bf16");
    let hf = load_q8_0(&dir);
    let gguf = load_q8_0(&dir.join("hf-llama-tiny-bf16.gguf"));
    assert_eq!(
        (hf.assets.dtype.as_str(), gguf.assets.dtype.as_str()),
        ("Q8_0", "Q8_0")
    );
    let prompt = gguf
        .assets
        .tokenizer
        .encode("The quick brown fox jumps over the lazy dog.", true, false)
        .expect("tokenizes");
    let cfg = EngineConfig {
        kv_cache_memory: 64 << 20,
        ..EngineConfig::default()
    };
    let outputs: Vec<Vec<u32>> = [hf, gguf]
        .into_iter()
        .map(|model| {
            let engine = handle::start(model, &cfg).expect("engine starts");
            let ids = run_ids(&engine, &prompt, greedy(16));
            engine.shutdown();
            ids
        })
        .collect();
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn quantized_models_are_refused_by_name() {
    for stem in ["qwen2-tiny-tied-q4_k_m", "internlm2-tiny-q8_0"] {
        let path = repo_path(&format!("tests/fixtures/{stem}.gguf"));
        let err = load_with(&path, &q8_0(), |_, _| {})
            .err()
            .unwrap_or_else(|| panic!("{stem}: a quantized model was quantized again"))
            .to_string();
        assert!(err.contains("--quantization q8_0"), "{stem}: {err}");
        assert!(err.contains("already quantized"), "{stem}: {err}");
        assert!(err.contains("tensor `"), "{stem}: {err}");
    }
}
