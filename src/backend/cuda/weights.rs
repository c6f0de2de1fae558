//! The model's weights on the GPU: every matrix dequantized at load to F16 (whatever the
//! file stores: F32/BF16/F16 or a ggml quant type), norms and biases in F32.
//!
//! Why F16 and not quantized GEMM kernels: cuBLAS's F16 GEMMs with F32 accumulation are
//! the fastest path for batched steps on every card from sm_70 up and need no kernel of
//! ours to be right; the price is memory (2 bytes a weight) and single-stream speed
//! (the weights read per token), which quantized kernels for Q8_0 / Q4_K would win back.

use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::f16;

use super::DriverResult;
use crate::model::decoder::{DecoderLayer, FeedForward};
use crate::model::layers::Mlp;
use crate::model::moe::MoeBlock;
use crate::model::transformer::TransformerWeights;
use crate::ops::quant::QMatrix;

/// An F16 matrix `[rows, cols]`, row-major, on the device.
pub struct DeviceMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: CudaSlice<f16>,
}

pub struct DeviceLayer {
    pub attn_norm: CudaSlice<f32>,
    /// `[q_dim, hidden]`, `[kv_dim, hidden]`, `[kv_dim, hidden]`
    pub q: DeviceMatrix,
    pub k: DeviceMatrix,
    pub v: DeviceMatrix,
    /// Q/K/V biases (Qwen2); `None` for bias-free families.
    pub qkv_bias: Option<[CudaSlice<f32>; 3]>,
    /// `[hidden, q_dim]`
    pub out: DeviceMatrix,
    pub ffn_norm: CudaSlice<f32>,
    pub ffn: DeviceFfn,
}

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
pub struct DeviceMlp {
    /// `[ffn, hidden]` each
    pub gate: DeviceMatrix,
    pub up: DeviceMatrix,
    /// `[hidden, ffn]`
    pub down: DeviceMatrix,
}

pub enum DeviceFfn {
    Dense(Box<DeviceMlp>),
    Moe(Box<DeviceMoe>),
}

/// A mixture of experts (`model::moe::MoeBlock`) on the device.
pub struct DeviceMoe {
    /// `[E, hidden]`
    pub router: DeviceMatrix,
    pub experts: Vec<DeviceMlp>,
    /// Qwen2-MoE's shared expert and its `[1, hidden]` sigmoid gate.
    pub shared: Option<(DeviceMlp, DeviceMatrix)>,
    pub top_k: usize,
    pub renormalize: bool,
    /// The CPU block's live `[E]` routed-token counters (the metrics read them).
    pub expert_tokens: Arc<[AtomicU64]>,
}

impl DeviceMoe {
    /// Widest expert (or shared expert) hidden layer.
    pub fn max_ffn(&self) -> usize {
        let experts = self.experts.iter().map(|m| m.gate.rows);
        experts
            .chain(self.shared.iter().map(|(m, _)| m.gate.rows))
            .max()
            .unwrap_or(0)
    }
}

pub struct DeviceWeights {
    /// `[vocab, hidden]`
    pub embed: DeviceMatrix,
    pub layers: Vec<DeviceLayer>,
    pub out_norm: CudaSlice<f32>,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<DeviceMatrix>,
    /// RoPE tables `[max_positions, rot_dims / 2]`, the CPU's numbers.
    pub rope_cos: CudaSlice<f32>,
    pub rope_sin: CudaSlice<f32>,
}

impl DeviceWeights {
    /// Copies `w` to the device (`progress(done, total)` after each layer).
    pub fn upload(
        stream: &Arc<CudaStream>,
        w: &TransformerWeights<'_>,
        mut progress: impl FnMut(usize, usize),
    ) -> DriverResult<Self> {
        let mut layers = Vec::with_capacity(w.layers.len());
        for (i, layer) in w.layers.iter().enumerate() {
            layers.push(upload_layer(stream, layer)?);
            progress(i + 1, w.layers.len());
        }
        let (cos, sin) = w.rope.cos_sin();
        Ok(Self {
            embed: whole(stream, w.embed)?,
            layers,
            out_norm: stream.clone_htod(w.out_norm)?,
            lm_head: w.lm_head.map(|m| whole(stream, m)).transpose()?,
            rope_cos: stream.clone_htod(cos)?,
            rope_sin: stream.clone_htod(sin)?,
        })
    }

    /// The LM head's matrix (the embedding when tied).
    pub fn head(&self) -> &DeviceMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

fn upload_layer(stream: &Arc<CudaStream>, layer: &DecoderLayer) -> DriverResult<DeviceLayer> {
    let mut qkv = Vec::with_capacity(3);
    layer.attn.qkv.for_each_part(|m, rows| qkv.push((m, rows)));
    let part = |(m, rows): &(&QMatrix, Range<usize>)| upload_matrix(stream, m, rows.clone());
    let qkv_bias = match &layer.attn.qkv_bias {
        Some([q, k, v]) => Some([
            stream.clone_htod(q)?,
            stream.clone_htod(k)?,
            stream.clone_htod(v)?,
        ]),
        None => None,
    };
    let ffn = match &layer.ffn {
        FeedForward::Dense(mlp) => DeviceFfn::Dense(Box::new(upload_mlp(stream, mlp)?)),
        FeedForward::Moe(moe) => DeviceFfn::Moe(Box::new(upload_moe(stream, moe)?)),
    };
    Ok(DeviceLayer {
        attn_norm: stream.clone_htod(&layer.attn_norm)?,
        q: part(&qkv[0])?,
        k: part(&qkv[1])?,
        v: part(&qkv[2])?,
        qkv_bias,
        out: whole(stream, &layer.attn.out)?,
        ffn_norm: stream.clone_htod(&layer.ffn_norm)?,
        ffn,
    })
}

fn upload_mlp(stream: &Arc<CudaStream>, mlp: &Mlp) -> DriverResult<DeviceMlp> {
    let mut gate_up = Vec::with_capacity(2);
    mlp.gate_up.for_each_part(|m, rows| gate_up.push((m, rows)));
    let part = |(m, rows): &(&QMatrix, Range<usize>)| upload_matrix(stream, m, rows.clone());
    Ok(DeviceMlp {
        gate: part(&gate_up[0])?,
        up: part(&gate_up[1])?,
        down: whole(stream, &mlp.down)?,
    })
}

fn upload_moe(stream: &Arc<CudaStream>, moe: &MoeBlock) -> DriverResult<DeviceMoe> {
    let parts = moe.parts();
    let experts = parts
        .experts
        .iter()
        .map(|mlp| upload_mlp(stream, mlp))
        .collect::<DriverResult<Vec<_>>>()?;
    let shared = match parts.shared {
        Some(s) => Some((upload_mlp(stream, &s.mlp)?, whole(stream, &s.gate)?)),
        None => None,
    };
    Ok(DeviceMoe {
        router: whole(stream, parts.router)?,
        experts,
        shared,
        top_k: parts.top_k,
        renormalize: parts.renormalize,
        expert_tokens: moe.expert_tokens(),
    })
}

fn whole(stream: &Arc<CudaStream>, m: &QMatrix) -> DriverResult<DeviceMatrix> {
    upload_matrix(stream, m, 0..m.rows())
}

/// Rows `rows` of `m`, dequantized exactly as the CPU backend reads them, rounded to F16.
fn upload_matrix(
    stream: &Arc<CudaStream>,
    m: &QMatrix,
    rows: Range<usize>,
) -> DriverResult<DeviceMatrix> {
    let cols = m.cols();
    let mut row = vec![0.0f32; cols];
    let mut host = Vec::with_capacity(rows.len() * cols);
    for r in rows.clone() {
        m.dequantize_row(r, &mut row);
        host.extend(row.iter().map(|&x| f16::from_f32(x)));
    }
    Ok(DeviceMatrix {
        rows: rows.len(),
        cols,
        data: stream.clone_htod(&host)?,
    })
}
