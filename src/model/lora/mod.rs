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
//! Which adapter a request runs with is `SamplingParams::lora`, a `LoraRef`: the
//! adapter's id and its weights, which the request holds until it ends, so unloading an
//! adapter never pulls weights from under a running request. The `LoraRegistry` maps
//! served names to `LoraRef`s and changes at run time (`/v1/load_lora_adapter`). Ids are
//! never reused, not even for a name loaded again, so the prefix cache keys KV blocks on
//! them (`kvcache::hash::ExtraKeys::lora`).

pub mod apply;
pub mod load;
pub mod peft;
pub mod registry;

use std::sync::Arc;

pub use apply::{LayerLora, LoraStep};
pub use load::{load_gguf, LoraError};
pub use registry::LoraRegistry;

use crate::ops::quant::QMatrix;

/// One load of an adapter (`LoraRegistry`); ids start at 1 and are never reused, so KV
/// blocks can be keyed on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterId(pub u32);

/// A request's hold on an adapter: which load it is (`id`, the prefix-cache key) and its
/// weights, kept alive while the request runs. Two refs are equal when their ids are.
#[derive(Clone)]
pub struct LoraRef {
    pub id: AdapterId,
    pub weights: Arc<LoraAdapter>,
}

impl PartialEq for LoraRef {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl LoraRef {
    /// A ref to load `id` of an adapter without updates (unit tests of what keys on ids).
    #[cfg(test)]
    pub(crate) fn without_updates(id: u32) -> Self {
        let weights = LoraAdapter {
            alpha: 0.0,
            layers: Vec::new(),
        };
        Self {
            id: AdapterId(id),
            weights: Arc::new(weights),
        }
    }
}

impl std::fmt::Debug for LoraRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoraRef({})", self.id.0)
    }
}

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
