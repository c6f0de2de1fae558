//! The `llama` family (SmolLM2, Llama 2/3, Mistral, TinyLlama) in GGUF layout:
//! pre-norm decoder layers without biases; `attn_q`/`attn_k` rows were permuted by the
//! GGUF converter so RoPE rotates ADJACENT pairs (`RopeStyle::Interleaved`); the LM head
//! may be tied to `token_embd` (SmolLM2 has no `output.weight`). With `llama.expert_count`
//! > 0 it is Mixtral: every FFN is a `moe::MoeBlock` (top-k renormalized, no shared expert).

use super::config::ModelConfig;
use super::transformer::Transformer;
use super::weights::{WeightError, WeightLoader};

pub fn load(
    weights: &WeightLoader<'_>,
    cfg: ModelConfig,
    max_positions: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Transformer, WeightError> {
    Transformer::load_dense(weights, cfg, false, max_positions, progress)
}
