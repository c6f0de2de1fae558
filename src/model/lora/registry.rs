//! The adapters a server serves (`--lora-modules name=path`): loaded once at start,
//! checked against the base model, then shared read-only by the HTTP side (names → ids,
//! for `model` and `/v1/models`) and the engine (ids → weights). Ids start at 1 and are
//! never reused, so a KV block computed under one adapter can never be served to another.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{load_gguf, AdapterId, LoraAdapter, LoraError};
use crate::model::config::ModelConfig;

/// One served adapter.
pub struct ServedAdapter {
    /// The name requests select it by (`model`).
    pub name: String,
    pub path: PathBuf,
    pub id: AdapterId,
    pub adapter: Arc<LoraAdapter>,
}

/// Every adapter the server serves, in `--lora-modules` order.
#[derive(Default)]
pub struct LoraRegistry {
    adapters: Vec<ServedAdapter>,
}

/// The LoRA flags.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraOptions {
    /// `--lora-modules`: `(name, path)` in order.
    pub modules: Vec<(String, PathBuf)>,
    /// `--max-loras`: adapters resident at once.
    pub max_loras: usize,
    /// `--max-lora-rank`: the largest rank of any adapted projection.
    pub max_lora_rank: usize,
}

impl Default for LoraOptions {
    fn default() -> Self {
        // vLLM's defaults.
        Self {
            modules: Vec::new(),
            max_loras: 1,
            max_lora_rank: 16,
        }
    }
}

impl LoraRegistry {
    /// Loads `options.modules` for a base model of `cfg` served as `base_names`: names
    /// must be distinct and not a base model name, at most `max_loras` of them.
    pub fn load(
        options: &LoraOptions,
        cfg: &ModelConfig,
        base_names: &[String],
    ) -> Result<Self, LoraError> {
        let refuse = |path: &Path, message: String| LoraError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if options.modules.len() > options.max_loras {
            let path = options
                .modules
                .last()
                .map_or(PathBuf::new(), |m| m.1.clone());
            return Err(refuse(
                &path,
                format!(
                    "{} adapters given by --lora-modules, but --max-loras is {}",
                    options.modules.len(),
                    options.max_loras
                ),
            ));
        }
        let mut adapters: Vec<ServedAdapter> = Vec::with_capacity(options.modules.len());
        for (name, path) in &options.modules {
            if adapters.iter().any(|a| &a.name == name) {
                return Err(refuse(path, format!("the name `{name}` is given twice")));
            }
            if base_names.contains(name) {
                return Err(refuse(
                    path,
                    format!("the name `{name}` is the base model's"),
                ));
            }
            let adapter = load_gguf(path, cfg, options.max_lora_rank, 1.0)?;
            tracing::info!(
                name,
                path = %path.display(),
                projections = adapter.num_pairs(),
                max_rank = adapter.max_rank(),
                alpha = adapter.alpha,
                "LoRA adapter loaded"
            );
            adapters.push(ServedAdapter {
                name: name.clone(),
                path: path.clone(),
                id: AdapterId(adapters.len() as u32 + 1),
                adapter: Arc::new(adapter),
            });
        }
        Ok(Self { adapters })
    }

    pub fn adapters(&self) -> &[ServedAdapter] {
        &self.adapters
    }

    /// The adapter served as `name`.
    pub fn by_name(&self, name: &str) -> Option<&ServedAdapter> {
        self.adapters.iter().find(|a| a.name == name)
    }

    /// The weights of adapter `id`.
    pub fn weights(&self, id: AdapterId) -> Option<&Arc<LoraAdapter>> {
        self.adapters
            .iter()
            .find(|a| a.id == id)
            .map(|a| &a.adapter)
    }
}
