//! The `internlm2` family (InternLM2, InternLM2.5 chat models) in GGUF layout, as
//! llama.cpp's converter writes it: the checkpoint's fused `attention.wqkv` (rows grouped
//! per KV head as `[q × q_per_kv, k, v]`) is split into `attn_q` / `attn_k` / `attn_v`
//! and Q/K are permuted like llama's, so RoPE rotates ADJACENT pairs
//! (`RopeStyle::Interleaved`); no biases; the LM head is always its own `output.weight`
//! (llama.cpp requires it). What is left is the llama decoder, shared, not copied.

use super::config::ModelConfig;
use super::transformer::{DenseLayout, LmHead, Transformer};
use super::weights::{WeightError, WeightLoader};

/// What InternLM2 is among the llama-layout families.
pub const LAYOUT: DenseLayout = DenseLayout {
    qkv_bias: false,
    lm_head: LmHead::Separate,
};

pub fn load(
    weights: &WeightLoader<'_>,
    cfg: ModelConfig,
    max_positions: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Transformer, WeightError> {
    Transformer::from_weights(weights, cfg, LAYOUT, max_positions, progress)
}
