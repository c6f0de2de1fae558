//! `HfTensors`: a safetensors checkpoint as a `TensorSource` for the shared weight loader.
//!
//! Owns two conversions:
//! - dtype: F32 / F16 / BF16 safetensors map to the ggml types with the same bytes
//!   (little-endian, row-major); any other dtype is refused by name;
//! - llama Q/K row order: HF keeps each head's rows so RoPE pairs row `i` with
//!   `i + head_dim/2` (`rotate_half`). For `Arch::Llama` the rows of `q_proj` / `k_proj`
//!   (weights and biases) are permuted at load into the adjacent-pair order llama.cpp's
//!   converter writes (new row `2i` = old row `i`, new row `2i+1` = old row
//!   `i + head_dim/2`, per head; `rope_permute.rs`), so the same `RopeStyle::Interleaved` kernel serves both
//!   formats and an HF llama matches its converted GGUF bit for bit;
//! - InternLM2 names: the loader's HF llama names are looked up under InternLM2's own
//!   names, Q/K/V cut out of the fused `wqkv` (`internlm2.rs`).

use std::borrow::Cow;
use std::collections::HashMap;

use super::internlm2::{self, Source};
use super::rope_permute::rope_pairs_adjacent;
use crate::model::config::{Arch, ModelConfig};
use crate::model::safetensors::{Checkpoint, SafetensorsError};
use crate::model::tensor_names::{LayerTensor, Naming};
use crate::model::weights::{TensorRef, TensorSource, WeightError};

/// A checkpoint's tensors, by Hugging Face names.
pub struct HfTensors {
    checkpoint: Checkpoint,
    /// Tensors whose rows are permuted at load → their number of heads.
    permuted: HashMap<String, usize>,
    /// InternLM2: HF llama name → where the checkpoint holds it (empty otherwise).
    sources: HashMap<String, Source>,
    cfg: ModelConfig,
}

impl HfTensors {
    pub fn new(checkpoint: Checkpoint, cfg: &ModelConfig) -> Self {
        let mut permuted = HashMap::new();
        if cfg.arch == Arch::Llama {
            for i in 0..cfg.n_layers {
                let name = |t| Naming::HuggingFace.layer(i, t);
                permuted.insert(name(LayerTensor::Q), cfg.n_heads);
                permuted.insert(name(LayerTensor::QBias), cfg.n_heads);
                permuted.insert(name(LayerTensor::K), cfg.n_kv_heads);
                permuted.insert(name(LayerTensor::KBias), cfg.n_kv_heads);
            }
        }
        let sources = match cfg.arch {
            Arch::InternLm2 => internlm2::sources(cfg).into_iter().collect(),
            _ => HashMap::new(),
        };
        Self {
            checkpoint,
            permuted,
            sources,
            cfg: cfg.clone(),
        }
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }
}

impl TensorSource for HfTensors {
    fn get_tensor(&self, name: &str) -> Result<TensorRef<'_>, WeightError> {
        match self.sources.get(name) {
            Some(Source::Renamed(stored)) => self.stored_tensor(stored),
            Some(Source::Fused { wqkv, part }) => {
                let fused = self.stored_tensor(wqkv)?;
                let (shape, data) =
                    internlm2::split_wqkv(wqkv, &fused.shape, &fused.data, &self.cfg, *part)?;
                Ok(TensorRef {
                    dtype: fused.dtype,
                    shape,
                    data: Cow::Owned(data),
                })
            }
            None => self.stored_tensor(name),
        }
    }

    fn has_tensor(&self, name: &str) -> bool {
        match self.sources.get(name) {
            Some(Source::Renamed(stored)) => self.checkpoint.contains(stored),
            Some(Source::Fused { wqkv, .. }) => self.checkpoint.contains(wqkv),
            None => self.checkpoint.contains(name),
        }
    }
}

impl HfTensors {
    /// The checkpoint's tensor `name`, dtype mapped, llama Q/K rows permuted.
    fn stored_tensor(&self, name: &str) -> Result<TensorRef<'_>, WeightError> {
        let (info, bytes) = self.checkpoint.tensor(name)?;
        let dtype = info
            .dtype
            .ggml()
            .ok_or_else(|| SafetensorsError::UnsupportedDtype {
                name: name.to_string(),
                dtype: info.dtype.name(),
            })?;
        let rows = info.shape.first().copied().unwrap_or(0);
        let data = match self.permuted.get(name) {
            // A tensor of another row count is left alone: the loader's shape check
            // rejects it with the expected shape.
            Some(&heads) if rows == heads * self.cfg.head_dim && rows > 0 => {
                Cow::Owned(rope_pairs_adjacent(bytes, heads, self.cfg.head_dim))
            }
            _ => Cow::Borrowed(bytes),
        };
        Ok(TensorRef {
            dtype,
            shape: info.shape.clone(),
            data,
        })
    }
}
