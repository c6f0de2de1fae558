//! One pre-norm decoder layer of the llama/qwen2 layout, the same for every family:
//! `x += attn(norm(x))`, then `x += ffn(norm(x))` where the feed-forward half is a dense
//! SwiGLU MLP or a mixture of experts. Built from the shared `layers` and `moe` blocks
//! by `DecoderLayer::load`, under the loader's naming (GGUF or Hugging Face).
//!
//! Shapes: `ws.x: [T, hidden]` is the residual stream of all `T` tokens of the step;
//! attention reads each sequence's K/V through its block table (`LayerInputs`).

use super::config::ModelConfig;
use super::kv_storage::LayerKv;
use super::layers::{AttentionBlock, Mlp, MlpScratch};
use super::lora::{LayerLora, LoraTarget};
use super::moe::MoeBlock;
use super::tensor_names::LayerTensor;
use super::weights::{WeightError, WeightLoader};
use super::workspace::Workspace;
use crate::ops::attention::{
    paged_attention, paged_attention_q8_0, rotate, write_kv, write_kv_q8_0, AttnInputs, AttnSeq,
    KvGeometry,
};
use crate::ops::norm::rms_norm;
use crate::ops::rope::RopeTable;
use crate::ops::{add_assign, add_bias};

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

impl LayerInputs<'_> {
    /// This step's attention inputs over one layer's cache (`C`: f16 values or Q8_0).
    fn attn_inputs<'c, C>(&'c self, q: &'c [f32], k: &'c [C], v: &'c [C]) -> AttnInputs<'c, C> {
        AttnInputs {
            q,
            n_heads: self.n_heads,
            k_cache: k,
            v_cache: v,
            geo: self.geo,
            seqs: self.seqs,
            block_tables: self.block_tables,
        }
    }
}

impl DecoderLayer {
    /// Decoder layer `i`: attention, then a dense SwiGLU MLP, or (GGUF only) a mixture
    /// of experts when `cfg.moe` says so.
    pub fn load(
        w: &WeightLoader<'_>,
        cfg: &ModelConfig,
        i: usize,
        qkv_bias: bool,
    ) -> Result<Self, WeightError> {
        use LayerTensor::{AttnNorm, Down, FfnNorm, Gate, Up};
        let ffn = match &cfg.moe {
            None => FeedForward::Dense(Mlp::load(w, i, [Gate, Up, Down], cfg.hidden, cfg.ffn)?),
            Some(moe) => FeedForward::Moe(Box::new(MoeBlock::load(w, cfg.hidden, moe, i)?)),
        };
        let n = |t: LayerTensor| w.naming().layer(i, t);
        Ok(Self {
            attn_norm: w.vector(&n(AttnNorm), cfg.hidden)?,
            attn: AttentionBlock::load(w, cfg, i, qkv_bias)?,
            ffn_norm: w.vector(&n(FfnNorm), cfg.hidden)?,
            ffn,
        })
    }

    /// `ws.x: [T, hidden]` is updated in place (residual stream).
    /// `lora`: the adapters' updates of this layer's projections for this step's rows.
    pub fn forward(
        &self,
        inp: &LayerInputs<'_>,
        kv: &mut LayerKv,
        ws: &mut Workspace,
        lora: LayerLora<'_>,
    ) {
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
        let xn = &ws.xn[..t * hidden];
        lora.apply(LoraTarget::Q, xn, &mut ws.q[..t * q_dim], t);
        lora.apply(LoraTarget::K, xn, &mut ws.k[..t * kv_dim], t);
        lora.apply(LoraTarget::V, xn, &mut ws.v[..t * kv_dim], t);
        if let Some([bq, bk, bv]) = &self.attn.qkv_bias {
            add_bias(&mut ws.q[..t * q_dim], bq);
            add_bias(&mut ws.k[..t * kv_dim], bk);
            add_bias(&mut ws.v[..t * kv_dim], bv);
        }
        inp.rope.apply(&mut ws.q[..t * q_dim], hd, inp.positions);
        inp.rope.apply(&mut ws.k[..t * kv_dim], hd, inp.positions);
        // A quantized cache holds Hadamard-rotated rows, as llama.cpp's (`rotation`).
        let rotation = kv.rotation(hd);
        if let Some(rot) = rotation {
            rotate(&mut ws.q[..t * q_dim], rot.k);
            rotate(&mut ws.k[..t * kv_dim], rot.k);
            rotate(&mut ws.v[..t * kv_dim], rot.v);
        }
        let (k, v, q) = (&ws.k[..t * kv_dim], &ws.v[..t * kv_dim], &ws.q[..t * q_dim]);
        let attn = &mut ws.attn[..t * q_dim];
        match kv {
            LayerKv::F16 { k: kc, v: vc } => {
                write_kv(kc, vc, k, v, inp.slots, inp.geo);
                paged_attention(inp.attn_inputs(q, kc, vc), attn);
            }
            LayerKv::Q8_0 { k: kc, v: vc } => {
                write_kv_q8_0(kc, vc, k, v, inp.slots, inp.geo);
                paged_attention_q8_0(inp.attn_inputs(q, kc, vc), attn);
            }
        }
        if let Some(rot) = rotation {
            rotate(attn, rot.v);
        }
        self.attn
            .out
            .matmul(&ws.attn[..t * q_dim], t, &mut ws.xn[..t * hidden]);
        lora.apply(
            LoraTarget::Out,
            &ws.attn[..t * q_dim],
            &mut ws.xn[..t * hidden],
            t,
        );
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
            FeedForward::Dense(mlp) => {
                let scratch = MlpScratch {
                    gate: &mut ws.gate,
                    up: &mut ws.up,
                    fused: &mut ws.fused,
                };
                mlp.forward_adapted(xn, t, scratch, lora)
            }
            FeedForward::Moe(moe) => moe.forward(xn, t),
        }
        add_assign(&mut ws.x[..t * hidden], &ws.xn[..t * hidden]);
    }
}
