//! Model loading and execution: GGUF files and Hugging Face folders (`hf`, over the
//! `safetensors` reader), tokenizer and chat template, shared layers and one file per
//! model family. `load` dispatches on the path: a folder is a Hugging Face checkpoint,
//! a file is GGUF; both end in the same `Transformer` and `ModelAssets`. With
//! `LoadOptions::quantization` the float weights are quantized as they load (`quantize`).

pub mod chat_template;
pub mod config;
pub mod decoder;
pub mod gguf;
pub mod hf;
pub mod internlm2;
pub mod kv_storage;
pub mod layers;
pub mod llama;
pub mod lora;
pub mod moe;
pub mod quantize;
pub mod qwen2;
pub mod qwen2moe;
pub mod safetensors;
pub mod tensor_names;
pub mod tokenizer;
pub mod transformer;
pub mod weights;
pub mod workspace;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::ModelError;
use chat_template::ChatTemplate;
use config::{Arch, ModelConfig};
use gguf::GgufFile;
use lora::registry::LoraOptions;
use lora::{LoraError, LoraRegistry};
use quantize::Quantization;
use safetensors::Checkpoint;
use tokenizer::Tokenizer;
use transformer::Transformer;
use weights::{ConvertedWeights, WeightError, WeightLoader};

/// Everything about a model besides its weights: shared read-only by the HTTP side.
pub struct ModelAssets {
    /// Name served in the API (file stem unless overridden).
    pub name: String,
    pub path: PathBuf,
    pub config: ModelConfig,
    /// The weight type holding most parameters of the model's matrices as ggml names it
    /// (`Q4_1`, `BF16`, …; `unknown` without any), read from the file at load.
    pub dtype: String,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    /// Live routed-token counters of a MoE model (`None` for dense models).
    pub expert_tokens: Option<moe::ExpertTokenCounts>,
    /// The LoRA adapters served on top of the model (`--lora-modules`, and those loaded
    /// at run time).
    pub adapters: Arc<LoraRegistry>,
}

/// A loaded model: weights for the engine thread, assets for everyone else.
pub struct LoadedModel {
    pub transformer: Transformer,
    pub assets: ModelAssets,
}

impl LoadedModel {
    /// Loads the adapters of `options` for this model, served beside `base_names`.
    pub fn serve_adapters(
        &mut self,
        options: &LoraOptions,
        base_names: &[String],
    ) -> Result<(), LoraError> {
        let registry = LoraRegistry::load(options, &self.assets.config, base_names)?;
        self.assets.adapters = Arc::new(registry);
        Ok(())
    }
}

/// How to load a model beyond its path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `--max-model-len`: caps the context (default: the trained length).
    pub max_model_len: Option<usize>,
    /// `--quantization`: quantize the float weights at load.
    pub quantization: Option<Quantization>,
}

/// Loads a model as stored (see `load_with`).
pub fn load(
    path: &Path,
    max_model_len: Option<usize>,
    progress: impl FnMut(usize, usize),
) -> Result<LoadedModel, ModelError> {
    let options = LoadOptions {
        max_model_len,
        quantization: None,
    };
    load_with(path, &options, progress)
}

/// Loads a model: a Hugging Face folder (config.json + *.safetensors + tokenizer.json)
/// when `path` is a directory, else a GGUF file. `progress(done, total)` is called as
/// layers load.
pub fn load_with(
    path: &Path,
    options: &LoadOptions,
    progress: impl FnMut(usize, usize),
) -> Result<LoadedModel, ModelError> {
    if path.is_dir() {
        return load_hf(path, options, progress);
    }
    let file = GgufFile::open(path)?;
    let config = ModelConfig::from_gguf(&file)?;
    let max_len = resolve_max_len(&config, options.max_model_len)?;
    let matrices = || file.tensors().iter().filter(|t| t.dims.len() >= 2);
    if let Some(q) = options.quantization {
        quantize::check_source(q, matrices().map(|t| (t.name.as_str(), Some(t.dtype))))
            .map_err(ModelError::Invalid)?;
    }
    let weights = WeightLoader::new(&file).quantizing(options.quantization);
    let transformer = match config.arch {
        Arch::Llama => llama::load(&weights, config.clone(), max_len, progress)?,
        Arch::Qwen2 => qwen2::load(&weights, config.clone(), max_len, progress)?,
        Arch::Qwen2Moe => qwen2moe::load(&weights, config.clone(), max_len, progress)?,
        Arch::InternLm2 => internlm2::load(&weights, config.clone(), max_len, progress)?,
    };
    log_conversion(options.quantization, weights.converted());
    let (tokenizer, chat_template) = load_text_assets(&file)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string());
    let stored = gguf::dominant_dtype(matrices().map(|t| (t.dtype, t.element_count())));
    let dtype = served_dtype(stored, options.quantization);
    let text = TextAssets {
        tokenizer,
        chat_template,
    };
    assemble(path, name, config, dtype, transformer, text)
}

fn load_hf(
    dir: &Path,
    options: &LoadOptions,
    progress: impl FnMut(usize, usize),
) -> Result<LoadedModel, ModelError> {
    let config = hf::read_config(dir)?;
    let max_len = resolve_max_len(&config.model, options.max_model_len)?;
    let (tokenizer, chat_template) = hf::load_text(dir, &config)?;
    let checkpoint = Checkpoint::open_dir(dir).map_err(WeightError::from)?;
    let tensors = || checkpoint.shards().iter().flat_map(|shard| shard.tensors());
    let matrices = || tensors().filter(|t| t.shape.len() >= 2);
    if let Some(q) = options.quantization {
        quantize::check_source(q, matrices().map(|t| (t.name.as_str(), t.dtype.ggml())))
            .map_err(ModelError::Invalid)?;
    }
    let stored = gguf::dominant_dtype(matrices().filter_map(|t| {
        let count = t.shape.iter().product();
        t.dtype.ggml().map(|dtype| (dtype, count))
    }));
    let dtype = served_dtype(stored, options.quantization);
    let (transformer, converted) =
        hf::load_weights(checkpoint, &config, max_len, options.quantization, progress)?;
    log_conversion(options.quantization, converted);
    // A folder's name is the model's name ("Qwen2.5-0.5B-Instruct": no extension to strip).
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_string());
    let text = TextAssets {
        tokenizer,
        chat_template,
    };
    assemble(dir, name, config.model, dtype, transformer, text)
}

/// The weight type the model is served in: the quantization's when one is set.
fn served_dtype(stored: Option<&'static str>, q: Option<Quantization>) -> Option<&'static str> {
    match q {
        Some(Quantization::Q8_0) => Some("Q8_0"),
        Some(Quantization::Q4_0) => Some("Q4_0"),
        None => stored,
    }
}

/// One log line for what `--quantization` did.
fn log_conversion(q: Option<Quantization>, converted: ConvertedWeights) {
    if let Some(q) = q {
        tracing::info!(
            quantization = %q,
            matrices = converted.matrices,
            mib_before = converted.bytes_before as f64 / (1 << 20) as f64,
            mib_after = converted.bytes_after as f64 / (1 << 20) as f64,
            "weights quantized at load"
        );
    }
}

/// `--max-model-len` against the model's context length.
fn resolve_max_len(
    config: &ModelConfig,
    max_model_len: Option<usize>,
) -> Result<usize, ModelError> {
    match max_model_len {
        Some(n) if n == 0 || n > config.context_length => Err(ModelError::Invalid(format!(
            "--max-model-len must be in 1..={} (the model's context length). Given: {n}",
            config.context_length
        ))),
        Some(n) => Ok(n),
        None => Ok(config.context_length),
    }
}

/// A model's tokenizer and chat template.
struct TextAssets {
    tokenizer: Tokenizer,
    chat_template: ChatTemplate,
}

/// The final checks shared by both formats, then the `LoadedModel`.
fn assemble(
    path: &Path,
    name: String,
    config: ModelConfig,
    dtype: Option<&str>,
    transformer: Transformer,
    text: TextAssets,
) -> Result<LoadedModel, ModelError> {
    let TextAssets {
        tokenizer,
        chat_template,
    } = text;
    if tokenizer.vocab_size() > config.vocab {
        return Err(ModelError::Invalid(format!(
            "tokenizer has {} tokens but the embedding has only {} rows",
            tokenizer.vocab_size(),
            config.vocab
        )));
    }
    let expert_tokens = transformer.expert_token_counts();
    // Adapters can be loaded at run time even without --lora-modules (vLLM's defaults).
    let adapters = LoraRegistry::new(
        &LoraOptions::default(),
        &config,
        std::slice::from_ref(&name),
    );
    Ok(LoadedModel {
        transformer,
        assets: ModelAssets {
            name,
            path: path.to_path_buf(),
            config,
            dtype: dtype.unwrap_or("unknown").to_string(),
            tokenizer,
            chat_template,
            expert_tokens,
            adapters: Arc::new(adapters),
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
