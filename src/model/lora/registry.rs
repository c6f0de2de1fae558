//! The adapters a server serves: loaded at start (`--lora-modules name=path`) and at run
//! time (`POST /v1/load_lora_adapter`, `/v1/unload_lora_adapter`), each checked against
//! the base model. Shared by the HTTP side (names → `LoraRef`s, for `model` and
//! `/v1/models`); the engine never reads it: a request carries its `LoraRef`.
//!
//! Invariants: at most `max_loras` adapters are served; no two share a name and none is
//! named like the base model (`base_names`); ids start at 1 and are never reused, not
//! even when a name is loaded again, so a KV block computed under one load is never
//! served to another. Unloading never waits: the adapter leaves the registry at once
//! (new requests naming it get 404), while requests that already selected it finish
//! with the weights their `LoraRef` holds; the memory is freed when the last one ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::peft::load_peft;
use super::{load_gguf, AdapterId, LoraAdapter, LoraError, LoraRef};
use crate::model::config::ModelConfig;

/// One served adapter.
#[derive(Clone)]
pub struct ServedAdapter {
    /// The name requests select it by (`model`).
    pub name: String,
    pub path: PathBuf,
    pub lora: LoraRef,
}

/// Every adapter the server serves, in load order.
pub struct LoraRegistry {
    /// The base model the adapters are checked against.
    cfg: ModelConfig,
    max_loras: usize,
    max_lora_rank: usize,
    state: RwLock<Served>,
    /// The last id handed out.
    last_id: AtomicU32,
}

#[derive(Default)]
struct Served {
    /// The names the base model is served as (no adapter may take one).
    base_names: Vec<String>,
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
    /// An empty registry for a base model of `cfg` served as `base_names`, taking
    /// adapters up to the limits of `options` (its `modules` are not loaded).
    pub fn new(options: &LoraOptions, cfg: &ModelConfig, base_names: &[String]) -> Self {
        Self {
            cfg: cfg.clone(),
            max_loras: options.max_loras,
            max_lora_rank: options.max_lora_rank,
            state: RwLock::new(Served {
                base_names: base_names.to_vec(),
                adapters: Vec::new(),
            }),
            last_id: AtomicU32::new(0),
        }
    }

    /// A registry serving `options.modules`: names must be distinct and not a base model
    /// name, at most `max_loras` of them.
    pub fn load(
        options: &LoraOptions,
        cfg: &ModelConfig,
        base_names: &[String],
    ) -> Result<Self, LoraError> {
        if options.modules.len() > options.max_loras {
            let path = options
                .modules
                .last()
                .map_or(PathBuf::new(), |m| m.1.clone());
            return Err(LoraError::Invalid {
                path,
                message: format!(
                    "{} adapters given by --lora-modules, but --max-loras is {}",
                    options.modules.len(),
                    options.max_loras
                ),
            });
        }
        let registry = Self::new(options, cfg, base_names);
        for (name, path) in &options.modules {
            registry.add(name, path)?;
        }
        Ok(registry)
    }

    /// Loads the adapter at `path` and serves it as `name`. The file is read without the
    /// lock held; the name and the count are checked before and again after.
    pub fn add(&self, name: &str, path: &Path) -> Result<ServedAdapter, LoraError> {
        self.check_room(&self.read(), name)?;
        let adapter = load_adapter(path, &self.cfg, self.max_lora_rank)?;
        let mut state = self.write();
        self.check_room(&state, name)?;
        let id = AdapterId(self.last_id.fetch_add(1, Ordering::SeqCst) + 1);
        tracing::info!(
            name,
            path = %path.display(),
            id = id.0,
            projections = adapter.num_pairs(),
            max_rank = adapter.max_rank(),
            alpha = adapter.alpha,
            "LoRA adapter loaded"
        );
        let served = ServedAdapter {
            name: name.to_string(),
            path: path.to_path_buf(),
            lora: LoraRef {
                id,
                weights: Arc::new(adapter),
            },
        };
        state.adapters.push(served.clone());
        Ok(served)
    }

    /// Stops serving `name`; requests that selected it before finish with its weights.
    pub fn remove(&self, name: &str) -> Result<ServedAdapter, LoraError> {
        let mut state = self.write();
        let index = state
            .adapters
            .iter()
            .position(|a| a.name == name)
            .ok_or_else(|| LoraError::NotServed { name: name.into() })?;
        let removed = state.adapters.remove(index);
        tracing::info!(name, id = removed.lora.id.0, "LoRA adapter unloaded");
        Ok(removed)
    }

    /// Sets the names the base model is served as (`--served-model-name`, else its file).
    pub fn set_base_names(&self, names: &[String]) {
        self.write().base_names = names.to_vec();
    }

    /// The served adapters, in load order.
    pub fn adapters(&self) -> Vec<ServedAdapter> {
        self.read().adapters.clone()
    }

    /// The names the base model is served as.
    pub fn base_names(&self) -> Vec<String> {
        self.read().base_names.clone()
    }

    /// The served adapters' names, in load order.
    pub fn names(&self) -> Vec<String> {
        self.read()
            .adapters
            .iter()
            .map(|a| a.name.clone())
            .collect()
    }

    /// The adapter served as `name`.
    pub fn by_name(&self, name: &str) -> Option<ServedAdapter> {
        self.read()
            .adapters
            .iter()
            .find(|a| a.name == name)
            .cloned()
    }

    /// What a request for `model` runs with: `Some` for an adapter, `None` for the base
    /// model; a name that is neither (any more) is `NotServed`.
    pub fn select(&self, model: &str) -> Result<Option<LoraRef>, LoraError> {
        let state = self.read();
        if let Some(a) = state.adapters.iter().find(|a| a.name == model) {
            return Ok(Some(a.lora.clone()));
        }
        // An engine never told its base names (outside a server) runs the base model.
        if state.base_names.is_empty() || state.base_names.iter().any(|n| n == model) {
            return Ok(None);
        }
        Err(LoraError::NotServed { name: model.into() })
    }

    /// `name` is free and there is room for one more adapter.
    fn check_room(&self, state: &Served, name: &str) -> Result<(), LoraError> {
        let refuse = |message: &str| {
            Err(LoraError::Name {
                name: name.into(),
                message: message.into(),
            })
        };
        if name.is_empty() {
            return refuse("must not be empty");
        }
        if state.base_names.iter().any(|n| n == name) {
            return refuse("is the base model's (a served model name)");
        }
        if state.adapters.iter().any(|a| a.name == name) {
            return refuse("is given twice (an adapter of that name is loaded already)");
        }
        if state.adapters.len() >= self.max_loras {
            return Err(LoraError::Full {
                name: name.into(),
                max_loras: self.max_loras,
            });
        }
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, Served> {
        // The lock guards plain data, never left half-written: a poisoned one is usable.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Served> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Loads the adapter at `path` for a base model of `cfg`: a GGUF file, or a PEFT folder
/// (`adapter_config.json` + `adapter_model.safetensors`); see `load_gguf`.
fn load_adapter(path: &Path, cfg: &ModelConfig, max_rank: usize) -> Result<LoraAdapter, LoraError> {
    let kind = std::fs::metadata(path).map(|m| m.file_type());
    match kind {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(LoraError::NotFound {
            path: path.to_path_buf(),
        }),
        Ok(kind) if kind.is_dir() => load_peft(path, cfg, max_rank),
        Ok(kind) if kind.is_file() => load_gguf(path, cfg, max_rank, 1.0),
        Ok(_) => Err(LoraError::Invalid {
            path: path.to_path_buf(),
            message: "is neither a file nor a folder".into(),
        }),
        Err(e) => Err(LoraError::Invalid {
            path: path.to_path_buf(),
            message: format!("cannot be read: {e}"),
        }),
    }
}
