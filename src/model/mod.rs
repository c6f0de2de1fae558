//! Model loading and execution: GGUF parsing, tokenizer and chat template from GGUF
//! metadata, shared layers and one file per model family.

pub mod chat_template;
pub mod config;
pub mod gguf;
pub mod kv_cache;
pub mod layers;
pub mod llama;
pub mod moe;
pub mod qwen2;
pub mod qwen2moe;
pub mod tokenizer;
pub mod transformer;
pub mod weights;
pub mod workspace;

use std::path::{Path, PathBuf};

use crate::error::ModelError;
use chat_template::ChatTemplate;
use config::{Arch, ModelConfig};
use gguf::GgufFile;
use tokenizer::Tokenizer;
use transformer::Transformer;

/// Everything about a model besides its weights: shared read-only by the HTTP side.
pub struct ModelAssets {
    /// Name served in the API (file stem unless overridden).
    pub name: String,
    pub path: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    /// Live routed-token counters of a MoE model (`None` for dense models).
    pub expert_tokens: Option<moe::ExpertTokenCounts>,
}

/// A loaded model: weights for the engine thread, assets for everyone else.
pub struct LoadedModel {
    pub transformer: Transformer,
    pub assets: ModelAssets,
}

/// Loads a GGUF model. `max_model_len` caps the context (default: the trained length).
/// `progress(done, total)` is called as layers load.
pub fn load(
    path: &Path,
    max_model_len: Option<usize>,
    progress: impl FnMut(usize, usize),
) -> Result<LoadedModel, ModelError> {
    let file = GgufFile::open(path)?;
    let config = ModelConfig::from_gguf(&file)?;
    let max_len = match max_model_len {
        Some(n) if n == 0 || n > config.context_length => {
            return Err(ModelError::Invalid(format!(
                "--max-model-len must be in 1..={} (the model's context length). Given: {n}",
                config.context_length
            )))
        }
        Some(n) => n,
        None => config.context_length,
    };
    let transformer = match config.arch {
        Arch::Llama => llama::load(&file, config.clone(), max_len, progress)?,
        Arch::Qwen2 => qwen2::load(&file, config.clone(), max_len, progress)?,
        Arch::Qwen2Moe => qwen2moe::load(&file, config.clone(), max_len, progress)?,
    };
    let expert_tokens = transformer.expert_token_counts();
    let (tokenizer, chat_template) = load_text_assets(&file)?;
    if tokenizer.vocab_size() > config.vocab {
        return Err(ModelError::Invalid(format!(
            "tokenizer has {} tokens but the embedding has only {} rows",
            tokenizer.vocab_size(),
            config.vocab
        )));
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string());
    Ok(LoadedModel {
        transformer,
        assets: ModelAssets {
            name,
            path: path.to_path_buf(),
            config,
            tokenizer,
            chat_template,
            expert_tokens,
        },
    })
}

/// Tokenizer and chat template from the GGUF metadata.
fn load_text_assets(file: &GgufFile) -> Result<(Tokenizer, ChatTemplate), ModelError> {
    let vocab =
        tokenizer::GgufVocab::from_gguf(file).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let tokenizer =
        Tokenizer::from_vocab(&vocab).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let token_text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    let template = ChatTemplate::from_optional(
        vocab.chat_template.as_deref(),
        &token_text(vocab.bos_id),
        &token_text(vocab.eos_id),
    )
    .map_err(|e| ModelError::Template(e.to_string()))?;
    Ok((tokenizer, template))
}
