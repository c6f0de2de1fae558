//! Hardened safetensors reader: one file (`SafetensorsFile`) or a sharded checkpoint
//! folder (`Checkpoint`, in `shards.rs`).
//!
//! Layout of a file: u64 little-endian header length `N`, `N` bytes of JSON header, then
//! the data section. A `SafetensorsFile` owns the bytes (a read-only mmap, or a `Vec` for
//! tests) and the validated header. Invariants once `open`/`from_bytes` returns `Ok`:
//! - `N` ≤ 100 MB (the reference implementation's limit) and `8 + N` ≤ file length;
//! - every tensor's dtype is known, its byte length is exactly elements × dtype size,
//!   and its range lies in the data section; the ranges tile the section with no
//!   overlap and no hole (see `header.rs`), so `data` is a plain slice;
//! - tensor names are unique.
//!
//! Hostile input gives a `SafetensorsError`, never a panic; no allocation is sized by a
//! number read from the file.

mod error;
mod header;
mod shards;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use error::SafetensorsError;
pub use header::METADATA_KEY;
pub use shards::{Checkpoint, INDEX_FILE};

use candle_core::quantized::GgmlDType;

/// Longest header accepted, in bytes (the reference implementation's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Element types the format defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E4M3,
    F8E5M2,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

const DTYPES: [(Dtype, &str, usize); 15] = [
    (Dtype::Bool, "BOOL", 1),
    (Dtype::U8, "U8", 1),
    (Dtype::I8, "I8", 1),
    (Dtype::F8E4M3, "F8_E4M3", 1),
    (Dtype::F8E5M2, "F8_E5M2", 1),
    (Dtype::I16, "I16", 2),
    (Dtype::U16, "U16", 2),
    (Dtype::F16, "F16", 2),
    (Dtype::BF16, "BF16", 2),
    (Dtype::I32, "I32", 4),
    (Dtype::U32, "U32", 4),
    (Dtype::F32, "F32", 4),
    (Dtype::F64, "F64", 8),
    (Dtype::I64, "I64", 8),
    (Dtype::U64, "U64", 8),
];

impl Dtype {
    /// The dtype a header names (`"BF16"`, `"F32"`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        DTYPES.iter().find(|d| d.1 == name).map(|d| d.0)
    }

    pub fn name(self) -> &'static str {
        DTYPES.iter().find(|d| d.0 == self).map_or("?", |d| d.1)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        DTYPES.iter().find(|d| d.0 == self).map_or(1, |d| d.2)
    }

    /// The ggml type with the same element layout, for the types weights may have.
    pub fn ggml(self) -> Option<GgmlDType> {
        match self {
            Dtype::F32 => Some(GgmlDType::F32),
            Dtype::F16 => Some(GgmlDType::F16),
            Dtype::BF16 => Some(GgmlDType::BF16),
            _ => None,
        }
    }
}

/// One tensor of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major, outermost dimension first (`[out_features, in_features]` for a linear).
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub range: Range<usize>,
}

/// The bytes of the file: mapped read-only, or owned.
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }
}

/// A parsed, validated safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    storage: Storage,
    data_start: usize,
    tensors: Vec<TensorInfo>,
    /// tensor name → index into `tensors`.
    by_name: HashMap<String, usize>,
    metadata: Vec<(String, String)>,
}

impl SafetensorsFile {
    /// Maps `path` read-only and validates it.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let io_error = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        if len < 8 {
            // Also keeps zero-length files away from mmap, which rejects them.
            return Err(SafetensorsError::TooShort {
                path: path.to_path_buf(),
                len,
            });
        }
        // SAFETY: the map is read-only and private to this process. Like every mmap-based
        // model loader we rely on nobody truncating or rewriting the weights while they
        // are loaded; the parse bounds-checks every access against the mapped length.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
        Self::parse(path.to_path_buf(), Storage::Mapped(map))
    }

    /// Validates a file held in memory; `path` only names it in errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, SafetensorsError> {
        Self::parse(path.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Self, SafetensorsError> {
        let bytes = storage.bytes();
        let file_len = bytes.len() as u64;
        let Some(len_field) = bytes.get(..8) else {
            return Err(SafetensorsError::TooShort {
                path,
                len: file_len,
            });
        };
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(len_field);
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_LEN {
            return Err(SafetensorsError::HeaderTooLarge {
                path,
                header_len,
                limit: MAX_HEADER_LEN,
            });
        }
        if header_len > file_len - 8 {
            return Err(SafetensorsError::HeaderBeyondFile {
                path,
                header_len,
                available: file_len - 8,
            });
        }
        // header_len ≤ file_len - 8, so these fit a usize.
        let data_start = 8 + header_len as usize;
        let parsed = header::parse(&path, &bytes[8..data_start], file_len - data_start as u64)?;
        let by_name = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path,
            storage,
            data_start,
            tensors: parsed.tensors,
            by_name,
            metadata: parsed.metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors in header order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The `__metadata__` pairs (e.g. `format: pt`).
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// The raw little-endian bytes of a tensor. `info` must come from this file's
    /// `tensors()`; an info whose range does not fit this file yields an empty slice.
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_start.checked_add(info.range.start);
        let end = self.data_start.checked_add(info.range.end);
        match (start, end) {
            (Some(start), Some(end)) => self.storage.bytes().get(start..end).unwrap_or(&[]),
            _ => &[],
        }
    }
}

impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors_len", &self.tensors.len())
            .field("data_start", &self.data_start)
            .field("file_len", &self.storage.bytes().len())
            .finish()
    }
}
