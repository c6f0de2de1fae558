//! LoRA adapters: low-rank updates of a base model's projections, many served at once.
//!
//! An adapter adds `scale · B (A x)` to the output `W x` of each projection it adapts
//! (llama.cpp's `llm_build_lora_mm`): `A: [rank, in]`, `B: [out, rank]`, `scale =
//! user_scale · alpha / rank` (or `user_scale` when the file has no alpha). `load` reads
//! llama.cpp's GGUF adapter layout and checks it against the base model; `apply` runs the
//! updates of one engine step, where rows of several adapters and of the base model share
//! one batch: the base matmul runs once over all rows (`layers`, `decoder`), then each
//! adapter's rows are gathered and get their low-rank update (the Punica / S-LoRA idea).
//!
//! Which adapter a request runs with is `SamplingParams::lora` (an `AdapterId`); the
//! `LoraRegistry` maps served names to ids and ids to weights. Ids are never reused, so
//! the prefix cache can key KV blocks on them (`kvcache::hash::ExtraKeys::lora`).

pub mod apply;
pub mod load;
pub mod registry;

pub use apply::{LayerLora, LoraStep};
pub use load::{load_gguf, LoraError};
pub use registry::LoraRegistry;

use crate::ops::quant::QMatrix;
pub use crate::request::AdapterId;

/// A projection of a dense decoder layer that an adapter may update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraTarget {
    Q,
    K,
    V,
    /// Attention output projection.
    Out,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::Out,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The GGUF tensor-name part (`blk.N.<part>.weight`).
    pub fn gguf_part(self) -> &'static str {
        match self {
            LoraTarget::Q => "attn_q",
            LoraTarget::K => "attn_k",
            LoraTarget::V => "attn_v",
            LoraTarget::Out => "attn_output",
            LoraTarget::Gate => "ffn_gate",
            LoraTarget::Up => "ffn_up",
            LoraTarget::Down => "ffn_down",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether this projection belongs to the feed-forward half.
    pub fn is_ffn(self) -> bool {
        matches!(self, LoraTarget::Gate | LoraTarget::Up | LoraTarget::Down)
    }
}

/// The low-rank update of one projection.
pub struct LoraPair {
    /// `[rank, in]`
    pub a: QMatrix,
    /// `[out, rank]`
    pub b: QMatrix,
    /// `user_scale · alpha / rank`.
    pub scale: f32,
}

impl LoraPair {
    pub fn rank(&self) -> usize {
        self.a.rows()
    }
}

/// One loaded adapter: per decoder layer, the update of each adapted projection.
pub struct LoraAdapter {
    /// `adapter.lora.alpha` (0 when the file has none: the scale is then the user's).
    pub alpha: f32,
    /// `[n_layers][LoraTarget::ALL.len()]`
    layers: Vec<[Option<LoraPair>; 7]>,
}

impl LoraAdapter {
    /// The update of `target` in layer `layer`, if the adapter has one.
    pub fn pair(&self, layer: usize, target: LoraTarget) -> Option<&LoraPair> {
        self.layers.get(layer)?[target.index()].as_ref()
    }

    /// Largest rank of any of its updates.
    pub fn max_rank(&self) -> usize {
        self.pairs().map(LoraPair::rank).max().unwrap_or(0)
    }

    /// Number of adapted projections.
    pub fn num_pairs(&self) -> usize {
        self.pairs().count()
    }

    /// Bytes of its weights.
    pub fn size_bytes(&self) -> usize {
        self.pairs()
            .map(|p| p.a.size_bytes() + p.b.size_bytes())
            .sum()
    }

    fn pairs(&self) -> impl Iterator<Item = &LoraPair> {
        self.layers.iter().flatten().flatten()
    }
}
