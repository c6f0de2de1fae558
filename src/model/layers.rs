//! The building blocks every model family shares, each implemented once: fused linear
//! projections, RMSNorm, the attention block (QKV → RoPE → paged attention → output
//! projection), the SwiGLU MLP, and the choice of dense MLP or mixture of experts. Activations are flat `[T, width]` rows covering all
//! tokens of all sequences in the step.

use super::kv_cache::LayerKv;
use super::moe::MoeBlock;
use super::workspace::Workspace;
use crate::ops::attention::{paged_attention, write_kv, AttnInputs, AttnSeq, KvGeometry};
use crate::ops::norm::rms_norm;
use crate::ops::quant::QMatrix;
use crate::ops::rope::RopeTable;
use crate::ops::{add_assign, add_bias, silu_mul};

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

    /// `outs[i][m, widths[i]] = x[m, k] · Wᵢᵀ`; `scratch` holds the stacked result.
    pub fn forward(&self, x: &[f32], m: usize, scratch: &mut Vec<f32>, outs: &mut [&mut [f32]]) {
        match &self.weights {
            FusedWeights::Separate(ws) => {
                for (w, out) in ws.iter().zip(outs.iter_mut()) {
                    w.matmul(x, m, &mut out[..m * w.rows()]);
                }
            }
            FusedWeights::Stacked(w) => {
                let total = w.rows();
                scratch.resize(m * total, 0.0);
                w.matmul(x, m, &mut scratch[..m * total]);
                let mut col = 0;
                for (width, out) in self.widths.iter().zip(outs.iter_mut()) {
                    for (t, row) in scratch[..m * total].chunks_exact(total).enumerate() {
                        out[t * width..(t + 1) * width].copy_from_slice(&row[col..col + width]);
                    }
                    col += width;
                }
            }
        }
    }
}

/// Attention block weights.
pub struct AttentionBlock {
    pub qkv: FusedLinear,
    /// `[q_dim]`, `[kv_dim]`, `[kv_dim]` (Qwen2); `None` for bias-free families.
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    pub out: QMatrix,
}

/// SwiGLU MLP weights: `down(silu(gate(x)) * up(x))`.
pub struct Mlp {
    pub gate_up: FusedLinear,
    pub down: QMatrix,
}

impl Mlp {
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
        let ffn = self.width();
        let (gate, up) = (&mut gate[..m * ffn], &mut up[..m * ffn]);
        self.gate_up
            .forward(x, m, fused, &mut [&mut *gate, &mut *up]);
        silu_mul(gate, up, ffn);
        self.down.matmul(gate, m, x);
    }
}

/// The feed-forward half of a decoder layer.
pub enum FeedForward {
    Dense(Mlp),
    Moe(Box<MoeBlock>),
}

impl FeedForward {
    /// Bytes of weights (all experts for a MoE block).
    pub fn size_bytes(&self) -> usize {
        match self {
            FeedForward::Dense(mlp) => mlp.gate_up.size_bytes() + mlp.down.size_bytes(),
            FeedForward::Moe(moe) => moe.size_bytes(),
        }
    }
}

/// One pre-norm decoder layer.
pub struct DecoderLayer {
    pub attn_norm: Vec<f32>,
    pub attn: AttentionBlock,
    pub ffn_norm: Vec<f32>,
    pub ffn: FeedForward,
}

/// Per-step inputs shared by every layer.
pub struct LayerInputs<'a> {
    pub positions: &'a [u32],
    pub slots: &'a [u32],
    pub seqs: &'a [AttnSeq],
    pub block_tables: &'a [u32],
    pub rope: &'a RopeTable,
    pub geo: KvGeometry,
    pub n_heads: usize,
    pub rms_eps: f32,
}

impl DecoderLayer {
    /// `ws.x: [T, hidden]` is updated in place (residual stream).
    pub fn forward(&self, inp: &LayerInputs<'_>, kv: &mut LayerKv, ws: &mut Workspace) {
        let t = inp.positions.len();
        let (hidden, q_dim, kv_dim) = (ws.hidden, ws.q_dim, ws.kv_dim);
        let hd = inp.geo.head_dim;

        // Attention: xn = norm(x); q,k,v = xn·W; rope; cache; attend; x += o·Wo
        rms_norm(
            &ws.x[..t * hidden],
            &self.attn_norm,
            inp.rms_eps,
            &mut ws.xn[..t * hidden],
        );
        let (q, k, v) = (
            &mut ws.q[..t * q_dim],
            &mut ws.k[..t * kv_dim],
            &mut ws.v[..t * kv_dim],
        );
        self.attn
            .qkv
            .forward(&ws.xn[..t * hidden], t, &mut ws.fused, &mut [q, k, v]);
        if let Some([bq, bk, bv]) = &self.attn.qkv_bias {
            add_bias(&mut ws.q[..t * q_dim], bq);
            add_bias(&mut ws.k[..t * kv_dim], bk);
            add_bias(&mut ws.v[..t * kv_dim], bv);
        }
        inp.rope.apply(&mut ws.q[..t * q_dim], hd, inp.positions);
        inp.rope.apply(&mut ws.k[..t * kv_dim], hd, inp.positions);
        write_kv(
            &mut kv.k,
            &mut kv.v,
            &ws.k[..t * kv_dim],
            &ws.v[..t * kv_dim],
            inp.slots,
            inp.geo,
        );
        let attn_in = AttnInputs {
            q: &ws.q[..t * q_dim],
            n_heads: inp.n_heads,
            k_cache: &kv.k,
            v_cache: &kv.v,
            geo: inp.geo,
            seqs: inp.seqs,
            block_tables: inp.block_tables,
        };
        paged_attention(attn_in, &mut ws.attn[..t * q_dim]);
        self.attn
            .out
            .matmul(&ws.attn[..t * q_dim], t, &mut ws.xn[..t * hidden]);
        add_assign(&mut ws.x[..t * hidden], &ws.xn[..t * hidden]);

        // FFN: x += mlp(norm(x)), dense or mixture of experts
        rms_norm(
            &ws.x[..t * hidden],
            &self.ffn_norm,
            inp.rms_eps,
            &mut ws.xn[..t * hidden],
        );
        let xn = &mut ws.xn[..t * hidden];
        match &self.ffn {
            FeedForward::Dense(mlp) => mlp.forward(xn, t, &mut ws.gate, &mut ws.up, &mut ws.fused),
            FeedForward::Moe(moe) => moe.forward(xn, t),
        }
        add_assign(&mut ws.x[..t * hidden], &ws.xn[..t * hidden]);
    }
}
