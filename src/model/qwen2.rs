//! The `qwen2` family (Qwen2, Qwen2.5) in GGUF layout: the llama layer plus Q/K/V biases,
//! and RoPE over HALF-SPLIT pairs `(x[i], x[i + d/2])` (`RopeStyle::Neox`, set by
//! `ModelConfig`). Small Qwen2.5 models tie the LM head to `token_embd`.

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
