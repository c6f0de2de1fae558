//! Reading named tensors into `QMatrix` weights and f32 vectors, with every shape
//! checked against the model config before use. 3-D expert tensors are sliced into one
//! `QMatrix` per expert.
//!
//! The source of the bytes is a `TensorSource` (a GGUF file, or a Hugging Face
//! safetensors checkpoint) and the tensor names come from a `Naming`, so both formats
//! build their layers through the same code (`DecoderLayer::load`,
//! `Transformer::from_weights`).
//! Shapes are compared row-major, outermost dimension first (`[rows, cols]`; GGUF's
//! dims reversed). With a `Quantization` set (`quantizing`), every matrix read through
//! `matrix` / `experts` is converted as it is read (`model::quantize`).

use std::borrow::Cow;
use std::cell::Cell;

use super::gguf::{GgmlDType, GgufError, GgufFile};
use super::quantize::Quantization;
use super::safetensors::SafetensorsError;
use super::tensor_names::Naming;
use crate::ops::quant::{QMatrix, QuantError};

/// Why weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error(
        "tensor `{name}` has shape {got:?}, expected {expected:?} (outermost dimension first)"
    )]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{name}`: {source}")]
    Quant { name: String, source: QuantError },
    #[error("tensor `{name}` has type {dtype:?}; a norm/bias vector must be F32, F16 or BF16")]
    VectorType { name: String, dtype: GgmlDType },
}

/// One tensor as a weight loader sees it.
pub struct TensorRef<'a> {
    pub dtype: GgmlDType,
    /// Row-major, outermost dimension first: `[rows, cols]` for a matrix.
    pub shape: Vec<usize>,
    /// Rows of `shape[last]` elements of `dtype`, little-endian ggml layout.
    pub data: Cow<'a, [u8]>,
}

/// Named tensors of one model file (or folder).
pub trait TensorSource {
    fn get_tensor(&self, name: &str) -> Result<TensorRef<'_>, WeightError>;
    fn has_tensor(&self, name: &str) -> bool;
}

impl TensorSource for GgufFile {
    fn get_tensor(&self, name: &str) -> Result<TensorRef<'_>, WeightError> {
        let info = self.tensor(name)?;
        Ok(TensorRef {
            dtype: info.dtype,
            shape: info.dims.iter().rev().copied().collect(),
            data: Cow::Borrowed(self.tensor_data(info)),
        })
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.tensor(name).is_ok()
    }
}

/// Typed, shape-checked access to a model's tensors.
pub struct WeightLoader<'a> {
    source: &'a dyn TensorSource,
    naming: Naming,
    quantization: Option<Quantization>,
    converted: Cell<ConvertedWeights>,
}

/// What `--quantization` converted during a load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertedWeights {
    pub matrices: usize,
    /// Bytes of those matrices as stored in the file, and after conversion.
    pub bytes_before: usize,
    pub bytes_after: usize,
}

impl<'a> WeightLoader<'a> {
    /// A loader over a GGUF file's tensors, by GGUF names.
    pub fn new(file: &'a GgufFile) -> Self {
        Self::with_source(file, Naming::Gguf)
    }

    /// A loader over any tensor source whose names follow `naming`.
    pub fn with_source(source: &'a dyn TensorSource, naming: Naming) -> Self {
        Self {
            source,
            naming,
            quantization: None,
            converted: Cell::new(ConvertedWeights::default()),
        }
    }

    /// Converts every matrix to `quantization` as it is read (`None`: as stored).
    pub fn quantizing(mut self, quantization: Option<Quantization>) -> Self {
        self.quantization = quantization;
        self
    }

    /// What the conversion did so far.
    pub fn converted(&self) -> ConvertedWeights {
        self.converted.get()
    }

    pub fn naming(&self) -> Naming {
        self.naming
    }

    pub fn has(&self, name: &str) -> bool {
        self.source.has_tensor(name)
    }

    /// The tensor `name`, which must have exactly `shape` (outermost first).
    fn shaped(&self, name: &str, shape: &[usize]) -> Result<TensorRef<'a>, WeightError> {
        let tensor = self.source.get_tensor(name)?;
        if tensor.shape != shape {
            return Err(WeightError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: tensor.shape,
            });
        }
        Ok(tensor)
    }

    /// A `[rows, cols]` matrix (GGUF dims `[cols, rows]`), converted when quantizing.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix, WeightError> {
        let stored = self.matrix_as_stored(name, rows, cols)?;
        self.convert(name, stored)
    }

    /// A `[rows, cols]` matrix in its stored type even when quantizing (a MoE router,
    /// which llama-quantize keeps as it is).
    pub fn matrix_as_stored(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<QMatrix, WeightError> {
        let tensor = self.shaped(name, &[rows, cols])?;
        QMatrix::from_ggml(tensor.dtype, rows, cols, &tensor.data).map_err(|source| {
            WeightError::Quant {
                name: name.to_string(),
                source,
            }
        })
    }

    /// `m` in the `quantizing` type (as it is without one).
    fn convert(&self, name: &str, m: QMatrix) -> Result<QMatrix, WeightError> {
        let Some(quantization) = self.quantization else {
            return Ok(m);
        };
        let converted = match quantization {
            Quantization::Q8_0 => m.to_q8_0(),
            Quantization::Q4_0 => m.to_q4_0(),
        }
        .map_err(|source| WeightError::Quant {
            name: name.to_string(),
            source,
        })?;
        let mut stats = self.converted.get();
        stats.matrices += 1;
        stats.bytes_before += m.size_bytes();
        stats.bytes_after += converted.size_bytes();
        self.converted.set(stats);
        Ok(converted)
    }

    /// A 1-D f32 vector of `len` elements (norm weights, biases).
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, WeightError> {
        let tensor = self.shaped(name, &[len])?;
        if !matches!(
            tensor.dtype,
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        ) {
            return Err(WeightError::VectorType {
                name: name.to_string(),
                dtype: tensor.dtype,
            });
        }
        let m = QMatrix::from_ggml(tensor.dtype, 1, len, &tensor.data).map_err(|source| {
            WeightError::Quant {
                name: name.to_string(),
                source,
            }
        })?;
        let mut out = vec![0.0; len];
        m.dequantize_row(0, &mut out);
        Ok(out)
    }

    /// The `n` matrices `[rows, cols]` of a 3-D expert tensor (shape `[n, rows, cols]`,
    /// GGUF dims `[cols, rows, n]`, experts outermost), each sliced into its own `QMatrix`.
    pub fn experts(
        &self,
        name: &str,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<QMatrix>, WeightError> {
        let tensor = self.shaped(name, &[n, rows, cols])?;
        let data = &tensor.data;
        let per_expert = data.len() / n.max(1);
        let quant_err = |source| WeightError::Quant {
            name: name.to_string(),
            source,
        };
        if per_expert * n != data.len() || per_expert == 0 {
            return Err(quant_err(QuantError::SizeMismatch {
                dtype: tensor.dtype,
                rows: rows * n,
                cols,
                expected: per_expert * n,
                got: data.len(),
            }));
        }
        data.chunks_exact(per_expert)
            .map(|bytes| {
                let stored =
                    QMatrix::from_ggml(tensor.dtype, rows, cols, bytes).map_err(quant_err)?;
                self.convert(name, stored)
            })
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
}
