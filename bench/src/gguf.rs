//! Sizes a model for the roofline bounds from its GGUF file, read with tessera's own
//! hardened reader (`tessera::model::gguf`): where the tensor data starts, how many bytes
//! of weights a forward pass reads, and how many parameters take part in matmuls.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tessera::model::gguf::{GgufFile, GgufTensorInfo};

use crate::error::BenchError;

/// A model's size as the bounds need it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelSize {
    pub file_bytes: u64,
    /// Bytes of all tensor data (file size − data offset).
    pub tensor_bytes: u64,
    /// Bytes a decode step reads: all tensors, less the token-embedding table when a
    /// separate `output.weight` exists (then only one embedding row is read per token).
    pub weight_bytes_per_token: u64,
    /// Elements of all tensors.
    pub params: u64,
    /// Elements that take part in matmuls: all, less the embedding table when untied.
    pub matmul_params: u64,
}

/// Reads the GGUF file at `path` (header and tensor table; the data is mapped, not read).
pub fn model_size(path: &Path) -> Result<ModelSize, BenchError> {
    let err = |reason: String| BenchError::Gguf {
        path: path.display().to_string(),
        reason,
    };
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .len();
    let file = GgufFile::open(path).map_err(|e| err(e.to_string()))?;
    // The reader checked that every tensor lies inside the file, after the data start.
    let tensor_bytes = file_bytes - file.data_start() as u64;
    let tensors = file.tensors();
    let params: u64 = tensors.iter().map(|t| t.element_count() as u64).sum();
    let has_output = tensors.iter().any(|t| t.name == "output.weight");
    let embd = tensors.iter().find(|t| t.name == "token_embd.weight");
    let (embd_bytes, embd_params) = match (has_output, embd) {
        (true, Some(e)) => (
            tensor_span(tensors, e, tensor_bytes),
            e.element_count() as u64,
        ),
        _ => (0, 0),
    };
    Ok(ModelSize {
        file_bytes,
        tensor_bytes,
        weight_bytes_per_token: tensor_bytes - embd_bytes,
        params,
        matmul_params: params - embd_params,
    })
}

/// Bytes from `t`'s offset to the next tensor's (or the end of the data), padding
/// included.
fn tensor_span(all: &[GgufTensorInfo], t: &GgufTensorInfo, data_len: u64) -> u64 {
    let next = all
        .iter()
        .map(|o| o.offset as u64)
        .filter(|&o| o > t.offset as u64)
        .min()
        .unwrap_or(data_len);
    next - t.offset as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file: a string, an integer and a string-array metadata entry, then two
    /// tensors (token_embd 4×8 f32 and output 4×8 f32) with 32-byte alignment.
    fn tiny_gguf(with_output: bool) -> Vec<u8> {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend_from_slice(&(x.len() as u64).to_le_bytes());
            b.extend_from_slice(x.as_bytes());
        };
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(1 + u64::from(with_output)).to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        s(&mut b, "general.name");
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, "tiny");
        s(&mut b, "general.alignment");
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&32u32.to_le_bytes());
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        s(&mut b, "a");
        s(&mut b, "bc");
        let names: &[&str] = if with_output {
            &["token_embd.weight", "output.weight"]
        } else {
            &["token_embd.weight"]
        };
        for (i, name) in names.iter().enumerate() {
            s(&mut b, name);
            b.extend_from_slice(&2u32.to_le_bytes());
            b.extend_from_slice(&8u64.to_le_bytes());
            b.extend_from_slice(&4u64.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&(i as u64 * 128).to_le_bytes());
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend(std::iter::repeat_n(0u8, 128 * names.len()));
        b
    }

    fn write_tmp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("tessera-bench-{}-{name}.gguf", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn sizes_tied_and_untied_models() {
        let tied = write_tmp("tied", &tiny_gguf(false));
        let m = model_size(&tied).unwrap();
        assert_eq!(
            (
                m.tensor_bytes,
                m.weight_bytes_per_token,
                m.params,
                m.matmul_params
            ),
            (128, 128, 32, 32)
        );
        let untied = write_tmp("untied", &tiny_gguf(true));
        let m = model_size(&untied).unwrap();
        assert_eq!(
            (
                m.tensor_bytes,
                m.weight_bytes_per_token,
                m.params,
                m.matmul_params
            ),
            (256, 128, 64, 32)
        );
        std::fs::remove_file(tied).unwrap();
        std::fs::remove_file(untied).unwrap();
    }

    #[test]
    fn rejects_bad_and_truncated_files() {
        let good = tiny_gguf(true);
        let bad_magic = write_tmp("magic", b"GGUX\x03\0\0\0");
        assert!(model_size(&bad_magic)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let truncated = write_tmp("trunc", &good[..100]);
        assert!(model_size(&truncated).is_err());
        let mut huge = good.clone();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes()); // first key length
        let huge = write_tmp("huge", &huge);
        let msg = model_size(&huge).unwrap_err().to_string();
        assert!(msg.contains("remain in the file"), "{msg}");
        for p in [bad_magic, truncated, huge] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
