//! `SafetensorsError`: every way a safetensors file (or a folder of shards) is rejected.
//!
//! Invariant: each message names the file, the tensor or header field, the rule it broke
//! and the value the file gave, so a truncated download reads differently from a hostile
//! header.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("cannot read safetensors file `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "`{path}` is {len} bytes long; a safetensors file needs at least 8 (the header length)"
    )]
    TooShort { path: PathBuf, len: u64 },

    #[error("`{path}`: header length is {header_len} bytes, above the limit of {limit}")]
    HeaderTooLarge {
        path: PathBuf,
        header_len: u64,
        limit: u64,
    },

    #[error("`{path}`: header length is {header_len} bytes, but only {available} bytes follow the length field (truncated or corrupt)")]
    HeaderBeyondFile {
        path: PathBuf,
        header_len: u64,
        available: u64,
    },

    #[error("`{path}`: the header is not a valid JSON object: {detail}")]
    HeaderJson { path: PathBuf, detail: String },

    #[error("`{path}`: tensor `{name}` appears twice in the header")]
    DuplicateTensor { path: PathBuf, name: String },

    #[error("`{path}`: header entry `{name}`: {detail}")]
    Entry {
        path: PathBuf,
        name: String,
        detail: String,
    },

    #[error("`{path}`: tensor `{name}` ({dtype} {shape:?}) needs {expected} bytes, but its data_offsets span {got}")]
    SizeMismatch {
        path: PathBuf,
        name: String,
        dtype: &'static str,
        shape: Vec<usize>,
        expected: u64,
        got: u64,
    },

    #[error("`{path}`: tensor `{name}` ends at data offset {end}, but the data section has only {data_len} bytes")]
    OutOfBounds {
        path: PathBuf,
        name: String,
        end: u64,
        data_len: u64,
    },

    #[error("`{path}`: tensors `{first}` and `{second}` overlap (data offset {at})")]
    Overlap {
        path: PathBuf,
        first: String,
        second: String,
        at: u64,
    },

    #[error(
        "`{path}`: data bytes {start}..{end} belong to no tensor (the format allows no holes)"
    )]
    Gap { path: PathBuf, start: u64, end: u64 },

    #[error("`{path}`: {detail}")]
    Index { path: PathBuf, detail: String },

    #[error("folder `{dir}` has no *.safetensors file")]
    NoShards { dir: PathBuf },

    #[error("tensor `{name}` is in both `{first}` and `{second}`")]
    DuplicateAcrossShards {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },

    #[error("tensor `{name}` is not in the checkpoint{}", hint_for(.name))]
    MissingTensor { name: String },

    #[error("tensor `{name}` has dtype {dtype}; tessera loads F32, F16 and BF16 weights")]
    UnsupportedDtype { name: String, dtype: &'static str },
}

fn hint_for(name: &str) -> String {
    if name == "lm_head.weight" {
        " (set `tie_word_embeddings: true` in config.json if the LM head shares the embedding)"
            .to_string()
    } else {
        String::new()
    }
}
