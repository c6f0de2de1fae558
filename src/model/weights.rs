//! Reading named GGUF tensors into `QMatrix` weights and f32 vectors, with every shape
//! checked against the model config before use. 3-D expert tensors are sliced into one
//! `QMatrix` per expert.

use super::config::ModelConfig;
use super::gguf::{GgmlDType, GgufError, GgufFile};
use super::layers::{AttentionBlock, DecoderLayer, FeedForward, FusedLinear, Mlp};
use super::moe::MoeBlock;
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

    /// The `n` matrices `[rows, cols]` of a 3-D expert tensor (GGUF dims
    /// `[cols, rows, n]`, experts outermost), each sliced into its own `QMatrix`.
    pub fn experts(
        &self,
        name: &str,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<QMatrix>, WeightError> {
        let info = self.file.tensor(name)?;
        if info.dims != [cols, rows, n] {
            return Err(WeightError::Shape {
                name: name.to_string(),
                expected: vec![cols, rows, n],
                got: info.dims.clone(),
            });
        }
        let data = self.file.tensor_data(info);
        let per_expert = data.len() / n;
        let quant_err = |source| WeightError::Quant {
            name: name.to_string(),
            source,
        };
        if per_expert * n != data.len() {
            return Err(quant_err(QuantError::SizeMismatch {
                dtype: info.dtype,
                rows: rows * n,
                cols,
                expected: per_expert * n,
                got: data.len(),
            }));
        }
        data.chunks_exact(per_expert)
            .map(|bytes| QMatrix::from_ggml(info.dtype, rows, cols, bytes).map_err(quant_err))
            .collect()
    }

    /// A 1-D tensor of `len` elements as a `[1, len]` f32 matrix (e.g. the shared-expert
    /// gate `ffn_gate_inp_shexp`, a dot product per token).
    pub fn row_matrix(&self, name: &str, len: usize) -> Result<QMatrix, WeightError> {
        let values = self.vector(name, len)?;
        QMatrix::quantize(GgmlDType::F32, 1, len, &values).map_err(|source| WeightError::Quant {
            name: name.to_string(),
            source,
        })
    }

    /// One decoder layer in the llama/qwen2 GGUF naming (`blk.N.*`): attention, then a
    /// dense SwiGLU MLP, or a mixture of experts when `cfg.moe` says so.
    pub fn layer(
        &self,
        cfg: &ModelConfig,
        i: usize,
        qkv_bias: bool,
    ) -> Result<DecoderLayer, WeightError> {
        let n = |s: &str| format!("blk.{i}.{s}");
        let ffn = match &cfg.moe {
            None => FeedForward::Dense(self.mlp(&n(""), cfg.hidden, cfg.ffn)?),
            Some(moe) => FeedForward::Moe(Box::new(MoeBlock::load(self, cfg.hidden, moe, i)?)),
        };
        Ok(DecoderLayer {
            attn_norm: self.vector(&n("attn_norm.weight"), cfg.hidden)?,
            attn: self.attention(cfg, i, qkv_bias)?,
            ffn_norm: self.vector(&n("ffn_norm.weight"), cfg.hidden)?,
            ffn,
        })
    }

    /// A SwiGLU MLP `{prefix}ffn_{gate,up,down}{suffix}.weight` of width `ffn`, e.g. prefix
    /// `blk.3.` and suffix `_shexp` for a shared expert.
    pub fn mlp_named(
        &self,
        prefix: &str,
        suffix: &str,
        hidden: usize,
        ffn: usize,
    ) -> Result<Mlp, WeightError> {
        let n = |s: &str| format!("{prefix}ffn_{s}{suffix}.weight");
        Ok(Mlp {
            gate_up: FusedLinear::new(vec![
                self.matrix(&n("gate"), ffn, hidden)?,
                self.matrix(&n("up"), ffn, hidden)?,
            ]),
            down: self.matrix(&n("down"), hidden, ffn)?,
        })
    }

    fn mlp(&self, prefix: &str, hidden: usize, ffn: usize) -> Result<Mlp, WeightError> {
        self.mlp_named(prefix, "", hidden, ffn)
    }

    fn attention(
        &self,
        cfg: &ModelConfig,
        i: usize,
        qkv_bias: bool,
    ) -> Result<AttentionBlock, WeightError> {
        let n = |s: &str| format!("blk.{i}.{s}");
        let (h, q, kv) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim());
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
        Ok(AttentionBlock {
            qkv,
            qkv_bias,
            out: self.matrix(&n("attn_output.weight"), h, q)?,
        })
    }
}
