//! Reads just enough of a GGUF file to size a model for the roofline bounds: where the
//! tensor data starts, how many bytes of weights a forward pass reads, and how many
//! parameters take part in matmuls.
//!
//! Layout (GGUF v2/v3, little-endian): magic `GGUF`, u32 version, u64 tensor count, u64
//! metadata count, the metadata key/values, the tensor infos (name, dims, type, offset),
//! then the tensor data at the next multiple of `general.alignment` (default 32).
//! Invariant: every length read from the file is checked against the file's size before
//! anything is allocated for it.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

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

struct TensorInfo {
    name: String,
    elements: u64,
    offset: u64,
}

/// A little-endian reader that counts the bytes it consumed.
struct Reader<R: Read> {
    inner: R,
    file_len: u64,
    pos: u64,
}

impl<R: Read> Reader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.exact(&mut b)?;
        Ok(b)
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    /// A length-prefixed string (lossy UTF-8).
    fn string(&mut self) -> Result<String, String> {
        let len = self.u64().map_err(|e| e.to_string())?;
        if len > self.file_len {
            return Err(format!("string length {len} exceeds the file size"));
        }
        let mut buf = vec![0u8; len as usize];
        self.exact(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut self.inner.by_ref().take(n), &mut std::io::sink())?;
        self.pos += copied;
        if copied == n {
            Ok(())
        } else {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        }
    }

    /// Skips one metadata value of GGUF type `ty`; returns it when it is an integer.
    fn value(&mut self, ty: u32, depth: u32) -> Result<Option<u64>, String> {
        let io = |e: std::io::Error| e.to_string();
        let fixed = match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        if let Some(size) = fixed {
            let mut b = [0u8; 8];
            self.exact(&mut b[..size]).map_err(io)?;
            let int = matches!(ty, 0 | 2 | 4 | 10).then(|| u64::from_le_bytes(b));
            return Ok(int);
        }
        match ty {
            8 => self.string().map(|_| None),
            9 if depth == 0 => {
                let elem = self.u32().map_err(io)?;
                let n = self.u64().map_err(io)?;
                if n > self.file_len {
                    return Err(format!("array length {n} exceeds the file size"));
                }
                match elem {
                    0 | 1 | 7 => self.skip(n),
                    2 | 3 => self.skip(n * 2),
                    4..=6 => self.skip(n * 4),
                    10..=12 => self.skip(n * 8),
                    _ => {
                        for _ in 0..n {
                            self.value(elem, depth + 1)?;
                        }
                        Ok(())
                    }
                }
                .map_err(io)?;
                Ok(None)
            }
            _ => Err(format!("unknown metadata value type {ty}")),
        }
    }
}

/// Reads the header of the GGUF file at `path`.
pub fn model_size(path: &Path) -> Result<ModelSize, BenchError> {
    let err = |reason: String| BenchError::Gguf {
        path: path.display().to_string(),
        reason,
    };
    let file = File::open(path).map_err(|e| err(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let mut r = Reader {
        inner: BufReader::new(file),
        file_len,
        pos: 0,
    };
    let (tensors, data_start) = read_header(&mut r).map_err(err)?;
    if data_start > file_len || tensors.iter().any(|t| t.offset > file_len - data_start) {
        return Err(err(format!(
            "tensor data runs past the end of the file ({file_len} bytes)"
        )));
    }
    let tensor_bytes = file_len - data_start;
    let params: u64 = tensors.iter().map(|t| t.elements).sum();
    let has_output = tensors.iter().any(|t| t.name == "output.weight");
    let embd = tensors.iter().find(|t| t.name == "token_embd.weight");
    let (embd_bytes, embd_params) = match (has_output, embd) {
        (true, Some(e)) => (tensor_span(&tensors, e, tensor_bytes), e.elements),
        _ => (0, 0),
    };
    Ok(ModelSize {
        file_bytes: file_len,
        tensor_bytes,
        weight_bytes_per_token: tensor_bytes - embd_bytes,
        params,
        matmul_params: params - embd_params,
    })
}

/// Bytes from `t`'s offset to the next tensor's (or the end of the data).
fn tensor_span(all: &[TensorInfo], t: &TensorInfo, data_len: u64) -> u64 {
    let next = all
        .iter()
        .map(|o| o.offset)
        .filter(|&o| o > t.offset)
        .min()
        .unwrap_or(data_len);
    next - t.offset
}

/// Tensor infos and the absolute offset of the tensor data.
fn read_header<R: Read>(r: &mut Reader<R>) -> Result<(Vec<TensorInfo>, u64), String> {
    let io = |e: std::io::Error| format!("truncated header: {e}");
    if &r.bytes::<4>().map_err(io)? != b"GGUF" {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = r.u32().map_err(io)?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (2 or 3 expected)"
        ));
    }
    let n_tensors = r.u64().map_err(io)?;
    let n_kv = r.u64().map_err(io)?;
    if n_tensors > r.file_len || n_kv > r.file_len {
        return Err(format!(
            "implausible counts: {n_tensors} tensors, {n_kv} metadata entries"
        ));
    }
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32().map_err(io)?;
        if let Some(v) = r.value(ty, 0)? {
            if key == "general.alignment" && v > 0 {
                alignment = v;
            }
        }
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32().map_err(io)?;
        if n_dims > 8 {
            return Err(format!("tensor `{name}` has {n_dims} dimensions"));
        }
        let mut elements = 1u64;
        for _ in 0..n_dims {
            elements = elements.saturating_mul(r.u64().map_err(io)?);
        }
        let _ggml_type = r.u32().map_err(io)?;
        let offset = r.u64().map_err(io)?;
        tensors.push(TensorInfo {
            name,
            elements,
            offset,
        });
    }
    let data_start = r.pos.div_ceil(alignment) * alignment;
    Ok((tensors, data_start))
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
        assert!(model_size(&huge)
            .unwrap_err()
            .to_string()
            .contains("exceeds"));
        for p in [bad_magic, truncated, huge] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
