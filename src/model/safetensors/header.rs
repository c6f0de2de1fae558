//! Parsing and validating a safetensors JSON header against the data section after it.
//!
//! Rules enforced (the format's own, as the reference implementation checks them):
//! - the header is one JSON object; `__metadata__` (at most once) maps strings to strings;
//! - every other key is a tensor name, unique, whose value has `dtype` (a known name),
//!   `shape` (non-negative integers) and `data_offsets` `[begin, end]` with begin ≤ end;
//! - elements × dtype size (computed without overflow) equals `end - begin`;
//! - sorted by offset, the tensors tile the data section exactly: no overlap, no hole,
//!   nothing after the last one.
//!
//! Nothing is allocated from a number in the file: entries come from the parsed JSON,
//! whose size is already bounded by the header length limit.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::{Dtype, SafetensorsError, TensorInfo};

/// The header key holding free-form string metadata.
pub const METADATA_KEY: &str = "__metadata__";

/// A validated header: tensors in header order and the string metadata.
pub struct Header {
    pub tensors: Vec<TensorInfo>,
    pub metadata: Vec<(String, String)>,
}

/// The header's top-level entries in file order, duplicates kept (serde_json's `Map`
/// would silently keep only the last of two equal keys).
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// One tensor entry as written in the header.
#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Parses `json` (the header bytes) and checks it against a data section of `data_len`
/// bytes.
pub fn parse(path: &Path, json: &[u8], data_len: u64) -> Result<Header, SafetensorsError> {
    let Entries(entries) =
        serde_json::from_slice(json).map_err(|e| SafetensorsError::HeaderJson {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    let mut tensors = Vec::with_capacity(entries.len());
    let mut metadata = None;
    let mut seen = HashSet::with_capacity(entries.len());
    for (name, value) in entries {
        if !seen.insert(name.clone()) {
            return Err(SafetensorsError::DuplicateTensor {
                path: path.to_path_buf(),
                name,
            });
        }
        if name == METADATA_KEY {
            metadata = Some(parse_metadata(path, value)?);
        } else {
            tensors.push(parse_tensor(path, name, value, data_len)?);
        }
    }
    check_tiling(path, &tensors, data_len)?;
    Ok(Header {
        tensors,
        metadata: metadata.unwrap_or_default(),
    })
}

fn entry_error(path: &Path, name: &str, detail: String) -> SafetensorsError {
    SafetensorsError::Entry {
        path: path.to_path_buf(),
        name: name.to_string(),
        detail,
    }
}

fn parse_metadata(path: &Path, value: Value) -> Result<Vec<(String, String)>, SafetensorsError> {
    let Value::Object(map) = value else {
        return Err(entry_error(
            path,
            METADATA_KEY,
            "must be an object of strings".into(),
        ));
    };
    map.into_iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key, text)),
            other => Err(entry_error(
                path,
                METADATA_KEY,
                format!("value of `{key}` must be a string, found {other}"),
            )),
        })
        .collect()
}

fn parse_tensor(
    path: &Path,
    name: String,
    value: Value,
    data_len: u64,
) -> Result<TensorInfo, SafetensorsError> {
    let raw: RawTensor =
        serde_json::from_value(value).map_err(|e| entry_error(path, &name, e.to_string()))?;
    let dtype = Dtype::from_name(&raw.dtype)
        .ok_or_else(|| entry_error(path, &name, format!("unknown dtype `{}`", raw.dtype)))?;
    let (begin, end) = raw.data_offsets;
    if begin > end {
        let detail = format!("data_offsets [{begin}, {end}] end before they begin");
        return Err(entry_error(path, &name, detail));
    }
    let shape = raw
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| entry_error(path, &name, format!("shape {:?} overflows", raw.shape)))?;
    let expected = raw
        .shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| entry_error(path, &name, format!("shape {:?} overflows", raw.shape)))?;
    if expected != end - begin {
        return Err(SafetensorsError::SizeMismatch {
            path: path.to_path_buf(),
            name,
            dtype: dtype.name(),
            shape,
            expected,
            got: end - begin,
        });
    }
    if end > data_len {
        return Err(SafetensorsError::OutOfBounds {
            path: path.to_path_buf(),
            name,
            end,
            data_len,
        });
    }
    // end ≤ data_len, which came from a usize file length, so both fit a usize.
    let range = begin as usize..end as usize;
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        range,
    })
}

/// Sorted by offset, the tensors must cover `0..data_len` exactly once.
fn check_tiling(
    path: &Path,
    tensors: &[TensorInfo],
    data_len: u64,
) -> Result<(), SafetensorsError> {
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| (t.range.start, t.range.end));
    let mut covered = 0usize;
    let mut last: Option<&TensorInfo> = None;
    for tensor in order {
        let Range { start, end } = tensor.range;
        if start < covered {
            return Err(SafetensorsError::Overlap {
                path: path.to_path_buf(),
                first: last.map(|t| t.name.clone()).unwrap_or_default(),
                second: tensor.name.clone(),
                at: start as u64,
            });
        }
        if start > covered {
            return Err(SafetensorsError::Gap {
                path: path.to_path_buf(),
                start: covered as u64,
                end: start as u64,
            });
        }
        covered = end;
        last = Some(tensor);
    }
    if covered as u64 != data_len {
        return Err(SafetensorsError::Gap {
            path: path.to_path_buf(),
            start: covered as u64,
            end: data_len,
        });
    }
    Ok(())
}
