//! Reading named GGUF tensors into `QMatrix` weights and f32 vectors, with every shape
//! checked against the model config before use.

use super::config::ModelConfig;
use super::gguf::{GgmlDType, GgufError, GgufFile};
use super::layers::{AttentionBlock, DecoderLayer, FusedLinear, Mlp};
use crate::ops::quant::{QMatrix, QuantError};

/// Why weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{name}`: {source}")]
    Quant { name: String, source: QuantError },
    #[error("tensor `{name}` has type {dtype:?}; a norm/bias vector must be F32 or F16")]
    VectorType { name: String, dtype: GgmlDType },
}

/// Typed access to a GGUF file's tensors.
pub struct WeightLoader<'a> {
    file: &'a GgufFile,
}

impl<'a> WeightLoader<'a> {
    pub fn new(file: &'a GgufFile) -> Self {
        Self { file }
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_ok()
    }

    /// A `[rows, cols]` matrix (GGUF dims `[cols, rows]`).
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix, WeightError> {
        let info = self.file.tensor(name)?;
        if info.dims != [cols, rows] {
            return Err(WeightError::Shape {
                name: name.to_string(),
                expected: vec![cols, rows],
                got: info.dims.clone(),
            });
        }
        QMatrix::from_ggml(info.dtype, rows, cols, self.file.tensor_data(info)).map_err(|source| {
            WeightError::Quant {
                name: name.to_string(),
                source,
            }
        })
    }

    /// A 1-D f32 vector of `len` elements (norm weights, biases).
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, WeightError> {
        let info = self.file.tensor(name)?;
        if info.dims != [len] {
            return Err(WeightError::Shape {
                name: name.to_string(),
                expected: vec![len],
                got: info.dims.clone(),
            });
        }
        if !matches!(info.dtype, GgmlDType::F32 | GgmlDType::F16) {
            return Err(WeightError::VectorType {
                name: name.to_string(),
                dtype: info.dtype,
            });
        }
        let m = QMatrix::from_ggml(info.dtype, 1, len, self.file.tensor_data(info)).map_err(
            |source| WeightError::Quant {
                name: name.to_string(),
                source,
            },
        )?;
        let mut out = vec![0.0; len];
        m.dequantize_row(0, &mut out);
        Ok(out)
    }

    /// One dense decoder layer in the llama/qwen2 GGUF naming (`blk.N.*`).
    pub fn dense_layer(
        &self,
        cfg: &ModelConfig,
        i: usize,
        qkv_bias: bool,
    ) -> Result<DecoderLayer, WeightError> {
        let n = |s: &str| format!("blk.{i}.{s}");
        let (h, q, kv, ffn) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let qkv = FusedLinear::new(vec![
            self.matrix(&n("attn_q.weight"), q, h)?,
            self.matrix(&n("attn_k.weight"), kv, h)?,
            self.matrix(&n("attn_v.weight"), kv, h)?,
        ]);
        let qkv_bias = if qkv_bias {
            Some([
                self.vector(&n("attn_q.bias"), q)?,
                self.vector(&n("attn_k.bias"), kv)?,
                self.vector(&n("attn_v.bias"), kv)?,
            ])
        } else {
            None
        };
        Ok(DecoderLayer {
            attn_norm: self.vector(&n("attn_norm.weight"), h)?,
            attn: AttentionBlock {
                qkv,
                qkv_bias,
                out: self.matrix(&n("attn_output.weight"), h, q)?,
            },
            ffn_norm: self.vector(&n("ffn_norm.weight"), h)?,
            mlp: Mlp {
                gate_up: FusedLinear::new(vec![
                    self.matrix(&n("ffn_gate.weight"), ffn, h)?,
                    self.matrix(&n("ffn_up.weight"), ffn, h)?,
                ]),
                down: self.matrix(&n("ffn_down.weight"), h, ffn)?,
            },
        })
    }
}
