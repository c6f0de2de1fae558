//! Reading a LoRA adapter as Hugging Face PEFT saves it: a folder with
//! `adapter_config.json` and `adapter_model.safetensors` (F32 / F16 / BF16), tensors
//! `base_model.model.model.layers.N.<self_attn|mlp>.<module>.lora_A.weight` (`[rank, in]`)
//! and `….lora_B.weight` (`[out, rank]`), `scale = lora_alpha / r`
//! (`use_rslora`: `lora_alpha / sqrt(r)`).
//!
//! The result equals what llama.cpp's convert_lora_to_gguf.py would make of the folder:
//! for a llama-layout base (`Arch::Llama`) the rows of q_proj's and k_proj's lora_B are
//! permuted from Hugging Face's half-split RoPE order into adjacent pairs, as the
//! converter (and `model::hf` for base weights) does; lora_A is untouched.
//!
//! Refused with a message naming the setting: another `peft_type`, `fan_in_fan_out`, DoRA
//! (`use_dora`), per-module ranks or alphas (`rank_pattern`, `alpha_pattern`), trained
//! biases, `modules_to_save`, and any module tessera cannot adapt (embeddings, the LM
//! head, InternLM2's fused `wqkv`, …). Each pair then gets `load::check_pair`'s checks.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::load::check_pair;
use super::{LoraAdapter, LoraError, LoraPair, LoraTarget};
use crate::model::config::{Arch, ModelConfig};
use crate::model::hf::rope_pairs_adjacent;
use crate::model::safetensors::{SafetensorsFile, TensorInfo};
use crate::ops::quant::QMatrix;

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The settings of `adapter_config.json` that tessera uses.
struct PeftConfig {
    rank: usize,
    alpha: f32,
    scale: f32,
}

/// Loads the PEFT folder `dir` for a base model of `cfg`, refusing ranks above `max_rank`.
pub fn load_peft(dir: &Path, cfg: &ModelConfig, max_rank: usize) -> Result<LoraAdapter, LoraError> {
    let invalid = |message: String| LoraError::Invalid {
        path: dir.to_path_buf(),
        message,
    };
    let config = read_config(dir).map_err(invalid)?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(invalid(format!(
            "is a folder without {WEIGHTS_FILE} (a PEFT adapter folder holds {CONFIG_FILE} \
             and {WEIGHTS_FILE}; pickled adapter_model.bin files are not read)"
        )));
    }
    let file = SafetensorsFile::open(&weights).map_err(|e| invalid(e.to_string()))?;
    let mut layers: Vec<[Option<LoraPair>; 7]> =
        (0..cfg.n_layers).map(|_| Default::default()).collect();
    for ((layer, target), [a, b]) in pair_tensors(&file).map_err(invalid)? {
        let (a_shape, b_shape) = (shape(a), shape(b));
        let rank = check_pair(cfg, (layer, target), a_shape, b_shape, max_rank).map_err(invalid)?;
        if rank != config.rank {
            return Err(invalid(format!(
                "`{}` has rank {rank}, but {CONFIG_FILE} says r = {}",
                a.name, config.rank
            )));
        }
        let matrix = |t: &TensorInfo, [rows, cols]: [usize; 2], heads: Option<usize>| {
            let dtype = t.dtype.ggml().ok_or_else(|| {
                invalid(format!(
                    "`{}` is {}; F32, F16 or BF16 are read",
                    t.name,
                    t.dtype.name()
                ))
            })?;
            let bytes = file.data(t);
            let bytes = match heads {
                Some(heads) => rope_pairs_adjacent(bytes, heads, cfg.head_dim),
                None => bytes.to_vec(),
            };
            QMatrix::from_ggml(dtype, rows, cols, &bytes).map_err(|source| LoraError::Quant {
                path: weights.clone(),
                name: t.name.clone(),
                source,
            })
        };
        layers[layer][target as usize] = Some(LoraPair {
            a: matrix(a, a_shape, None)?,
            b: matrix(b, b_shape, permuted_heads(cfg, target))?,
            scale: config.scale,
        });
    }
    let adapter = LoraAdapter {
        alpha: config.alpha,
        layers,
    };
    if adapter.num_pairs() == 0 {
        return Err(invalid(format!(
            "{WEIGHTS_FILE} has no lora_A / lora_B tensors"
        )));
    }
    Ok(adapter)
}

/// Heads of `target`'s output rows when they are permuted to adjacent RoPE pairs (llama
/// Q and K), else `None`.
fn permuted_heads(cfg: &ModelConfig, target: LoraTarget) -> Option<usize> {
    match (cfg.arch, target) {
        (Arch::Llama, LoraTarget::Q) => Some(cfg.n_heads),
        (Arch::Llama, LoraTarget::K) => Some(cfg.n_kv_heads),
        _ => None,
    }
}

/// `adapter_config.json`, checked for what tessera does not support.
fn read_config(dir: &Path) -> Result<PeftConfig, String> {
    let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).map_err(|e| {
        format!("is a folder, but its {CONFIG_FILE} cannot be read ({e}); a PEFT adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    })?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("{CONFIG_FILE} is not valid JSON: {e}"))?;
    let field = |name: &str| json.get(name).filter(|v| !v.is_null());
    let peft_type = field("peft_type").and_then(Value::as_str).unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(format!(
            "{CONFIG_FILE}: `peft_type` must be \"LORA\". Given: {peft_type:?}"
        ));
    }
    for (flag, what) in [
        ("fan_in_fan_out", "transposed (Conv1D) weights"),
        ("use_dora", "DoRA"),
    ] {
        if field(flag).and_then(Value::as_bool).unwrap_or(false) {
            return Err(format!(
                "{CONFIG_FILE}: `{flag}: true` ({what}) is not supported"
            ));
        }
    }
    for pattern in ["rank_pattern", "alpha_pattern"] {
        if field(pattern)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(format!(
                "{CONFIG_FILE}: `{pattern}` (per-module ranks or alphas) is not supported"
            ));
        }
    }
    if field("modules_to_save")
        .and_then(Value::as_array)
        .is_some_and(|m| !m.is_empty())
    {
        return Err(format!(
            "{CONFIG_FILE}: `modules_to_save` (fully trained modules) is not supported"
        ));
    }
    let bias = field("bias").and_then(Value::as_str).unwrap_or("none");
    if bias != "none" {
        return Err(format!(
            "{CONFIG_FILE}: `bias: {bias:?}` (trained biases) is not supported; only \"none\""
        ));
    }
    check_target_modules(field("target_modules"))?;
    let rank = field("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| format!("{CONFIG_FILE}: `r` must be an integer >= 1"))?
        as usize;
    // PEFT's default lora_alpha is 8.
    let alpha = match field("lora_alpha") {
        None => 8.0,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("{CONFIG_FILE}: `lora_alpha` must be a number. Given: {v}"))?
            as f32,
    };
    let rslora = field("use_rslora")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(PeftConfig {
        rank,
        alpha,
        scale: peft_scale(alpha, rank, rslora),
    })
}

/// PEFT's scaling: `alpha / r`, or `alpha / sqrt(r)` with rank-stabilized LoRA.
fn peft_scale(alpha: f32, rank: usize, rslora: bool) -> f32 {
    if rslora {
        alpha / (rank as f32).sqrt()
    } else {
        alpha / rank as f32
    }
}

/// Hugging Face module name → the projection it is.
fn target_of(module: &str) -> Option<LoraTarget> {
    Some(match module {
        "q_proj" => LoraTarget::Q,
        "k_proj" => LoraTarget::K,
        "v_proj" => LoraTarget::V,
        "o_proj" => LoraTarget::Out,
        "gate_proj" => LoraTarget::Gate,
        "up_proj" => LoraTarget::Up,
        "down_proj" => LoraTarget::Down,
        _ => return None,
    })
}

const SUPPORTED: &str = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj";

/// `target_modules`: a list of module names tessera can adapt, or "all-linear".
fn check_target_modules(value: Option<&Value>) -> Result<(), String> {
    let modules = match value {
        None => return Ok(()),
        Some(Value::String(s)) if s == "all-linear" => return Ok(()),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "{CONFIG_FILE}: `target_modules` must be a list of module names (a regex is \
                 not supported). Given: {other}"
            ))
        }
    };
    for m in modules {
        let name = m.as_str().unwrap_or_default();
        if target_of(name).is_none() {
            return Err(format!(
                "{CONFIG_FILE}: target module {m} cannot be adapted by tessera (supported: \
                 {SUPPORTED})"
            ));
        }
    }
    Ok(())
}

type Pairs<'f> = BTreeMap<(usize, LoraTarget), [&'f TensorInfo; 2]>;

/// The file's `lora_A` / `lora_B` tensors, paired by the projection they adapt.
fn pair_tensors(file: &SafetensorsFile) -> Result<Pairs<'_>, String> {
    let mut halves: BTreeMap<(usize, LoraTarget), [Option<&TensorInfo>; 2]> = BTreeMap::new();
    for t in file.tensors() {
        let (key, half) = parse_name(&t.name)?;
        if t.shape.len() != 2 {
            return Err(format!(
                "tensor `{}` must be 2-D. Given: {:?}",
                t.name, t.shape
            ));
        }
        halves.entry(key).or_default()[half] = Some(t);
    }
    halves
        .into_iter()
        .map(|(key, halves)| match halves {
            [Some(a), Some(b)] => Ok((key, [a, b])),
            _ => Err(format!(
                "the LoRA pair of layer {} {:?} is missing its {}",
                key.0,
                key.1,
                if halves[0].is_none() {
                    "lora_A"
                } else {
                    "lora_B"
                }
            )),
        })
        .collect()
}

/// `base_model.model.model.layers.N.<self_attn|mlp>.<module>.lora_<A|B>.weight` →
/// ((N, target), 0 for A / 1 for B).
fn parse_name(name: &str) -> Result<((usize, LoraTarget), usize), String> {
    let refuse = || {
        format!(
            "tensor `{name}` is not `base_model.model.model.layers.N.<self_attn|mlp>.<module>.\
             lora_<A|B>.weight` with a module tessera can adapt ({SUPPORTED})"
        )
    };
    let rest = name
        .strip_prefix("base_model.model.model.layers.")
        .ok_or_else(refuse)?;
    let parts: Vec<&str> = rest.split('.').collect();
    let [layer, block, module, half, "weight"] = parts[..] else {
        return Err(refuse());
    };
    let layer: usize = layer.parse().map_err(|_| refuse())?;
    let target = target_of(module).ok_or_else(refuse)?;
    let in_block = if target.is_ffn() { "mlp" } else { "self_attn" };
    let half = match half {
        "lora_A" => 0,
        "lora_B" => 1,
        _ => return Err(refuse()),
    };
    if block != in_block {
        return Err(refuse());
    }
    Ok(((layer, target), half))
}

/// `[rows, cols]` of a 2-D tensor.
fn shape(t: &TensorInfo) -> [usize; 2] {
    [t.shape[0], t.shape[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_alpha_over_rank_or_its_root() {
        assert_eq!(peft_scale(16.0, 8, false), 2.0);
        assert_eq!(peft_scale(16.0, 16, true), 4.0);
    }

    #[test]
    fn names_map_to_projections() {
        let name = "base_model.model.model.layers.3.self_attn.k_proj.lora_B.weight";
        assert_eq!(parse_name(name), Ok(((3, LoraTarget::K), 1)));
        let name = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight";
        assert_eq!(parse_name(name), Ok(((0, LoraTarget::Down), 0)));
        for bad in [
            "base_model.model.model.embed_tokens.lora_A.weight",
            "base_model.model.lm_head.lora_A.weight",
            "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
            "base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }
}
