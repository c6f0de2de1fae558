//! Loading a Hugging Face model folder: `config.json` + `*.safetensors` (one file, or
//! shards listed by `model.safetensors.index.json`) + `tokenizer.json` (InternLM2: a
//! SentencePiece `tokenizer.model`), with the optional `tokenizer_config.json`,
//! `generation_config.json` and `chat_template.jinja`.
//!
//! Dense llama / mistral / qwen2 / internlm2 checkpoints in F32, F16 or BF16. The weights
//! go through the same `WeightLoader` / `Transformer::from_weights` path as GGUF, under HF
//! names (`tensor_names::Naming::HuggingFace`); `tensors.rs` adapts dtypes and the llama
//! Q/K row order (`internlm2.rs`: InternLM2's names and fused `wqkv`), `config.rs` maps
//! the hyperparameters, `tokenizer.rs` builds the text side (`spm_vocab.rs` from an
//! InternLM2 SentencePiece `tokenizer.model`, read by `spm_proto.rs`).

mod config;
mod error;
mod internlm2;
mod pipeline;
mod rope_permute;
mod spm_proto;
mod spm_vocab;
mod tensors;
mod tokenizer;

use std::path::Path;

pub use config::HfConfig;
pub use error::HfError;
pub use rope_permute::rope_pairs_adjacent;
pub use tensors::HfTensors;

use super::chat_template::ChatTemplate;
use super::config::Arch;
use super::quantize::Quantization;
use super::safetensors::Checkpoint;
use super::tensor_names::Naming;
use super::tokenizer::Tokenizer;
use super::transformer::{DenseLayout, LmHead, Transformer};
use super::weights::{ConvertedWeights, WeightError, WeightLoader};

/// Largest config.json accepted.
const MAX_CONFIG_JSON: u64 = 16 << 20;

/// Reads and validates `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<HfConfig, HfError> {
    let path = error::require_file(dir, "config.json")?;
    HfConfig::from_json(&error::read_json(&path, MAX_CONFIG_JSON)?)
}

/// The folder's tokenizer and chat template (cheap: load them before the weights, so a
/// broken tokenizer does not cost a weight load).
pub fn load_text(dir: &Path, config: &HfConfig) -> Result<(Tokenizer, ChatTemplate), HfError> {
    match config.model.arch {
        Arch::InternLm2 => spm_vocab::load(dir, config),
        _ => tokenizer::load(dir, config),
    }
}

/// The weights of `checkpoint` (the folder's `*.safetensors`) as a `Transformer` with a
/// RoPE table of `max_positions`, quantized at load when `quantization` says so (with
/// what that converted).
pub fn load_weights(
    checkpoint: Checkpoint,
    config: &HfConfig,
    max_positions: usize,
    quantization: Option<Quantization>,
    progress: impl FnMut(usize, usize),
) -> Result<(Transformer, ConvertedWeights), WeightError> {
    let tensors = HfTensors::new(checkpoint, &config.model);
    let layout = DenseLayout {
        qkv_bias: config.qkv_bias,
        lm_head: if config.tied_embeddings {
            LmHead::Tied
        } else {
            LmHead::Separate
        },
    };
    let loader = WeightLoader::with_source(&tensors, Naming::HuggingFace).quantizing(quantization);
    let transformer = Transformer::from_weights(
        &loader,
        config.model.clone(),
        layout,
        max_positions,
        progress,
    )?;
    Ok((transformer, loader.converted()))
}
