//! `GgufError`: every way a GGUF file can be rejected, and every way a typed metadata
//! lookup can fail.
//!
//! Invariant: each message names the field (key, tensor or header field), the limit it
//! broke and the value the file gave, so a user can tell a truncated download from an
//! unsupported quantization without a debugger.

use std::path::PathBuf;

use super::dtype::ggml_type_name;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read GGUF file `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("not a GGUF file: magic is {found:02x?} ({}), expected \"GGUF\"", String::from_utf8_lossy(.found))]
    BadMagic { found: [u8; 4] },

    #[error("GGUF version {version} is not supported: tessera reads versions 2 and 3{}", version_hint(*.version))]
    UnsupportedVersion { version: u32 },

    #[error("{field} needs {needed} bytes at offset {offset}, but only {remaining} bytes remain in the file (truncated or corrupt)")]
    Truncated {
        field: String,
        offset: u64,
        needed: u64,
        remaining: u64,
    },

    #[error("header field `{field}` is {count}, but the {remaining} bytes left in the file can hold at most {max} entries of at least {min_entry_bytes} bytes each")]
    CountTooLarge {
        field: &'static str,
        count: u64,
        max: u64,
        min_entry_bytes: u64,
        remaining: u64,
    },

    #[error("{field} is {len} bytes long, above the limit of {limit}")]
    StringTooLong { field: String, len: u64, limit: u64 },

    #[error("{field} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { field: String, offset: u64 },

    #[error("array `{key}` has {len} elements of type {elem_type}, but the {remaining} bytes left in the file can hold at most {max}")]
    ArrayTooLong {
        key: String,
        len: u64,
        elem_type: &'static str,
        max: u64,
        remaining: u64,
    },

    #[error("array `{key}` nests arrays {depth} deep; the limit is {limit}")]
    ArrayTooDeep {
        key: String,
        depth: usize,
        limit: usize,
    },

    #[error("metadata holds more than {limit} values in total (reached at key `{key}`)")]
    MetadataTooLarge { key: String, limit: u64 },

    #[error(
        "metadata key `{key}` has unknown GGUF value type id {type_id} (valid ids are 0..=12)"
    )]
    UnknownValueType { key: String, type_id: u32 },

    #[error("metadata key `{key}` holds a bool byte {byte}; only 0 and 1 are valid")]
    InvalidBool { key: String, byte: u8 },

    #[error("{}: header field `kv_count` is {kv_count}, but the file holds {found} metadata pairs before its tensor table (at offset {offset}); the header is corrupt", if .found > .kv_count { "metadata is missing from the header's count" } else { "metadata is missing" })]
    MetadataCountMismatch {
        kv_count: u64,
        found: u64,
        offset: u64,
    },

    #[error("metadata key #{index} is empty")]
    EmptyKey { index: u64 },

    #[error("metadata key `{key}` appears more than once")]
    DuplicateKey { key: String },

    #[error("tensor name `{name}` appears more than once")]
    DuplicateTensor { name: String },

    #[error("`general.alignment` must be a u32, but the file stores a {found}")]
    AlignmentType { found: &'static str },

    #[error("`general.alignment` must be a non-zero power of two. Given: {value}")]
    InvalidAlignment { value: u32 },

    #[error("tensor `{name}` has {n_dims} dimensions; tessera accepts 1..=4")]
    InvalidDimCount { name: String, n_dims: u32 },

    #[error("tensor `{name}` dimension {index} is {value}; every dimension must be >= 1 and fit in usize")]
    InvalidDim {
        name: String,
        index: usize,
        value: u64,
    },

    #[error("tensor `{name}` shape {dims:?} overflows when computing its {what}")]
    ShapeOverflow {
        name: String,
        dims: Vec<usize>,
        what: &'static str,
    },

    #[error("tensor `{name}` has ggml type {type_id} ({}), which tessera does not support", ggml_type_name(*.type_id))]
    UnsupportedTensorType { name: String, type_id: u32 },

    #[error("tensor `{name}` of type {dtype} has rows of {row_len} elements, not a multiple of the block size {block_size}")]
    RowNotBlockMultiple {
        name: String,
        dtype: &'static str,
        row_len: usize,
        block_size: usize,
    },

    #[error("tensor `{name}` data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: usize,
    },

    #[error("tensor `{name}` data [{offset}, {offset} + {size_bytes}) relative to data start {data_start} ends past the end of the {file_len}-byte file")]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        size_bytes: usize,
        data_start: usize,
        file_len: usize,
    },

    #[error("tensors `{first}` and `{second}` overlap: `{first}` ends at data offset {first_end}, `{second}` starts at {second_start}")]
    OverlappingTensors {
        first: String,
        second: String,
        first_end: usize,
        second_start: usize,
    },

    #[error("cannot allocate room for {count} entries of {what}")]
    AllocationFailed { what: String, count: u64 },

    #[error("metadata key `{key}` is missing")]
    MissingKey { key: String },

    #[error("metadata key `{key}` must be {expected}, but the file stores a {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },

    #[error("metadata key `{key}` must fit in {expected}. Given: {value}")]
    ValueOutOfRange {
        key: String,
        expected: &'static str,
        value: String,
    },

    #[error("tensor `{name}` is missing from the GGUF file")]
    MissingTensor { name: String },
}

/// Extra words for versions that are likely a known mistake rather than a future format.
fn version_hint(version: u32) -> &'static str {
    if version == 1 {
        " (GGUF v1 is obsolete; re-convert the model with a current llama.cpp)"
    } else if version != 0 && version & 0xFFFF == 0 {
        " (this looks like a big-endian file; only little-endian GGUF is supported)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_files_cross_threads() {
        fn check<T: Send + Sync + 'static>() {}
        check::<GgufError>();
        check::<super::super::GgufFile>();
    }

    #[test]
    fn version_messages_explain_likely_causes() {
        let v1 = GgufError::UnsupportedVersion { version: 1 }.to_string();
        assert!(v1.contains("version 1") && v1.contains("obsolete"), "{v1}");
        let swapped = GgufError::UnsupportedVersion {
            version: 0x0300_0000,
        };
        assert!(swapped.to_string().contains("big-endian"));
        let v99 = GgufError::UnsupportedVersion { version: 99 }.to_string();
        assert_eq!(
            v99,
            "GGUF version 99 is not supported: tessera reads versions 2 and 3"
        );
    }
}
