//! A checkpoint folder: the tensors of one or more safetensors shards under one name map.
//!
//! Which shards: those named by `model.safetensors.index.json` (`weight_map`: tensor →
//! shard file) when it exists, else every `*.safetensors` file in the folder (sorted).
//!
//! Invariants once `Checkpoint::open_dir` returns `Ok`: every shard passed the
//! `SafetensorsFile` checks; a tensor name occurs in exactly one shard; every
//! `weight_map` entry names a plain file inside the folder (no `/`, no `..`) that holds
//! that tensor.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::{SafetensorsError, SafetensorsFile, TensorInfo};

/// The index file transformers writes next to sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Largest index file read (real ones are well under 1 MB).
const MAX_INDEX_BYTES: u64 = 64 << 20;

#[derive(Deserialize)]
struct IndexJson {
    weight_map: HashMap<String, String>,
}

/// All tensors of a checkpoint folder.
#[derive(Debug)]
pub struct Checkpoint {
    shards: Vec<SafetensorsFile>,
    /// tensor name → (shard index, tensor index in that shard).
    by_name: HashMap<String, (usize, usize)>,
}

impl Checkpoint {
    /// Opens the shards of `dir` (see the module header for which).
    pub fn open_dir(dir: &Path) -> Result<Self, SafetensorsError> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            Self::from_index(dir, &index)
        } else {
            Self::from_files(Self::list_shards(dir)?)
        }
    }

    /// A checkpoint over already opened shards (tests, single files).
    pub fn from_shards(shards: Vec<SafetensorsFile>) -> Result<Self, SafetensorsError> {
        let mut by_name: HashMap<String, (usize, usize)> = HashMap::new();
        for (s, shard) in shards.iter().enumerate() {
            for (t, tensor) in shard.tensors().iter().enumerate() {
                if let Some(&(first, _)) = by_name.get(&tensor.name) {
                    return Err(SafetensorsError::DuplicateAcrossShards {
                        name: tensor.name.clone(),
                        first: shards[first].path().to_path_buf(),
                        second: shard.path().to_path_buf(),
                    });
                }
                by_name.insert(tensor.name.clone(), (s, t));
            }
        }
        Ok(Self { shards, by_name })
    }

    fn from_files(paths: Vec<PathBuf>) -> Result<Self, SafetensorsError> {
        let shards = paths
            .iter()
            .map(|p| SafetensorsFile::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_shards(shards)
    }

    fn list_shards(dir: &Path) -> Result<Vec<PathBuf>, SafetensorsError> {
        let io_error = |source| SafetensorsError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error)? {
            let path = entry.map_err(io_error)?.path();
            if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(SafetensorsError::NoShards {
                dir: dir.to_path_buf(),
            });
        }
        paths.sort();
        Ok(paths)
    }

    fn from_index(dir: &Path, index: &Path) -> Result<Self, SafetensorsError> {
        let bad = |detail: String| SafetensorsError::Index {
            path: index.to_path_buf(),
            detail,
        };
        let weight_map = read_index(index)?;
        let mut files: Vec<&str> = Vec::new();
        for file in weight_map.values() {
            if !is_plain_file_name(file) {
                return Err(bad(format!(
                    "shard name `{file}` must be a file name inside the folder"
                )));
            }
            if !files.contains(&file.as_str()) {
                files.push(file);
            }
        }
        files.sort_unstable();
        if files.is_empty() {
            return Err(bad("`weight_map` is empty".into()));
        }
        let checkpoint = Self::from_files(files.iter().map(|f| dir.join(f)).collect())?;
        for (name, file) in &weight_map {
            let in_shard = checkpoint
                .by_name
                .get(name)
                .map(|&(s, _)| checkpoint.shards[s].path() == dir.join(file));
            if in_shard != Some(true) {
                return Err(bad(format!(
                    "`weight_map` puts tensor `{name}` in `{file}`, which does not hold it"
                )));
            }
        }
        Ok(checkpoint)
    }

    /// The shard holding `name` and the tensor's info there.
    pub fn get(&self, name: &str) -> Option<(&SafetensorsFile, &TensorInfo)> {
        let &(s, t) = self.by_name.get(name)?;
        let shard = self.shards.get(s)?;
        Some((shard, shard.tensors().get(t)?))
    }

    /// Tensor `name` as (info, bytes), or `MissingTensor`.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8]), SafetensorsError> {
        let (shard, info) = self
            .get(name)
            .ok_or_else(|| SafetensorsError::MissingTensor {
                name: name.to_string(),
            })?;
        Ok((info, shard.data(info)))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Every tensor name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }
}

fn read_index(index: &Path) -> Result<HashMap<String, String>, SafetensorsError> {
    let io_error = |source| SafetensorsError::Io {
        path: index.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(index).map_err(io_error)?.len();
    if len > MAX_INDEX_BYTES {
        return Err(SafetensorsError::Index {
            path: index.to_path_buf(),
            detail: format!("is {len} bytes, above the limit of {MAX_INDEX_BYTES}"),
        });
    }
    let text = std::fs::read(index).map_err(io_error)?;
    let parsed: IndexJson = serde_json::from_slice(&text).map_err(|e| SafetensorsError::Index {
        path: index.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(parsed.weight_map)
}

/// `name` is one normal path component (no separators, `.`, `..` or root).
fn is_plain_file_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains(['/', '\\'])
}
