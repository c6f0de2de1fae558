//! Tensor infos: decoding one entry of the tensor table (type ids through `dtype`) and
//! validating the data layout of the whole table.
//!
//! Invariants of every `GgufTensorInfo` that leaves this module (after `validate_layout`):
//! 1..=4 dims, each >= 1, `dims[0]` a multiple of the type's block size,
//! `size_bytes == nelem / block_size * type_size` (no overflow), `offset` a multiple of the
//! alignment, `data_start + offset + size_bytes <= file_len`, and no two tensors overlap.

use candle_core::quantized::GgmlDType;

use super::dtype::{dtype_from_ggml_id, dtype_name};
use super::error::GgufError;
use super::reader::{Cursor, Named};

/// Most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
pub(crate) const MAX_DIMS: u32 = 4;
/// Fewest bytes one tensor-table entry occupies: name length (u64), n_dims (u32), one dim
/// (u64), type id (u32), offset (u64).
pub(crate) const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// Where one tensor lives in the file and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (row length), e.g. `[hidden, vocab]` for
    /// `token_embd.weight`.
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    /// Byte offset from the start of the data section.
    pub offset: usize,
    /// Bytes of data: `nelem / block_size * type_size`.
    pub size_bytes: usize,
}

impl GgufTensorInfo {
    /// Number of elements (product of `dims`; cannot overflow, checked at open).
    pub fn element_count(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Reads and checks entry `index` of the tensor table (layout is checked later, once all
/// entries and the data start are known).
pub(crate) fn read_tensor_info(
    cursor: &mut Cursor<'_>,
    index: u64,
) -> Result<GgufTensorInfo, GgufError> {
    let name = cursor
        .str()
        .named(|| format!("name of tensor #{index}"))?
        .to_owned();
    let n_dims = cursor
        .u32()
        .named(|| format!("n_dims of tensor `{name}`"))?;
    if !(1..=MAX_DIMS).contains(&n_dims) {
        return Err(GgufError::InvalidDimCount { name, n_dims });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for dim_index in 0..n_dims as usize {
        let raw = cursor
            .u64()
            .named(|| format!("dimension {dim_index} of tensor `{name}`"))?;
        match usize::try_from(raw) {
            Ok(dim) if dim >= 1 => dims.push(dim),
            _ => {
                return Err(GgufError::InvalidDim {
                    name,
                    index: dim_index,
                    value: raw,
                })
            }
        }
    }
    let type_id = cursor
        .u32()
        .named(|| format!("ggml type of tensor `{name}`"))?;
    let raw_offset = cursor
        .u64()
        .named(|| format!("data offset of tensor `{name}`"))?;
    let Some(dtype) = dtype_from_ggml_id(type_id) else {
        return Err(GgufError::UnsupportedTensorType { name, type_id });
    };
    let size_bytes = tensor_size_bytes(&name, &dims, dtype)?;
    let Ok(offset) = usize::try_from(raw_offset) else {
        return Err(GgufError::TensorOutOfBounds {
            name,
            offset: raw_offset,
            size_bytes,
            data_start: 0,
            file_len: cursor.pos() + cursor.remaining(),
        });
    };
    Ok(GgufTensorInfo {
        name,
        dims,
        dtype,
        offset,
        size_bytes,
    })
}

/// `nelem / block_size * type_size`, with the row length checked against the block size
/// and every product checked for overflow.
fn tensor_size_bytes(name: &str, dims: &[usize], dtype: GgmlDType) -> Result<usize, GgufError> {
    let overflow = |what| GgufError::ShapeOverflow {
        name: name.to_owned(),
        dims: dims.to_vec(),
        what,
    };
    let element_count = dims
        .iter()
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
        .ok_or_else(|| overflow("element count"))?;
    let block_size = dtype.block_size();
    let row_len = dims.first().copied().unwrap_or(1);
    if row_len % block_size != 0 {
        return Err(GgufError::RowNotBlockMultiple {
            name: name.to_owned(),
            dtype: dtype_name(dtype),
            row_len,
            block_size,
        });
    }
    (element_count / block_size)
        .checked_mul(dtype.type_size())
        .ok_or_else(|| overflow("size in bytes"))
}

/// Checks alignment, bounds and overlap of every tensor's data. `data_start` is the
/// absolute file offset of the data section; offsets in `tensors` are relative to it.
pub(crate) fn validate_layout(
    tensors: &[GgufTensorInfo],
    alignment: usize,
    data_start: usize,
    file_len: usize,
) -> Result<(), GgufError> {
    for info in tensors {
        if info.offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                name: info.name.clone(),
                offset: info.offset as u64,
                alignment,
            });
        }
        let end = data_start
            .checked_add(info.offset)
            .and_then(|start| start.checked_add(info.size_bytes));
        if end.is_none_or(|end| end > file_len) {
            return Err(GgufError::TensorOutOfBounds {
                name: info.name.clone(),
                offset: info.offset as u64,
                size_bytes: info.size_bytes,
                data_start,
                file_len,
            });
        }
    }
    let mut by_offset: Vec<&GgufTensorInfo> = tensors.iter().collect();
    by_offset.sort_unstable_by_key(|info| info.offset);
    for pair in by_offset.windows(2) {
        let (first, second) = (pair[0], pair[1]);
        // In bounds (checked above), so this sum cannot overflow.
        let first_end = first.offset + first.size_bytes;
        if first_end > second.offset {
            return Err(GgufError::OverlappingTensors {
                first: first.name.clone(),
                second: second.name.clone(),
                first_end,
                second_start: second.offset,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_type_message_names_the_type() {
        let err = GgufError::UnsupportedTensorType {
            name: "blk.0.ffn_up.weight".into(),
            type_id: 20,
        };
        assert_eq!(
            err.to_string(),
            "tensor `blk.0.ffn_up.weight` has ggml type 20 (IQ4_NL), which tessera does not support"
        );
    }

    #[test]
    fn size_is_blocks_times_block_bytes() {
        assert_eq!(
            tensor_size_bytes("t", &[64, 3], GgmlDType::Q4_1).ok(),
            Some(2 * 3 * 20)
        );
        let err = tensor_size_bytes("t", &[48, 3], GgmlDType::Q4_1).unwrap_err();
        assert!(matches!(
            err,
            GgufError::RowNotBlockMultiple { row_len: 48, .. }
        ));
        let err = tensor_size_bytes("t", &[usize::MAX, 2], GgmlDType::F32).unwrap_err();
        assert!(matches!(
            err,
            GgufError::ShapeOverflow {
                what: "element count",
                ..
            }
        ));
        let err = tensor_size_bytes("t", &[usize::MAX / 2], GgmlDType::F32).unwrap_err();
        assert!(matches!(
            err,
            GgufError::ShapeOverflow {
                what: "size in bytes",
                ..
            }
        ));
    }
}
