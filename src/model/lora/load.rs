//! Reading a LoRA adapter as llama.cpp writes it (convert_lora_to_gguf.py) and checking
//! it against the base model, with llama.cpp's rules (src/llama-adapter.cpp):
//! `general.type = adapter`, the base model's `general.architecture`, `adapter.type =
//! lora`, optional `adapter.lora.alpha`; tensors `<base tensor>.lora_a` (`[rank, in]`) and
//! `<base tensor>.lora_b` (`[out, rank]`) in pairs, `*_norm.weight` tensors ignored, any
//! other name refused. Beyond llama.cpp: only the dense layers' seven projections may be
//! adapted (tessera does not adapt embeddings, the LM head or experts), and every rank
//! must be at most `--max-lora-rank`. `registry` also takes PEFT folders (`peft`), with
//! the same checks of each pair (`check_pair`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{LoraAdapter, LoraPair, LoraTarget};
use crate::model::config::ModelConfig;
use crate::model::gguf::{GgufError, GgufFile, GgufTensorInfo};
use crate::ops::quant::{QMatrix, QuantError};

/// Why an adapter was refused, loaded or unloaded.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("LoRA adapter `{path}`: no such file or folder")]
    NotFound { path: PathBuf },
    #[error("LoRA adapter `{path}`: {source}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    #[error("LoRA adapter `{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("LoRA adapter `{path}`: tensor `{name}`: {source}")]
    Quant {
        path: PathBuf,
        name: String,
        #[source]
        source: QuantError,
    },
    /// The name cannot be served: empty, already served (by an adapter or the base model).
    #[error("LoRA adapter name `{name}`: {message}")]
    Name { name: String, message: String },
    /// `--max-loras` adapters are loaded already.
    #[error(
        "cannot load LoRA adapter `{name}`: {max_loras} adapter(s) are loaded, the most \
         --max-loras allows; unload one first"
    )]
    Full { name: String, max_loras: usize },
    #[error("the LoRA adapter `{name}` cannot be found (not loaded)")]
    NotServed { name: String },
}

/// Loads the GGUF adapter at `path` for a base model of `cfg`, refusing ranks above
/// `max_rank`; `user_scale` multiplies every update (llama.cpp's `--lora-scaled`).
pub fn load_gguf(
    path: &Path,
    cfg: &ModelConfig,
    max_rank: usize,
    user_scale: f32,
) -> Result<LoraAdapter, LoraError> {
    let invalid = |message: String| LoraError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let gguf_err = |source| LoraError::Gguf {
        path: path.to_path_buf(),
        source,
    };
    let file = GgufFile::open(path).map_err(gguf_err)?;
    check_metadata(&file, cfg).map_err(|e| match e {
        MetaError::Gguf(source) => gguf_err(source),
        MetaError::Invalid(message) => invalid(message),
    })?;
    let alpha = file
        .opt_f32("adapter.lora.alpha")
        .map_err(gguf_err)?
        .unwrap_or(0.0);
    let mut layers: Vec<[Option<LoraPair>; 7]> =
        (0..cfg.n_layers).map(|_| Default::default()).collect();
    for ((layer, target), (a, b)) in pair_tensors(&file).map_err(invalid)? {
        let (a_shape, b_shape) = (shape(a), shape(b));
        let rank = check_pair(cfg, (layer, target), a_shape, b_shape, max_rank).map_err(invalid)?;
        let matrix = |t: &GgufTensorInfo, [rows, cols]: [usize; 2]| {
            QMatrix::from_ggml(t.dtype, rows, cols, file.tensor_data(t)).map_err(|source| {
                LoraError::Quant {
                    path: path.to_path_buf(),
                    name: t.name.clone(),
                    source,
                }
            })
        };
        // llama.cpp: `alpha ? adapter_scale * alpha / rank : adapter_scale`, in f32.
        let scale = if alpha != 0.0 {
            user_scale * alpha / rank as f32
        } else {
            user_scale
        };
        layers[layer][target as usize] = Some(LoraPair {
            a: matrix(a, a_shape)?,
            b: matrix(b, b_shape)?,
            scale,
        });
    }
    let adapter = LoraAdapter { alpha, layers };
    if adapter.num_pairs() == 0 {
        return Err(invalid("has no lora_a / lora_b tensors".into()));
    }
    Ok(adapter)
}

enum MetaError {
    Gguf(GgufError),
    Invalid(String),
}

impl From<GgufError> for MetaError {
    fn from(e: GgufError) -> Self {
        MetaError::Gguf(e)
    }
}

/// `general.type`, `adapter.type` and the architecture against the base model's.
fn check_metadata(file: &GgufFile, cfg: &ModelConfig) -> Result<(), MetaError> {
    let general_type = file.opt_str("general.type")?.unwrap_or("");
    if general_type != "adapter" {
        return Err(MetaError::Invalid(format!(
            "`general.type` must be \"adapter\" (a LoRA file as llama.cpp's \
             convert_lora_to_gguf.py writes it). Given: {general_type:?}"
        )));
    }
    let adapter_type = file.opt_str("adapter.type")?.unwrap_or("");
    if adapter_type != "lora" {
        return Err(MetaError::Invalid(format!(
            "`adapter.type` must be \"lora\". Given: {adapter_type:?}"
        )));
    }
    let arch = file.architecture()?;
    if arch != cfg.arch.name() {
        return Err(MetaError::Invalid(format!(
            "is for architecture `{arch}`, but the base model is `{}`",
            cfg.arch.name()
        )));
    }
    Ok(())
}

type Pairs<'f> = BTreeMap<(usize, LoraTarget), (&'f GgufTensorInfo, &'f GgufTensorInfo)>;

/// The file's `lora_a` / `lora_b` tensors, paired by the projection they adapt.
fn pair_tensors(file: &GgufFile) -> Result<Pairs<'_>, String> {
    let mut halves: BTreeMap<(usize, LoraTarget), [Option<&GgufTensorInfo>; 2]> = BTreeMap::new();
    for t in file.tensors() {
        let (base, half) = if let Some(base) = t.name.strip_suffix(".lora_a") {
            (base, 0)
        } else if let Some(base) = t.name.strip_suffix(".lora_b") {
            (base, 1)
        } else if t.name.ends_with("_norm.weight") {
            continue; // llama.cpp ignores norm vectors in adapters too
        } else {
            return Err(format!(
                "tensor `{}` is neither `<name>.lora_a` nor `<name>.lora_b`",
                t.name
            ));
        };
        let key = parse_base_name(base)?;
        if t.dims.len() != 2 {
            return Err(format!(
                "tensor `{}` must be 2-D. Given: {} dims",
                t.name,
                t.dims.len()
            ));
        }
        halves.entry(key).or_default()[half] = Some(t);
    }
    halves
        .into_iter()
        .map(|(key, halves)| match halves {
            [Some(a), Some(b)] => Ok((key, (a, b))),
            _ => Err(format!(
                "the LoRA pair for `blk.{}.{}.weight` is missing its {}",
                key.0,
                key.1.gguf_part(),
                if halves[0].is_none() {
                    "lora_a"
                } else {
                    "lora_b"
                }
            )),
        })
        .collect()
}

/// `blk.N.<part>.weight` → (N, target).
fn parse_base_name(base: &str) -> Result<(usize, LoraTarget), String> {
    let refuse = || {
        format!(
            "adapts `{base}`, which tessera cannot adapt (supported: blk.N.{{{}}}.weight)",
            LoraTarget::ALL.map(LoraTarget::gguf_part).join(",")
        )
    };
    let rest = base.strip_prefix("blk.").ok_or_else(refuse)?;
    let (layer, part) = rest.split_once('.').ok_or_else(refuse)?;
    let layer: usize = layer.parse().map_err(|_| refuse())?;
    let part = part.strip_suffix(".weight").ok_or_else(refuse)?;
    let target = LoraTarget::ALL
        .into_iter()
        .find(|t| t.gguf_part() == part)
        .ok_or_else(refuse)?;
    Ok((layer, target))
}

/// `[rows, cols]` of a 2-D GGUF tensor (its dims reversed).
fn shape(t: &GgufTensorInfo) -> [usize; 2] {
    [t.dims[1], t.dims[0]]
}

/// Checks the update of `target` in `layer` (`a: [rank, in]`, `b: [out, rank]`) against
/// the base model and `--max-lora-rank`; returns its rank.
pub(super) fn check_pair(
    cfg: &ModelConfig,
    (layer, target): (usize, LoraTarget),
    a_shape: [usize; 2],
    b_shape: [usize; 2],
    max_rank: usize,
) -> Result<usize, String> {
    if layer >= cfg.n_layers {
        return Err(format!(
            "adapts layer {layer}, but the base model has {} layers",
            cfg.n_layers
        ));
    }
    if target.is_ffn() && cfg.moe.is_some() {
        return Err(format!(
            "adapts `{}` of a mixture-of-experts model; only its attention can be adapted",
            target.gguf_part()
        ));
    }
    let name = format!("blk.{layer}.{}.weight", target.gguf_part());
    let (out, inp) = base_shape(cfg, target);
    let rank = a_shape[0];
    if a_shape[1] != inp || b_shape[0] != out {
        return Err(format!(
            "`{name}` is [{out}, {inp}] in the base model, but its lora_a is {a_shape:?} \
             and its lora_b {b_shape:?} (expected [rank, {inp}] and [{out}, rank]; \
             an adapter for another base model?)"
        ));
    }
    if b_shape[1] != rank {
        return Err(format!(
            "`{name}`: lora_a has rank {rank} but lora_b {b_shape:?} has {}",
            b_shape[1]
        ));
    }
    if rank == 0 || rank > max_rank {
        return Err(format!(
            "`{name}` has rank {rank}; --max-lora-rank allows 1..={max_rank}"
        ));
    }
    Ok(rank)
}

/// `[out, in]` of the base projection.
fn base_shape(cfg: &ModelConfig, target: LoraTarget) -> (usize, usize) {
    let (h, q, kv, ffn) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
    match target {
        LoraTarget::Q => (q, h),
        LoraTarget::K | LoraTarget::V => (kv, h),
        LoraTarget::Out => (h, q),
        LoraTarget::Gate | LoraTarget::Up => (ffn, h),
        LoraTarget::Down => (h, ffn),
    }
}
