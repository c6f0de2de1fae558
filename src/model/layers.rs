//! The building blocks every model family shares, each implemented once and loaded by
//! the one naming table: fused linear projections, the attention block's weights (QKV,
//! optional Q/K/V biases, output projection) and the SwiGLU MLP. How they are put
//! together into a decoder layer is `decoder`'s. Activations are flat `[T, width]`
//! rows covering all tokens of all sequences in the step.

use super::config::ModelConfig;
use super::lora::{LayerLora, LoraTarget};
use super::tensor_names::LayerTensor;
use super::weights::{WeightError, WeightLoader};
use crate::ops::quant::QMatrix;
use crate::ops::{pool, silu_mul, silu_mul_stacked};

/// Several projections of the same input (QKV, gate+up). When their types match they are
/// stacked into one matrix so the input is quantized once and read by one matmul.
pub struct FusedLinear {
    /// Output width of each part, in order.
    widths: Vec<usize>,
    weights: FusedWeights,
}

enum FusedWeights {
    Stacked(QMatrix),
    Separate(Vec<QMatrix>),
}

impl FusedLinear {
    pub fn new(parts: Vec<QMatrix>) -> Self {
        let widths = parts.iter().map(QMatrix::rows).collect();
        let refs: Vec<&QMatrix> = parts.iter().collect();
        let weights = match QMatrix::concat_rows(&refs) {
            Some(stacked) => FusedWeights::Stacked(stacked),
            None => FusedWeights::Separate(parts),
        };
        Self { widths, weights }
    }

    pub fn size_bytes(&self) -> usize {
        match &self.weights {
            FusedWeights::Stacked(w) => w.size_bytes(),
            FusedWeights::Separate(ws) => ws.iter().map(QMatrix::size_bytes).sum(),
        }
    }

    /// Calls `each(matrix, rows)` for every part in order: the rows of `matrix` that hold
    /// that part's weights (all of a separate part's, a slice of the stacked matrix).
    pub fn for_each_part<'a>(&'a self, mut each: impl FnMut(&'a QMatrix, std::ops::Range<usize>)) {
        match &self.weights {
            FusedWeights::Separate(ws) => ws.iter().for_each(|w| each(w, 0..w.rows())),
            FusedWeights::Stacked(w) => {
                let mut start = 0;
                for &width in &self.widths {
                    each(w, start..start + width);
                    start += width;
                }
            }
        }
    }

    /// `outs[i][m, widths[i]] = x[m, k] · Wᵢᵀ`; `scratch` holds the stacked result.
    pub fn forward(&self, x: &[f32], m: usize, scratch: &mut Vec<f32>, outs: &mut [&mut [f32]]) {
        let w = match &self.weights {
            FusedWeights::Stacked(w) => w,
            FusedWeights::Separate(ws) => {
                for (w, out) in ws.iter().zip(outs.iter_mut()) {
                    w.matmul(x, m, &mut out[..m * w.rows()]);
                }
                return;
            }
        };
        let total = w.rows();
        let stacked = stacked_matmul(w, x, m, scratch);
        let mut col = 0;
        for (&width, out) in self.widths.iter().zip(outs.iter_mut()) {
            pool::for_row_runs(&mut out[..m * width], width, |first, rows| {
                for (t, row) in rows.chunks_exact_mut(width).enumerate() {
                    let at = (first + t) * total + col;
                    row.copy_from_slice(&stacked[at..at + width]);
                }
            });
            col += width;
        }
    }

    /// For stacked parts, `scratch[m, Σ widths] = x[m, k] · Wᵀ` (each row the parts'
    /// outputs in order), returned; `None` (and nothing computed) for separate parts.
    pub fn forward_stacked<'s>(
        &self,
        x: &[f32],
        m: usize,
        scratch: &'s mut Vec<f32>,
    ) -> Option<&'s [f32]> {
        match &self.weights {
            FusedWeights::Stacked(w) => Some(stacked_matmul(w, x, m, scratch)),
            FusedWeights::Separate(_) => None,
        }
    }
}

/// `scratch[m, w.rows()] = x[m, k] · wᵀ`, returned. The scratch only grows: the matmul
/// writes every value it returns, so a decode step after a longer prefill chunk does not
/// truncate it and the next chunk does not zero it again.
fn stacked_matmul<'s>(w: &QMatrix, x: &[f32], m: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
    let total = w.rows();
    if scratch.len() < m * total {
        scratch.resize(m * total, 0.0);
    }
    w.matmul(x, m, &mut scratch[..m * total]);
    &scratch[..m * total]
}

/// Attention block weights.
pub struct AttentionBlock {
    pub qkv: FusedLinear,
    /// `[q_dim]`, `[kv_dim]`, `[kv_dim]` (Qwen2); `None` for bias-free families.
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    pub out: QMatrix,
}

impl AttentionBlock {
    /// Layer `i`'s attention weights (`qkv_bias` for families with Q/K/V biases).
    pub fn load(
        w: &WeightLoader<'_>,
        cfg: &ModelConfig,
        i: usize,
        qkv_bias: bool,
    ) -> Result<Self, WeightError> {
        let n = |t: LayerTensor| w.naming().layer(i, t);
        let (h, q, kv) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim());
        let qkv = FusedLinear::new(vec![
            w.matrix(&n(LayerTensor::Q), q, h)?,
            w.matrix(&n(LayerTensor::K), kv, h)?,
            w.matrix(&n(LayerTensor::V), kv, h)?,
        ]);
        let qkv_bias = if qkv_bias {
            Some([
                w.vector(&n(LayerTensor::QBias), q)?,
                w.vector(&n(LayerTensor::KBias), kv)?,
                w.vector(&n(LayerTensor::VBias), kv)?,
            ])
        } else {
            None
        };
        Ok(Self {
            qkv,
            qkv_bias,
            out: w.matrix(&n(LayerTensor::Out), h, q)?,
        })
    }
}

/// SwiGLU MLP weights: `down(silu(gate(x)) * up(x))`.
pub struct Mlp {
    pub gate_up: FusedLinear,
    pub down: QMatrix,
}

impl Mlp {
    /// The MLP of layer `i` whose gate, up and down projections are `names` (the dense
    /// MLP's, or a shared expert's), of width `ffn`.
    pub fn load(
        w: &WeightLoader<'_>,
        i: usize,
        names: [LayerTensor; 3],
        hidden: usize,
        ffn: usize,
    ) -> Result<Self, WeightError> {
        let [gate, up, down] = names.map(|t| w.naming().layer(i, t));
        Ok(Self {
            gate_up: FusedLinear::new(vec![
                w.matrix(&gate, ffn, hidden)?,
                w.matrix(&up, ffn, hidden)?,
            ]),
            down: w.matrix(&down, hidden, ffn)?,
        })
    }

    /// Hidden width (`ffn`).
    pub fn width(&self) -> usize {
        self.down.cols()
    }

    /// `x: [m, hidden]` is replaced by the MLP's output; `gate`, `up`: ≥ `[m, ffn]` scratch.
    pub fn forward(
        &self,
        x: &mut [f32],
        m: usize,
        gate: &mut [f32],
        up: &mut [f32],
        fused: &mut Vec<f32>,
    ) {
        let scratch = MlpScratch { gate, up, fused };
        self.forward_adapted(x, m, scratch, LayerLora::NONE);
    }

    /// `forward` with the LoRA updates of `lora` on the gate, up and down projections.
    pub fn forward_adapted(
        &self,
        x: &mut [f32],
        m: usize,
        scratch: MlpScratch<'_>,
        lora: LayerLora<'_>,
    ) {
        let ffn = self.width();
        // Without gate/up adapters, SwiGLU reads the stacked [gate | up] rows directly.
        let stacked = if lora.is_none() {
            self.gate_up.forward_stacked(x, m, scratch.fused)
        } else {
            None
        };
        let gate = &mut scratch.gate[..m * ffn];
        if let Some(gate_up) = stacked {
            silu_mul_stacked(gate_up, gate, ffn);
        } else {
            let up = &mut scratch.up[..m * ffn];
            self.gate_up
                .forward(x, m, scratch.fused, &mut [&mut *gate, &mut *up]);
            lora.apply(LoraTarget::Gate, x, gate, m);
            lora.apply(LoraTarget::Up, x, up, m);
            silu_mul(gate, up, ffn);
        }
        self.down.matmul(gate, m, x);
        lora.apply(LoraTarget::Down, gate, x, m);
    }
}

/// The MLP's activation buffers: `gate`, `up` ≥ `[m, ffn]`, `fused` for a stacked
/// gate+up projection.
pub struct MlpScratch<'a> {
    pub gate: &'a mut [f32],
    pub up: &'a mut [f32],
    pub fused: &'a mut Vec<f32>,
}
