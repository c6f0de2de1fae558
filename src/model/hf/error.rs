//! `HfError`: every way a Hugging Face model folder is refused before its weights load
//! (weight errors are `WeightError`s, as for GGUF).
//!
//! Invariant: each message names the file and the key, the rule and the value found.

use std::path::PathBuf;

use crate::model::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("`{dir}` has no `{file}`; a Hugging Face model folder needs config.json, tokenizer.json (tokenizer.model for internlm2) and *.safetensors weights")]
    MissingFile { dir: PathBuf, file: &'static str },

    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{path}` is {len} bytes, above the limit of {limit} for this file")]
    TooLarge { path: PathBuf, len: u64, limit: u64 },

    #[error("`{path}`: {detail}")]
    Json { path: PathBuf, detail: String },

    #[error("config.json: `model_type` `{0}` is not supported (supported: llama, mistral, qwen2, internlm2)")]
    UnsupportedModelType(String),

    #[error("config.json: `{key}` = {value} is not supported: {detail}")]
    Unsupported {
        key: &'static str,
        value: String,
        detail: &'static str,
    },

    #[error("config.json: {0}")]
    Config(#[from] ConfigError),

    #[error("`{file}`: {detail}")]
    Tokenizer { file: &'static str, detail: String },
}

/// `dir/file`, which must exist (`MissingFile` otherwise).
pub fn require_file(dir: &std::path::Path, file: &'static str) -> Result<PathBuf, HfError> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(HfError::MissingFile {
            dir: dir.to_path_buf(),
            file,
        })
    }
}

/// Reads a file of at most `limit` bytes (checked before reading).
pub fn read_limited(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, HfError> {
    let io = |source| HfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > limit {
        return Err(HfError::TooLarge {
            path: path.to_path_buf(),
            len,
            limit,
        });
    }
    std::fs::read(path).map_err(io)
}

/// Reads a JSON file of at most `limit` bytes (checked before reading).
pub fn read_json(path: &std::path::Path, limit: u64) -> Result<serde_json::Value, HfError> {
    let bytes = read_limited(path, limit)?;
    serde_json::from_slice(&bytes).map_err(|e| HfError::Json {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}
