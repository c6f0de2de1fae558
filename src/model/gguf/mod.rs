//! Hardened GGUF v2/v3 reader: header, metadata, tensor table, data section.
//!
//! A `GgufFile` owns the file bytes (a read-only mmap, or a `Vec` for tests) and the
//! decoded header. Invariants once `open`/`from_bytes` returns `Ok`:
//! - magic was `GGUF` and the version 2 or 3 (little-endian);
//! - metadata keys are non-empty, unique, in file order; tensor names are unique;
//! - `general.alignment`, if present, was a u32 power of two (default 32);
//! - every tensor's data range is aligned, inside the file and disjoint from the others,
//!   so `tensor_data` is a plain slice.
//!
//! Hostile input gives a `GgufError`, never a panic: every count and length read from the
//! file is checked against the bytes left before anything is allocated for it (see
//! `reader.rs`, `value.rs`). Layout of the format: magic, u32 version, u64 tensor_count,
//! u64 kv_count, kv pairs, tensor infos, padding to `alignment`, tensor data.

mod access;
mod dtype;
mod error;
mod reader;
mod tensor;
mod value;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

pub use candle_core::quantized::GgmlDType;
pub use dtype::{dominant_dtype, dtype_from_ggml_id, dtype_name, ggml_type_name};
pub use error::GgufError;
pub use tensor::GgufTensorInfo;
pub use value::GgufValue;

use reader::{Cursor, Named};
use tensor::{read_tensor_info, validate_layout, MIN_TENSOR_INFO_BYTES};
use value::ValueReader;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
const ALIGNMENT_KEY: &str = "general.alignment";
/// Longest metadata key accepted (the GGUF spec caps keys at 65535 bytes).
const MAX_KEY_LEN: u64 = 65_535;
/// Fewest bytes one kv pair occupies: key length (u64), one key byte, value type (u32),
/// one value byte.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;

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

/// A parsed, validated GGUF file.
pub struct GgufFile {
    storage: Storage,
    header: Header,
}

/// Everything decoded from the bytes before the data section.
struct Header {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    /// key → index into `metadata`.
    key_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    /// tensor name → index into `tensors`.
    tensor_index: HashMap<String, usize>,
    alignment: usize,
    /// Absolute file offset where tensor data begins (aligned end of the header).
    data_start: usize,
}

impl GgufFile {
    /// Maps `path` read-only and parses it.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io_error = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_error)?;
        // SAFETY: the map is read-only and private to this process. Like every mmap-based
        // model loader we rely on nobody truncating or rewriting the model file while it
        // is served; the parse itself bounds-checks every access against the mapped length.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
        Self::parse(Storage::Mapped(map))
    }

    /// Parses a GGUF file held in memory (tests, fixtures).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<Self, GgufError> {
        let header = parse_header(storage.bytes())?;
        Ok(GgufFile { storage, header })
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// All metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.header.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        let index = *self.header.key_index.get(key)?;
        self.header.metadata.get(index).map(|(_, value)| value)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.header.tensors
    }

    pub fn tensor(&self, name: &str) -> Result<&GgufTensorInfo, GgufError> {
        self.header
            .tensor_index
            .get(name)
            .and_then(|&index| self.header.tensors.get(index))
            .ok_or_else(|| GgufError::MissingTensor {
                name: name.to_owned(),
            })
    }

    /// The raw bytes of a tensor (`info.size_bytes` long). `info` must come from this
    /// file's `tensors()`, whose ranges were validated at open; an info from another file
    /// whose range does not fit this one yields an empty slice rather than a panic.
    pub fn tensor_data(&self, info: &GgufTensorInfo) -> &[u8] {
        let bytes = self.storage.bytes();
        self.header
            .data_start
            .checked_add(info.offset)
            .and_then(|start| Some(start..start.checked_add(info.size_bytes)?))
            .and_then(|range| bytes.get(range))
            .unwrap_or(&[])
    }

    /// Data alignment in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.header.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_start(&self) -> usize {
        self.header.data_start
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.header.version)
            .field("metadata_len", &self.header.metadata.len())
            .field("tensors_len", &self.header.tensors.len())
            .field("alignment", &self.header.alignment)
            .field("data_start", &self.header.data_start)
            .field("file_len", &self.storage.bytes().len())
            .finish()
    }
}

fn parse_header(bytes: &[u8]) -> Result<Header, GgufError> {
    let mut cursor = Cursor::new(bytes);
    let magic = cursor.take(4).named(|| "magic".into())?;
    if magic != GGUF_MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(GgufError::BadMagic { found });
    }
    let version = cursor.u32().named(|| "version".into())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let tensor_count = cursor.u64().named(|| "tensor_count".into())?;
    let kv_count = cursor.u64().named(|| "kv_count".into())?;
    let remaining = cursor.remaining() as u64;
    check_count(
        "tensor_count",
        tensor_count,
        MIN_TENSOR_INFO_BYTES,
        remaining,
    )?;
    // The tensor table's minimum size is reserved, so kv pairs must fit in the rest.
    let left_for_kv = remaining - tensor_count * MIN_TENSOR_INFO_BYTES;
    check_count("kv_count", kv_count, MIN_KV_BYTES, left_for_kv)?;

    let meta_start = cursor.pos();
    let miscounted =
        |err| miscounted_metadata(bytes, meta_start, kv_count, tensor_count).unwrap_or(err);
    let (metadata, key_index) = read_metadata(&mut cursor, kv_count).map_err(miscounted)?;
    let alignment = alignment_of(&metadata, &key_index)?;
    let (tensors, tensor_index) =
        read_tensor_table(&mut cursor, tensor_count).map_err(miscounted)?;
    let data_start = cursor
        .pos()
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| GgufError::Truncated {
            field: "padding before the data section".into(),
            offset: cursor.pos() as u64,
            needed: alignment as u64,
            remaining: cursor.remaining() as u64,
        })?;
    validate_layout(&tensors, alignment, data_start, bytes.len())?;
    Ok(Header {
        version,
        metadata,
        key_index,
        tensors,
        tensor_index,
        alignment,
        data_start,
    })
}

/// `count` entries of at least `min_entry_bytes` each must fit in `remaining` bytes.
fn check_count(
    field: &'static str,
    count: u64,
    min_entry_bytes: u64,
    remaining: u64,
) -> Result<(), GgufError> {
    let max = remaining / min_entry_bytes;
    if count > max {
        return Err(GgufError::CountTooLarge {
            field,
            count,
            max,
            min_entry_bytes,
            remaining,
        });
    }
    Ok(())
}

/// A vector and a name → index map with room for `count` entries, reserved fallibly.
/// `count` has already been bounded by the bytes left in the file.
fn reserve_indexed<T>(
    count: u64,
    what: &str,
) -> Result<(Vec<T>, HashMap<String, usize>), GgufError> {
    let failed = || GgufError::AllocationFailed {
        what: what.to_owned(),
        count,
    };
    let count = usize::try_from(count).map_err(|_| failed())?;
    let mut items = Vec::new();
    items.try_reserve_exact(count).map_err(|_| failed())?;
    let mut index = HashMap::new();
    index.try_reserve(count).map_err(|_| failed())?;
    Ok((items, index))
}

type Metadata = (Vec<(String, GgufValue)>, HashMap<String, usize>);

fn read_metadata(cursor: &mut Cursor<'_>, kv_count: u64) -> Result<Metadata, GgufError> {
    let (mut metadata, mut key_index) = reserve_indexed(kv_count, "metadata pairs")?;
    let mut values = ValueReader::new();
    for index in 0..kv_count {
        let key = cursor
            .str()
            .named(|| format!("key of metadata pair #{index}"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index });
        }
        if key.len() as u64 > MAX_KEY_LEN {
            return Err(GgufError::StringTooLong {
                field: format!("key of metadata pair #{index}"),
                len: key.len() as u64,
                limit: MAX_KEY_LEN,
            });
        }
        if key_index.contains_key(key) {
            return Err(GgufError::DuplicateKey {
                key: key.to_owned(),
            });
        }
        let type_id = cursor
            .u32()
            .named(|| format!("value type of key `{key}`"))?;
        let value = values.read(cursor, type_id, key)?;
        key_index.insert(key.to_owned(), metadata.len());
        metadata.push((key.to_owned(), value));
    }
    Ok((metadata, key_index))
}

fn alignment_of(
    metadata: &[(String, GgufValue)],
    key_index: &HashMap<String, usize>,
) -> Result<usize, GgufError> {
    let Some(&index) = key_index.get(ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match metadata.get(index).map(|(_, value)| value) {
        Some(GgufValue::U32(value)) if value.is_power_of_two() => Ok(*value as usize),
        Some(GgufValue::U32(value)) => Err(GgufError::InvalidAlignment { value: *value }),
        Some(other) => Err(GgufError::AlignmentType {
            found: other.type_name(),
        }),
        None => Ok(DEFAULT_ALIGNMENT),
    }
}

/// When the metadata or the tensor table cannot be read, the header's `kv_count` may be
/// wrong (0 in a file whose count was zeroed): reading a metadata pair as a tensor, or a
/// tensor as a metadata pair, gives a misleading message ("tensor `general.architecture`
/// has 8 dimensions"). This rescans the pairs from `meta_start` and returns the error that
/// names the real problem when the whole tensor table reads cleanly after some other
/// number of pairs; `None` when no pair count explains the file.
fn miscounted_metadata(
    bytes: &[u8],
    meta_start: usize,
    kv_count: u64,
    tensor_count: u64,
) -> Option<GgufError> {
    if tensor_count == 0 {
        return None; // an empty table reads anywhere: nothing to tell the counts apart
    }
    let mut cursor = Cursor::new(bytes);
    cursor.take(meta_start as u64).ok()?;
    let mut values = ValueReader::new();
    for found in 0u64.. {
        if found != kv_count && read_tensor_table(&mut cursor.clone(), tensor_count).is_ok() {
            return Some(GgufError::MetadataCountMismatch {
                kv_count,
                found,
                offset: cursor.pos() as u64,
            });
        }
        let key = cursor.str().ok().filter(|k| !k.is_empty())?;
        let type_id = cursor.u32().ok()?;
        values.read(&mut cursor, type_id, key).ok()?;
    }
    None
}

type TensorTable = (Vec<GgufTensorInfo>, HashMap<String, usize>);

fn read_tensor_table(cursor: &mut Cursor<'_>, tensor_count: u64) -> Result<TensorTable, GgufError> {
    let (mut tensors, mut tensor_index) = reserve_indexed(tensor_count, "tensor infos")?;
    for index in 0..tensor_count {
        let info = read_tensor_info(cursor, index)?;
        if tensor_index.contains_key(&info.name) {
            return Err(GgufError::DuplicateTensor { name: info.name });
        }
        tensor_index.insert(info.name.clone(), tensors.len());
        tensors.push(info);
    }
    Ok((tensors, tensor_index))
}
