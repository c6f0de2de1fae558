//! Model hyperparameters read from GGUF metadata (`{arch}.*` keys) — or from a Hugging
//! Face config.json (`model::hf`) — validated once so the forward pass can index without
//! checks.

use super::gguf::{GgufError, GgufFile};
use crate::ops::rope::RopeStyle;

/// Model families tessera runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama layout (SmolLM2, Llama 2/3, Mistral): no biases, GGUF-permuted Q/K (a
    /// Hugging Face llama's Q/K rows are permuted the same way at load, `model::hf`).
    Llama,
    /// Qwen2 / Qwen2.5: QKV biases, NEOX RoPE.
    Qwen2,
    /// Qwen1.5-MoE / Qwen2-MoE: the Qwen2 attention, routed experts plus a gated shared expert.
    Qwen2Moe,
    /// InternLM2 / InternLM2.5 as llama.cpp converts it: the llama layer (fused `wqkv`
    /// split into GGUF-permuted Q/K/V by the converter), always a separate LM head.
    InternLm2,
}

impl Arch {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen2moe" => Some(Arch::Qwen2Moe),
            "internlm2" => Some(Arch::InternLm2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen2Moe => "qwen2moe",
            Arch::InternLm2 => "internlm2",
        }
    }
}

/// Why a model's hyperparameters were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("architecture `{0}` is not supported (supported: llama, qwen2, qwen2moe, internlm2)")]
    UnsupportedArch(String),
    #[error("`{key}` must be in {min}..={max}. Given: {value}")]
    OutOfRange {
        key: String,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("inconsistent hyperparameters: {0}")]
    Inconsistent(String),
}

/// Everything the forward pass needs to know about shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rope_base: f32,
    /// Rotated dimensions of each head (≤ head_dim).
    pub rope_dims: usize,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    /// Trained context length (`{arch}.context_length`).
    pub context_length: usize,
    /// Mixture-of-experts FFN shape; `None` for dense models.
    pub moe: Option<MoeConfig>,
}

/// Shape and routing rule of a mixture-of-experts FFN (every layer of the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoeConfig {
    /// Routed experts per layer (`{arch}.expert_count`).
    pub n_expert: usize,
    /// Experts each token runs through (`{arch}.expert_used_count`).
    pub n_expert_used: usize,
    /// Hidden width of each routed expert.
    pub expert_ffn: usize,
    /// Hidden width of the shared expert; `None` when the layers have none.
    pub shared_ffn: Option<usize>,
    /// Renormalize the top-k weights to sum to 1 (`norm_topk_prob`).
    pub norm_topk_prob: bool,
}

/// Most experts per layer (llama.cpp's `LLAMA_MAX_EXPERTS`).
pub const MAX_EXPERTS: u64 = 1024;

impl MoeConfig {
    /// Reads the expert keys. llama: MoE only when `expert_count` > 0, experts as wide as
    /// `feed_forward_length`, top-k renormalized (Mixtral). qwen2moe: always MoE, widths
    /// from `expert_feed_forward_length` / `expert_shared_feed_forward_length` (llama.cpp's
    /// fallbacks: `ffn / n_expert_used` and `ffn`), top-k NOT renormalized (Qwen's
    /// `norm_topk_prob = false`). llama.cpp hard-codes the renormalization per
    /// architecture; a file that states `{arch}.expert_weights_norm` is followed instead.
    fn from_gguf(file: &GgufFile, arch: Arch, ffn: usize) -> Result<Option<Self>, ConfigError> {
        let key = |k: &str| format!("{}.{k}", arch.name());
        let n_expert = match file.opt_u64(&key("expert_count"))? {
            Some(n) if n > 0 => check_range(&key("expert_count"), n, 1, MAX_EXPERTS)?,
            _ if arch == Arch::Qwen2Moe => {
                return Err(ConfigError::Inconsistent(
                    "qwen2moe needs `qwen2moe.expert_count` > 0".to_string(),
                ))
            }
            _ => return Ok(None),
        };
        let used_key = key("expert_used_count");
        let n_expert_used = check_range(&used_key, file.get_u64(&used_key)?, 1, n_expert as u64)?;
        let width = |k: &str, default: usize| -> Result<usize, ConfigError> {
            match file.opt_u64(&key(k))? {
                Some(v) if v > 0 => check_range(&key(k), v, 1, 1 << 20),
                _ => Ok(default),
            }
        };
        let (expert_ffn, shared_ffn, norm_default) = match arch {
            Arch::Qwen2Moe => (
                width("expert_feed_forward_length", ffn / n_expert_used)?,
                Some(width("expert_shared_feed_forward_length", ffn)?),
                false,
            ),
            Arch::Llama | Arch::Qwen2 | Arch::InternLm2 => (ffn, None, true),
        };
        if expert_ffn == 0 {
            return Err(ConfigError::Inconsistent(format!(
                "expert FFN width is 0 (feed_forward_length {ffn} / expert_used_count {n_expert_used})"
            )));
        }
        Ok(Some(MoeConfig {
            n_expert,
            n_expert_used,
            expert_ffn,
            shared_ffn,
            norm_topk_prob: file
                .opt_bool(&key("expert_weights_norm"))?
                .unwrap_or(norm_default),
        }))
    }
}

impl ModelConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ConfigError> {
        let arch_name = file.architecture()?;
        let arch = Arch::from_name(arch_name)
            .ok_or_else(|| ConfigError::UnsupportedArch(arch_name.to_string()))?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let get = |k: &str, min: u64, max: u64| -> Result<usize, ConfigError> {
            let value = file.get_u64(&key(k))?;
            check_range(&key(k), value, min, max)
        };
        let hidden = get("embedding_length", 1, 1 << 16)?;
        let n_heads = get("attention.head_count", 1, 1024)?;
        let n_kv_heads = match file.opt_u32(&key("attention.head_count_kv"))? {
            Some(v) => check_range(&key("attention.head_count_kv"), v as u64, 1, 1024)?,
            None => n_heads,
        };
        let head_dim = match file.opt_u32(&key("attention.key_length"))? {
            Some(v) => check_range(&key("attention.key_length"), v as u64, 2, 1024)?,
            None => hidden / n_heads,
        };
        let rope_dims = match file.opt_u32(&key("rope.dimension_count"))? {
            Some(v) => check_range(&key("rope.dimension_count"), v as u64, 2, head_dim as u64)?,
            None => head_dim,
        };
        let vocab = file
            .tensor("token_embd.weight")?
            .dims
            .get(1)
            .copied()
            .unwrap_or(0);
        let ffn = get("feed_forward_length", 1, 1 << 20)?;
        let cfg = ModelConfig {
            arch,
            hidden,
            n_layers: get("block_count", 1, 1024)?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn,
            vocab,
            rope_base: file.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_dims,
            rope_style: match arch {
                Arch::Llama | Arch::InternLm2 => RopeStyle::Interleaved,
                Arch::Qwen2 | Arch::Qwen2Moe => RopeStyle::Neox,
            },
            rms_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: get("context_length", 1, 1 << 24)?,
            moe: match arch {
                Arch::Qwen2 | Arch::InternLm2 => None,
                Arch::Llama | Arch::Qwen2Moe => MoeConfig::from_gguf(file, arch, ffn)?,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Inconsistent(msg));
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) || !self.rope_dims.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} and rope dims {} must be even",
                self.head_dim, self.rope_dims
            ));
        }
        if self.vocab == 0 || self.vocab > (1 << 24) {
            return bad(format!("vocabulary size {} is out of range", self.vocab));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!(
                "rope.freq_base {} must be positive",
                self.rope_base
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return bad(format!("rms epsilon {} must be >= 0", self.rms_eps));
        }
        Ok(())
    }

    /// Width of all query heads: `n_heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads: `n_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Bytes of K+V cache per token over all layers (f16 storage).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.kv_dim() * std::mem::size_of::<half::f16>()
    }
}

pub(crate) fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<usize, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            key: key.to_string(),
            value,
            min,
            max,
        });
    }
    Ok(value as usize)
}
