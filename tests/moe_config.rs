//! Mixture-of-experts hyperparameters and expert tensors: what `ModelConfig::from_gguf`
//! reads for each architecture (llama.cpp's defaults and fallbacks), the clear errors for
//! inconsistent files, and the slicing of 3-D expert tensors into one matrix per expert.

#[allow(dead_code)]
#[path = "gguf_corrupt/writer.rs"]
mod writer;

use tessera::model::config::{Arch, ConfigError, ModelConfig, MoeConfig};
use tessera::model::gguf::{GgufFile, GgufValue};
use tessera::model::weights::{WeightError, WeightLoader};
use writer::{parse, Builder};

const HIDDEN: u64 = 64;

/// A header-only model file of `arch` with the common keys plus `extra`.
fn file(arch: &str, extra: &[(&str, GgufValue)]) -> GgufFile {
    let k = |s: &str| format!("{arch}.{s}");
    let mut b = Builder::new()
        .kv("general.architecture", GgufValue::String(arch.into()))
        .kv(&k("embedding_length"), GgufValue::U32(HIDDEN as u32))
        .kv(&k("block_count"), GgufValue::U32(2))
        .kv(&k("attention.head_count"), GgufValue::U32(2))
        .kv(&k("feed_forward_length"), GgufValue::U32(256))
        .kv(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-5))
        .kv(&k("context_length"), GgufValue::U32(2048));
    for (key, value) in extra {
        b = b.kv(&k(key), value.clone());
    }
    parse(b.tensor("token_embd.weight", &[HIDDEN, 10], 0).build()).expect("valid GGUF")
}

fn moe(arch: &str, extra: &[(&str, GgufValue)]) -> Result<Option<MoeConfig>, ConfigError> {
    ModelConfig::from_gguf(&file(arch, extra)).map(|c| c.moe)
}

fn experts(n: u32, used: u32) -> Vec<(&'static str, GgufValue)> {
    vec![
        ("expert_count", GgufValue::U32(n)),
        ("expert_used_count", GgufValue::U32(used)),
    ]
}

#[test]
fn llama_is_dense_without_experts_and_mixtral_with_them() {
    assert_eq!(moe("llama", &[]).unwrap(), None);
    assert_eq!(moe("llama", &experts(0, 0)).unwrap(), None);
    let m = moe("llama", &experts(8, 2)).unwrap().expect("MoE");
    let want = MoeConfig {
        n_expert: 8,
        n_expert_used: 2,
        expert_ffn: 256,
        shared_ffn: None,
        norm_topk_prob: true,
    };
    assert_eq!(m, want);
}

#[test]
fn qwen2moe_widths_fall_back_like_llama_cpp_and_norm_follows_the_file() {
    let cfg = ModelConfig::from_gguf(&file("qwen2moe", &experts(60, 4))).unwrap();
    assert_eq!(cfg.arch, Arch::Qwen2Moe);
    let m = cfg.moe.expect("MoE");
    assert_eq!((m.expert_ffn, m.shared_ffn), (256 / 4, Some(256)));
    assert!(
        !m.norm_topk_prob,
        "Qwen2-MoE does not renormalize by default"
    );
    let mut extra = experts(60, 4);
    extra.push(("expert_feed_forward_length", GgufValue::U32(96)));
    extra.push(("expert_shared_feed_forward_length", GgufValue::U32(512)));
    extra.push(("expert_weights_norm", GgufValue::Bool(true)));
    let m = moe("qwen2moe", &extra).unwrap().expect("MoE");
    assert_eq!(
        (m.expert_ffn, m.shared_ffn, m.norm_topk_prob),
        (96, Some(512), true)
    );
}

#[test]
fn inconsistent_expert_counts_are_refused_with_the_key() {
    let err = moe("qwen2moe", &[]).unwrap_err();
    assert!(err.to_string().contains("qwen2moe.expert_count"), "{err}");
    let err = moe("llama", &experts(8, 9)).unwrap_err();
    assert!(
        matches!(&err, ConfigError::OutOfRange { key, value: 9, max: 8, .. } if key == "llama.expert_used_count"),
        "{err}"
    );
    let err = moe("llama", &experts(8, 0)).unwrap_err();
    assert!(err.to_string().contains("expert_used_count"), "{err}");
    let err = moe("llama", &experts(2000, 2)).unwrap_err();
    assert!(err.to_string().contains("1..=1024"), "{err}");
    let mut missing_used = experts(8, 2);
    missing_used.pop();
    let err = moe("llama", &missing_used).unwrap_err();
    assert!(err.to_string().contains("expert_used_count"), "{err}");
}

#[test]
fn expert_tensors_are_sliced_per_expert_and_shapes_checked() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mixtral-tiny-moe-q8_0.gguf"
    );
    let file = GgufFile::open(std::path::Path::new(path)).expect("fixture");
    let w = WeightLoader::new(&file);
    let (h, ffn) = (128, 128);
    let name = "blk.0.ffn_gate_exps.weight";
    let all = w.experts(name, 8, ffn, h).expect("8 experts");
    assert_eq!(all.len(), 8);
    assert!(all.iter().all(|m| m.rows() == ffn && m.cols() == h));
    // Expert 3 is the 4th slab of the tensor: its first row is bytes [3 * slab ..].
    let info = file.tensor(name).unwrap();
    let bytes = file.tensor_data(info);
    let slab = bytes.len() / 8;
    let row_bytes = slab / ffn;
    let row0 = tessera::ops::quant::QMatrix::from_ggml(
        info.dtype,
        1,
        h,
        &bytes[3 * slab..3 * slab + row_bytes],
    )
    .unwrap();
    let (mut a, mut b) = (vec![0.0; h], vec![0.0; h]);
    all[3].dequantize_row(0, &mut a);
    row0.dequantize_row(0, &mut b);
    assert_eq!(a, b);
    assert_ne!(a, {
        all[2].dequantize_row(0, &mut b);
        b.clone()
    });
    for (n, rows, cols) in [(7, ffn, h), (8, h, ffn / 2)] {
        let err = w.experts(name, n, rows, cols).unwrap_err();
        assert!(matches!(err, WeightError::Shape { .. }), "{err}");
    }
}
