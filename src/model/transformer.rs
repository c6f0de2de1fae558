//! The decoder-only transformer shared by the dense families: token embedding → N
//! decoder layers → final norm → LM head, over a flat batch of all scheduled tokens.
//! Only the rows that need a next token (`logit_rows`) go through the final norm and the
//! LM head; `head` serves further rows from the same forward on request.

use super::config::ModelConfig;
use super::decoder::{DecoderLayer, FeedForward, LayerInputs};
use super::kv_storage::KvStorage;
use super::lora::{LayerLora, LoraStep};
use super::moe::ExpertTokenCounts;
use super::tensor_names::GlobalTensor;
use super::weights::{WeightError, WeightLoader};
use super::workspace::Workspace;
use crate::ops::attention::{AttnSeq, KvGeometry};
use crate::ops::norm::rms_norm;
use crate::ops::quant::QMatrix;
use crate::ops::rope::RopeTable;

/// One step's flattened batch (T = total scheduled tokens).
pub struct ForwardBatch<'a> {
    /// `[T]`, each < vocab (checked at submission).
    pub token_ids: &'a [u32],
    /// `[T]` absolute positions.
    pub positions: &'a [u32],
    /// `[T]` cache slot of each token (`block * block_size + offset`).
    pub slots: &'a [u32],
    pub seqs: &'a [AttnSeq],
    pub block_tables: &'a [u32],
    /// Rows of the batch whose logits are wanted, `[S]`.
    pub logit_rows: &'a [usize],
    /// Which rows run with which LoRA adapter (`None`: all on the base model).
    pub lora: Option<&'a LoraStep>,
}

pub struct Transformer {
    pub cfg: ModelConfig,
    /// `[vocab, hidden]`
    embed: QMatrix,
    layers: Vec<DecoderLayer>,
    out_norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    lm_head: Option<QMatrix>,
    rope: RopeTable,
}

/// A model's weights as loaded, for backends that copy them to a device.
pub struct TransformerWeights<'a> {
    /// `[vocab, hidden]`
    pub embed: &'a QMatrix,
    pub layers: &'a [DecoderLayer],
    pub out_norm: &'a [f32],
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<&'a QMatrix>,
    pub rope: &'a RopeTable,
}

/// Where the LM head comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmHead {
    /// The separate LM head tensor when the file has one, else the embedding (GGUF).
    IfPresent,
    /// Always the embedding (`tie_word_embeddings: true`; a stray `lm_head.weight` is
    /// ignored, as transformers ignores it).
    Tied,
    /// Always the separate LM head tensor; missing is an error.
    Separate,
}

/// What differs between the llama-layout families at load time.
#[derive(Debug, Clone, Copy)]
pub struct DenseLayout {
    /// Q/K/V projections have biases (Qwen2).
    pub qkv_bias: bool,
    pub lm_head: LmHead,
}

impl Transformer {
    /// Loads a llama-layout model (dense, or MoE when `cfg.moe` is set) from a GGUF file's
    /// weights; `qkv_bias` for families that have Q/K/V biases.
    pub fn load_dense(
        w: &WeightLoader<'_>,
        cfg: ModelConfig,
        qkv_bias: bool,
        max_positions: usize,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self, WeightError> {
        let layout = DenseLayout {
            qkv_bias,
            lm_head: LmHead::IfPresent,
        };
        Self::from_weights(w, cfg, layout, max_positions, progress)
    }

    /// Builds the model from any tensor source: the one construction path for GGUF and
    /// Hugging Face checkpoints (`w` carries the naming).
    pub fn from_weights(
        w: &WeightLoader<'_>,
        cfg: ModelConfig,
        layout: DenseLayout,
        max_positions: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self, WeightError> {
        let name = |t: GlobalTensor| w.naming().global(t);
        let embed = w.matrix(name(GlobalTensor::Embed), cfg.vocab, cfg.hidden)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            layers.push(DecoderLayer::load(w, &cfg, i, layout.qkv_bias)?);
            progress(i + 1, cfg.n_layers);
        }
        let head_name = name(GlobalTensor::LmHead);
        let separate_head = match layout.lm_head {
            LmHead::IfPresent => w.has(head_name),
            LmHead::Tied => false,
            LmHead::Separate => true,
        };
        let lm_head = if separate_head {
            Some(w.matrix(head_name, cfg.vocab, cfg.hidden)?)
        } else {
            None
        };
        let rope = RopeTable::new(cfg.rope_base, cfg.rope_dims, max_positions, cfg.rope_style);
        Ok(Self {
            out_norm: w.vector(name(GlobalTensor::OutNorm), cfg.hidden)?,
            cfg,
            embed,
            layers,
            lm_head,
            rope,
        })
    }

    /// Bytes of weights read per forward pass (for bandwidth bounds).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.attn.qkv.size_bytes() + l.attn.out.size_bytes())
            .chain(self.layers.iter().map(|l| l.ffn.size_bytes()))
            .sum();
        layers + self.lm_head.as_ref().unwrap_or(&self.embed).size_bytes()
    }

    /// Per-layer, per-expert routed token counters (`None` for dense models); clones
    /// share the live counters, so a metrics exporter can read them from any thread.
    pub fn expert_token_counts(&self) -> Option<ExpertTokenCounts> {
        ExpertTokenCounts::collect(self.layers.iter().enumerate().filter_map(
            |(i, l)| match &l.ffn {
                FeedForward::Moe(moe) => Some((i, moe.expert_tokens())),
                FeedForward::Dense(_) => None,
            },
        ))
    }

    pub fn weights(&self) -> TransformerWeights<'_> {
        TransformerWeights {
            embed: &self.embed,
            layers: &self.layers,
            out_norm: &self.out_norm,
            lm_head: self.lm_head.as_ref(),
            rope: &self.rope,
        }
    }

    /// Positions the RoPE table covers (the engine's max model length).
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// Runs the batch; returns logits `[logit_rows.len(), vocab]` (inside `ws`).
    pub fn forward<'w>(
        &self,
        batch: &ForwardBatch<'_>,
        kv: &mut KvStorage,
        ws: &'w mut Workspace,
    ) -> &'w mut [f32] {
        let t = batch.token_ids.len();
        let h = self.cfg.hidden;
        assert!(
            t <= ws.max_tokens(),
            "batch of {t} tokens exceeds the workspace"
        );
        for (row, &tok) in ws.x[..t * h].chunks_exact_mut(h).zip(batch.token_ids) {
            self.embed.dequantize_row(tok as usize, row);
        }
        let inputs = LayerInputs {
            positions: batch.positions,
            slots: batch.slots,
            seqs: batch.seqs,
            block_tables: batch.block_tables,
            rope: &self.rope,
            geo: kv.geo,
            n_heads: self.cfg.n_heads,
            rms_eps: self.cfg.rms_eps,
        };
        let layers = self.layers.iter().zip(kv.layers.iter_mut()).enumerate();
        for (i, (layer, layer_kv)) in layers {
            let lora = batch.lora.map_or(LayerLora::NONE, |step| step.layer(i));
            layer.forward(&inputs, layer_kv, ws, lora);
        }
        self.head(batch.logit_rows, ws)
    }

    /// Final norm + LM head for the selected rows of `ws.x` (at most
    /// `ws.max_logit_rows()`); logits `[rows.len(), vocab]`. `forward` ends with it; the
    /// runner calls it again after `forward` for extra rows (prompt logprobs), while
    /// `ws.x` still holds the step's final hidden states.
    pub fn head<'w>(&self, rows: &[usize], ws: &'w mut Workspace) -> &'w mut [f32] {
        let (h, s, vocab) = (self.cfg.hidden, rows.len(), self.cfg.vocab);
        for (i, &r) in rows.iter().enumerate() {
            let src = &ws.x[r * h..(r + 1) * h];
            rms_norm(
                src,
                &self.out_norm,
                self.cfg.rms_eps,
                &mut ws.head_in[i * h..(i + 1) * h],
            );
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        head.matmul(&ws.head_in[..s * h], s, &mut ws.logits[..s * vocab]);
        &mut ws.logits[..s * vocab]
    }

    /// KV geometry for a given block size.
    pub fn kv_geometry(&self, block_size: usize) -> KvGeometry {
        KvGeometry {
            block_size,
            n_kv_heads: self.cfg.n_kv_heads,
            head_dim: self.cfg.head_dim,
        }
    }
}
