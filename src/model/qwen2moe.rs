//! The `qwen2moe` family (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B) in GGUF layout: the Qwen2
//! attention (Q/K/V biases, NEOX RoPE) with a mixture-of-experts FFN in every layer —
//! `expert_count` routed experts of width `expert_feed_forward_length`, top
//! `expert_used_count` by softmax probability, NOT renormalized (`norm_topk_prob = false`),
//! plus a shared expert (`ffn_*_shexp`) scaled by `sigmoid(x · ffn_gate_inp_shexp)`.
//! The block itself is `moe::MoeBlock`; `ModelConfig::moe` carries the shape.

use super::config::ModelConfig;
use super::transformer::Transformer;
use super::weights::{WeightError, WeightLoader};

pub fn load(
    weights: &WeightLoader<'_>,
    cfg: ModelConfig,
    max_positions: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Transformer, WeightError> {
    Transformer::load_dense(weights, cfg, true, max_positions, progress)
}
