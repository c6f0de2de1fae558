//! `config.json` of a Hugging Face checkpoint → `ModelConfig`, with transformers' defaults
//! for the keys a file leaves out (`LlamaConfig`, `MistralConfig`, `Qwen2Config`,
//! InternLM2's remote-code `InternLM2Config`).
//!
//! What is refused (with the key and value): other model types, any `rope_scaling` but
//! the default, partial rotary, biases other than Qwen2's Q/K/V ones (InternLM2's `bias`,
//! which defaults to true, included), activations other than SiLU, quantized
//! checkpoints (`quantization_config`).
//!
//! RoPE: HF llama/mistral checkpoints keep Q/K rows in their original order, where RoPE
//! rotates half-split pairs. The loader permutes those rows at load exactly as
//! llama.cpp's converter does (`HfTensors`), so a `ModelConfig` with `Arch::Llama` always
//! means adjacent-pair RoPE (`RopeStyle::Interleaved`), whatever the source format, and
//! an HF llama computes the same numbers as its converted GGUF. Qwen2 uses half-split
//! pairs (`RopeStyle::Neox`) in both formats.
//!
//! Sliding-window attention is not implemented; a model that uses it (Mistral v0.1,
//! Qwen2 with `use_sliding_window`) gets its context capped at the window, where full
//! attention computes the same thing.

use serde::Deserialize;
use serde_json::Value;

use super::error::HfError;
use crate::model::config::{check_range, Arch, ModelConfig};
use crate::ops::rope::RopeStyle;

/// What `config.json` says beyond `ModelConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    pub model: ModelConfig,
    /// `tie_word_embeddings`: the LM head is the embedding matrix.
    pub tied_embeddings: bool,
    /// Q/K/V projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// `bos_token_id` / `eos_token_id` from config.json (fallbacks for the tokenizer).
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `unk_token_id` / `pad_token_id` (InternLM2's vocabulary takes them from here).
    pub unk_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    hidden_size: u64,
    num_hidden_layers: u64,
    num_attention_heads: u64,
    num_key_value_heads: Option<u64>,
    head_dim: Option<u64>,
    intermediate_size: u64,
    vocab_size: u64,
    rope_theta: Option<f64>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<u64>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    use_sliding_window: Option<bool>,
    partial_rotary_factor: Option<f64>,
    /// InternLM2: biases on every attention and MLP projection.
    bias: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
    unk_token_id: Option<Value>,
    pad_token_id: Option<Value>,
}

/// Per-family defaults (transformers' config classes).
struct Defaults {
    max_positions: u64,
    window: WindowRule,
    qkv_bias: bool,
}

/// How a family treats `sliding_window`.
#[derive(Clone, Copy)]
enum WindowRule {
    /// `LlamaConfig` has no sliding window; the key is ignored.
    Ignored,
    /// `MistralConfig`: always used when set; the default when absent.
    Always { default: Option<u64> },
    /// `Qwen2Config`: used only with `use_sliding_window: true`.
    IfFlag,
}

impl HfConfig {
    /// Parses the text of a `config.json`.
    pub fn from_json(json: &Value) -> Result<Self, HfError> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        let (arch, defaults) = match model_type {
            "llama" => (Arch::Llama, Defaults::new(2048, WindowRule::Ignored, false)),
            "mistral" => {
                let window = WindowRule::Always {
                    default: Some(4096),
                };
                (Arch::Llama, Defaults::new(32_768, window, false))
            }
            "qwen2" => (Arch::Qwen2, Defaults::new(32_768, WindowRule::IfFlag, true)),
            "internlm2" => (
                Arch::InternLm2,
                Defaults::new(2048, WindowRule::Ignored, false),
            ),
            "" => return Err(bad_value("model_type", "missing or not a string")),
            other => return Err(HfError::UnsupportedModelType(other.to_string())),
        };
        refuse_unsupported(json)?;
        let raw: RawConfig = serde_path_to_error::deserialize(json).map_err(|e| HfError::Json {
            path: "config.json".into(),
            detail: e.to_string(),
        })?;
        check_features(&raw, arch)?;
        let (rope_base, rope_scaling) = rope_parameters(json, &raw)?;
        check_rope_scaling(rope_scaling)?;
        let model = model_config(
            &raw,
            arch,
            rope_base,
            sliding_window(json, &raw, &defaults)?,
            &defaults,
        )?;
        Ok(Self {
            model,
            tied_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: defaults.qkv_bias,
            bos_token_id: raw.bos_token_id,
            eos_token_id: first_id(raw.eos_token_id.as_ref()),
            unk_token_id: first_id(raw.unk_token_id.as_ref()),
            pad_token_id: first_id(raw.pad_token_id.as_ref()),
        })
    }
}

impl Defaults {
    fn new(max_positions: u64, window: WindowRule, qkv_bias: bool) -> Self {
        Self {
            max_positions,
            window,
            qkv_bias,
        }
    }
}

fn bad_value(key: &'static str, detail: &'static str) -> HfError {
    HfError::Unsupported {
        key,
        value: "?".into(),
        detail,
    }
}

fn unsupported(key: &'static str, value: &Value, detail: &'static str) -> HfError {
    HfError::Unsupported {
        key,
        value: value.to_string(),
        detail,
    }
}

/// Keys whose mere presence means a checkpoint tessera cannot run.
fn refuse_unsupported(json: &Value) -> Result<(), HfError> {
    if let Some(q) = json.get("quantization_config").filter(|v| !v.is_null()) {
        let method = q.get("quant_method").unwrap_or(q);
        return Err(unsupported(
            "quantization_config",
            method,
            "quantized safetensors checkpoints cannot be loaded; use a GGUF file",
        ));
    }
    for key in ["num_local_experts", "num_experts"] {
        if let Some(n) = json.get(key).filter(|v| v.as_u64().is_some_and(|n| n > 0)) {
            let key = if key == "num_experts" {
                "num_experts"
            } else {
                "num_local_experts"
            };
            return Err(unsupported(
                key,
                n,
                "mixture-of-experts checkpoints load from GGUF only",
            ));
        }
    }
    Ok(())
}

fn check_features(raw: &RawConfig, arch: Arch) -> Result<(), HfError> {
    if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(unsupported(
            "hidden_act",
            &act.into(),
            "only `silu` (SwiGLU) is implemented",
        ));
    }
    if raw.attention_bias == Some(true) && arch == Arch::Llama {
        return Err(unsupported(
            "attention_bias",
            &true.into(),
            "attention biases (including o_proj's) are not implemented for llama",
        ));
    }
    if arch == Arch::InternLm2 && raw.bias != Some(false) {
        let value = raw.bias.map_or(Value::Null, Value::from);
        return Err(unsupported(
            "bias",
            &value,
            "InternLM2 projection biases are not implemented (InternLM2Config defaults to true; set false)",
        ));
    }
    if raw.mlp_bias == Some(true) {
        return Err(unsupported(
            "mlp_bias",
            &true.into(),
            "MLP biases are not implemented",
        ));
    }
    if let Some(factor) = raw.partial_rotary_factor.filter(|&f| f != 1.0) {
        return Err(unsupported(
            "partial_rotary_factor",
            &factor.into(),
            "only full-width RoPE is implemented",
        ));
    }
    Ok(())
}

/// `rope_theta` and the scaling object: top-level keys, or transformers 5's
/// `rope_parameters` object (which wins when present).
fn rope_parameters<'a>(
    json: &'a Value,
    raw: &RawConfig,
) -> Result<(f32, Option<&'a Value>), HfError> {
    let params = json.get("rope_parameters").filter(|v| !v.is_null());
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
        .or(raw.rope_theta)
        .unwrap_or(10_000.0);
    if !(theta.is_finite() && theta > 0.0 && theta <= f32::MAX as f64) {
        return Err(unsupported(
            "rope_theta",
            &theta.into(),
            "must be a positive number",
        ));
    }
    let scaling = params.or_else(|| json.get("rope_scaling").filter(|v| !v.is_null()));
    Ok((theta as f32, scaling))
}

/// Only the default (unscaled) RoPE is implemented.
fn check_rope_scaling(scaling: Option<&Value>) -> Result<(), HfError> {
    let Some(scaling) = scaling else {
        return Ok(());
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if kind != "default" {
        return Err(unsupported(
            "rope_scaling",
            scaling,
            "only the default RoPE is implemented (no linear, dynamic, yarn, llama3 or longrope scaling)",
        ));
    }
    Ok(())
}

/// The attention window when the model uses one (see `WindowRule`; null = none).
fn sliding_window(
    json: &Value,
    raw: &RawConfig,
    defaults: &Defaults,
) -> Result<Option<u64>, HfError> {
    let (used, default) = match defaults.window {
        WindowRule::Ignored => (false, None),
        WindowRule::Always { default } => (true, default),
        WindowRule::IfFlag => (raw.use_sliding_window == Some(true), None),
    };
    let window = match json.get("sliding_window") {
        None => default,
        Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            unsupported("sliding_window", v, "must be a positive integer or null")
        })?),
    };
    Ok(window.filter(|&w| used && w > 0))
}

fn model_config(
    raw: &RawConfig,
    arch: Arch,
    rope_base: f32,
    window: Option<u64>,
    defaults: &Defaults,
) -> Result<ModelConfig, HfError> {
    let hidden = check_range("hidden_size", raw.hidden_size, 1, 1 << 16)?;
    let n_heads = check_range("num_attention_heads", raw.num_attention_heads, 1, 1024)?;
    let n_kv = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
    let n_kv_heads = check_range("num_key_value_heads", n_kv, 1, 1024)?;
    let head_dim = match raw.head_dim {
        Some(d) => check_range("head_dim", d, 2, 1024)?,
        None if hidden % n_heads == 0 => hidden / n_heads,
        None => {
            let detail = "hidden_size is not a multiple of num_attention_heads and no head_dim";
            return Err(unsupported("hidden_size", &raw.hidden_size.into(), detail));
        }
    };
    let trained = raw
        .max_position_embeddings
        .unwrap_or(defaults.max_positions);
    let context = window.map_or(trained, |w| w.min(trained));
    let rms_eps = raw.rms_norm_eps.unwrap_or(1e-6);
    let cfg = ModelConfig {
        arch,
        hidden,
        n_layers: check_range("num_hidden_layers", raw.num_hidden_layers, 1, 1024)?,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn: check_range("intermediate_size", raw.intermediate_size, 1, 1 << 20)?,
        vocab: check_range("vocab_size", raw.vocab_size, 1, 1 << 24)?,
        rope_base,
        rope_dims: head_dim,
        rope_style: match arch {
            Arch::Llama | Arch::InternLm2 => RopeStyle::Interleaved,
            Arch::Qwen2 | Arch::Qwen2Moe => RopeStyle::Neox,
        },
        rms_eps: rms_eps as f32,
        context_length: check_range("max_position_embeddings", context, 1, 1 << 24)?,
        moe: None,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// An id, or the first of a list of ids (`eos_token_id: [1, 2]`).
pub fn first_id(value: Option<&Value>) -> Option<u32> {
    all_ids(value).into_iter().next()
}

/// Every id of an `*_token_id` value: a number or a list of numbers; others are ignored.
pub fn all_ids(value: Option<&Value>) -> Vec<u32> {
    let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(id).collect(),
        Some(v) => id(v).into_iter().collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qwen2() -> Value {
        json!({
            "model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
            "vocab_size": 2003, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 4096, "tie_word_embeddings": true,
            "sliding_window": 4096, "use_sliding_window": false, "eos_token_id": [7, 8]
        })
    }

    #[test]
    fn qwen2_config_maps_to_model_config() {
        let cfg = HfConfig::from_json(&qwen2()).expect("valid");
        assert_eq!(cfg.model.arch, Arch::Qwen2);
        assert_eq!(
            (cfg.model.hidden, cfg.model.n_heads, cfg.model.n_kv_heads),
            (64, 4, 2)
        );
        assert_eq!((cfg.model.head_dim, cfg.model.rope_dims), (16, 16));
        assert_eq!(cfg.model.rope_style, RopeStyle::Neox);
        assert_eq!(cfg.model.context_length, 4096);
        assert_eq!(cfg.model.rope_base, 1e6);
        assert!(cfg.tied_embeddings && cfg.qkv_bias);
        assert_eq!(cfg.eos_token_id, Some(7));
    }

    #[test]
    fn llama_defaults_and_mistral_window() {
        let mut json = qwen2();
        json["model_type"] = "llama".into();
        for key in [
            "rope_theta",
            "max_position_embeddings",
            "tie_word_embeddings",
            "num_key_value_heads",
        ] {
            json.as_object_mut().unwrap().remove(key);
        }
        let cfg = HfConfig::from_json(&json).expect("valid");
        assert_eq!(cfg.model.rope_style, RopeStyle::Interleaved);
        assert_eq!(
            (cfg.model.rope_base, cfg.model.context_length),
            (10_000.0, 2048)
        );
        assert_eq!(cfg.model.n_kv_heads, 4);
        assert!(!cfg.tied_embeddings && !cfg.qkv_bias);

        json["model_type"] = "mistral".into();
        json.as_object_mut().unwrap().remove("sliding_window");
        json.as_object_mut().unwrap().remove("use_sliding_window");
        json["max_position_embeddings"] = 32768.into();
        let cfg = HfConfig::from_json(&json).expect("valid");
        assert_eq!(
            cfg.model.context_length, 4096,
            "capped at the default window"
        );
        json["sliding_window"] = Value::Null;
        let cfg = HfConfig::from_json(&json).expect("valid");
        assert_eq!(cfg.model.context_length, 32768);
    }

    #[test]
    fn internlm2_config_maps_and_its_bias_default_is_refused() {
        let mut json = qwen2();
        json["model_type"] = "internlm2".into();
        json["bias"] = false.into();
        json["pad_token_id"] = 2.into();
        let cfg = HfConfig::from_json(&json).expect("valid");
        assert_eq!(cfg.model.arch, Arch::InternLm2);
        assert_eq!(cfg.model.rope_style, RopeStyle::Interleaved);
        assert!(!cfg.qkv_bias);
        assert_eq!((cfg.pad_token_id, cfg.unk_token_id), (Some(2), None));
        json.as_object_mut().unwrap().remove("bias");
        let err = HfConfig::from_json(&json).expect_err("bias defaults to true");
        assert!(err.to_string().contains("`bias`"), "{err}");
        json["bias"] = false.into();
        json["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        let err = HfConfig::from_json(&json).expect_err("dynamic rope");
        assert!(err.to_string().contains("dynamic"), "{err}");
    }

    #[test]
    fn refusals_name_the_key_and_value() {
        let cases: [(&str, Value, &str); 8] = [
            ("model_type", "gpt2".into(), "`gpt2`"),
            (
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0}),
                "rope_scaling",
            ),
            ("hidden_act", "gelu".into(), "hidden_act"),
            (
                "quantization_config",
                json!({"quant_method": "gptq"}),
                "gptq",
            ),
            ("partial_rotary_factor", 0.5.into(), "partial_rotary_factor"),
            ("num_key_value_heads", 3.into(), "multiple"),
            ("hidden_size", Value::Null, "hidden_size"),
            ("num_local_experts", 8.into(), "num_local_experts"),
        ];
        for (key, value, needle) in cases {
            let mut json = qwen2();
            json[key] = value;
            let err = HfConfig::from_json(&json).expect_err(key).to_string();
            assert!(err.contains(needle), "{key}: {err}");
        }
        let mut json = qwen2();
        json.as_object_mut().unwrap().remove("model_type");
        let err = HfConfig::from_json(&json)
            .expect_err("no model_type")
            .to_string();
        assert!(err.contains("model_type"), "{err}");
        let mut json = qwen2();
        json["model_type"] = "llama".into();
        json["attention_bias"] = true.into();
        let err = HfConfig::from_json(&json).expect_err("bias").to_string();
        assert!(err.contains("attention_bias"), "{err}");
    }
}
