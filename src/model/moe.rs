//! The mixture-of-experts FFN block shared by the MoE families (Mixtral-layout `llama`,
//! `qwen2moe`): a router, `E` SwiGLU experts each run ONCE per step over all the rows
//! routed to it, and an optional sigmoid-gated shared expert (Qwen2-MoE).
//!
//! Arithmetic mirrors llama.cpp's `build_moe_ffn` (see `ops::moe` for the routing), so a
//! model's greedy tokens match llama.cpp's: each expert row is the same `QMatrix` dot
//! products a dense MLP would compute, the k expert outputs are weighted and added in rank
//! order, and the shared expert's output is added to that sum before the residual.
//!
//! Batch invariance: routing is per token, `QMatrix::matmul` is batch invariant per row,
//! and the weighted sum has a fixed order, so a token's output does not depend on which
//! other tokens share the step or how rows were grouped by expert.
//!
//! Scratch buffers live in one thread-local `MoeScratch` shared by all layers: they grow to
//! the largest step once and are reused.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::config::MoeConfig;
use super::layers::{FusedLinear, Mlp};
use super::weights::{WeightError, WeightLoader};
use crate::ops::add_assign;
use crate::ops::moe::{permute, topk_softmax, unpermute_weighted, MoeAlign};
use crate::ops::quant::QMatrix;

/// One layer's mixture of experts.
pub struct MoeBlock {
    /// `[E, hidden]` router (`ffn_gate_inp`).
    router: QMatrix,
    /// `E` experts: gate/up `[ffn, hidden]`, down `[hidden, ffn]` (`ffn_*_exps`, sliced).
    experts: Vec<Mlp>,
    shared: Option<SharedExpert>,
    top_k: usize,
    renormalize: bool,
    /// `[E]` (token, expert) assignments routed to each expert since load.
    expert_tokens: Arc<[AtomicU64]>,
}

/// Qwen2-MoE's shared expert: `sigmoid(x · g) * mlp(x)` for every token.
pub struct SharedExpert {
    pub mlp: Mlp,
    /// `[1, hidden]` gate (`ffn_gate_inp_shexp`).
    pub gate: QMatrix,
}

impl MoeBlock {
    /// Loads layer `i`'s router, experts and (when `cfg.shared_ffn`) shared expert.
    pub fn load(
        w: &WeightLoader<'_>,
        hidden: usize,
        cfg: &MoeConfig,
        i: usize,
    ) -> Result<Self, WeightError> {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        let (e, ffn) = (cfg.n_expert, cfg.expert_ffn);
        let gates = w.experts(&n("ffn_gate_exps"), e, ffn, hidden)?;
        let ups = w.experts(&n("ffn_up_exps"), e, ffn, hidden)?;
        let downs = w.experts(&n("ffn_down_exps"), e, hidden, ffn)?;
        let experts = gates
            .into_iter()
            .zip(ups)
            .zip(downs)
            .map(|((gate, up), down)| Mlp {
                gate_up: FusedLinear::new(vec![gate, up]),
                down,
            })
            .collect();
        let shared = match cfg.shared_ffn {
            Some(width) => Some(SharedExpert {
                mlp: w.mlp_named(&format!("blk.{i}."), "_shexp", hidden, width)?,
                gate: w.row_matrix(&n("ffn_gate_inp_shexp"), hidden)?,
            }),
            None => None,
        };
        Ok(Self {
            router: w.matrix(&n("ffn_gate_inp"), e, hidden)?,
            experts,
            shared,
            top_k: cfg.n_expert_used,
            renormalize: cfg.norm_topk_prob,
            expert_tokens: (0..e).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Builds a block from parts (tests, benches). Panics on inconsistent shapes.
    pub fn new(
        router: QMatrix,
        experts: Vec<Mlp>,
        shared: Option<SharedExpert>,
        top_k: usize,
        renormalize: bool,
    ) -> Self {
        assert_eq!(router.rows(), experts.len(), "one router row per expert");
        assert!(
            top_k >= 1 && top_k <= experts.len(),
            "1 <= top_k <= n_expert"
        );
        let expert_tokens = (0..experts.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            router,
            experts,
            shared,
            top_k,
            renormalize,
            expert_tokens,
        }
    }

    /// `xn: [T, hidden]` (the normed FFN input) is replaced by the block's output.
    pub fn forward(&self, xn: &mut [f32], t: usize) {
        let (h, e, k) = (self.router.cols(), self.experts.len(), self.top_k);
        let max_ffn = self.experts.iter().map(Mlp::width).max().unwrap_or(0);
        let max_ffn = max_ffn.max(self.shared.as_ref().map_or(0, |s| s.mlp.width()));
        SCRATCH.with(|cell| {
            let s = &mut *cell.borrow_mut();
            s.reserve(t, h, e, k, max_ffn);
            // 0. Shared expert first: it reads the same input xn. shared: [T, h]
            if let Some(shared) = &self.shared {
                shared.forward(xn, t, s);
            }
            // 1. Route. logits: [T, E] → ids, weights: [T, k]
            self.router.matmul(xn, t, &mut s.logits[..t * e]);
            let (ids, weights) = (&mut s.ids[..t * k], &mut s.weights[..t * k]);
            topk_softmax(&s.logits[..t * e], e, k, self.renormalize, ids, weights);
            // 2. Group the T·k (token, rank) pairs by expert (no padding on the CPU).
            s.align.compute(ids, e, 1);
            // 3. Gather rows in expert order. rows: [T·k, h]
            let rows = &mut s.rows[..t * k * h];
            permute(xn, h, k, &s.align.sorted, rows);
            // 4. Each expert once over all its rows, in place: rows[r] ← expert(rows[r]).
            for (ex, expert) in self.experts.iter().enumerate() {
                let range = s.align.rows(ex);
                if range.is_empty() {
                    continue;
                }
                let n = range.len();
                self.expert_tokens[ex].fetch_add(n as u64, Ordering::Relaxed);
                let x = &mut rows[range.start * h..range.end * h];
                expert.forward(x, n, &mut s.gate, &mut s.up, &mut s.fused);
            }
            // 5. xn[t] = Σ_r weights[t, r] · rows[inv[t, r]], ranks added in order.
            unpermute_weighted(rows, &s.align.inv, weights, k, h, xn);
            if self.shared.is_some() {
                add_assign(xn, &s.shared[..t * h]);
            }
        });
    }

    /// Bytes of all weights (router, every expert, shared expert).
    pub fn size_bytes(&self) -> usize {
        let mlp = |m: &Mlp| m.gate_up.size_bytes() + m.down.size_bytes();
        self.router.size_bytes()
            + self.experts.iter().map(mlp).sum::<usize>()
            + self
                .shared
                .as_ref()
                .map_or(0, |s| mlp(&s.mlp) + s.gate.size_bytes())
    }

    /// The live `[E]` routed-token counters of this layer.
    pub fn expert_tokens(&self) -> Arc<[AtomicU64]> {
        Arc::clone(&self.expert_tokens)
    }
}

impl SharedExpert {
    /// `s.shared[t] = sigmoid(xn[t] · gate) * mlp(xn[t])` for `xn: [T, h]`.
    fn forward(&self, xn: &[f32], t: usize, s: &mut MoeScratch) {
        let h = self.gate.cols();
        let out = &mut s.shared[..t * h];
        out.copy_from_slice(xn);
        self.mlp
            .forward(out, t, &mut s.gate, &mut s.up, &mut s.fused);
        let g = &mut s.logits[..t];
        self.gate.matmul(xn, t, g);
        for (row, &g) in out.chunks_exact_mut(h).zip(g.iter()) {
            let gate = sigmoid_as_ggml(g);
            for v in row {
                *v *= gate;
            }
        }
    }
}

/// llama.cpp computes the shared-expert gate as `silu(g) / g` (one element, so ggml's
/// scalar SiLU with libm `expf`). At g = 0 that is 0/0; we return the limit, 1/2.
fn sigmoid_as_ggml(g: f32) -> f32 {
    if g == 0.0 {
        return 0.5;
    }
    (g / (1.0 + (-g).exp())) / g
}

/// Tokens routed to each expert of each MoE layer since load, live: the counters behind
/// `tessera_moe_expert_tokens_total{layer, expert}`.
#[derive(Clone, Default)]
pub struct ExpertTokenCounts {
    /// `(layer index, [E] counters)` for every MoE layer, in layer order.
    layers: Vec<(usize, Arc<[AtomicU64]>)>,
}

impl ExpertTokenCounts {
    /// `None` when there are no MoE layers.
    pub fn collect(layers: impl Iterator<Item = (usize, Arc<[AtomicU64]>)>) -> Option<Self> {
        let layers: Vec<_> = layers.collect();
        (!layers.is_empty()).then_some(Self { layers })
    }

    /// Current `(layer, expert, tokens)` for every counter, in layer then expert order.
    pub fn snapshot(&self) -> Vec<(usize, usize, u64)> {
        self.layers
            .iter()
            .flat_map(|(layer, counts)| {
                counts
                    .iter()
                    .enumerate()
                    .map(move |(e, c)| (*layer, e, c.load(Ordering::Relaxed)))
            })
            .collect()
    }
}

/// Per-step buffers, grown to the largest step and reused.
#[derive(Default)]
struct MoeScratch {
    /// `[T, E]` router logits (and `[T]` shared-expert gate logits).
    logits: Vec<f32>,
    /// `[T, k]`
    ids: Vec<u32>,
    /// `[T, k]`
    weights: Vec<f32>,
    align: MoeAlign,
    /// `[T·k, h]` rows in expert order: expert inputs, then outputs.
    rows: Vec<f32>,
    /// `[T, ffn]` (an expert never gets more rows than tokens).
    gate: Vec<f32>,
    up: Vec<f32>,
    fused: Vec<f32>,
    /// `[T, h]` shared-expert output.
    shared: Vec<f32>,
}

impl MoeScratch {
    fn reserve(&mut self, t: usize, h: usize, e: usize, k: usize, ffn: usize) {
        let grow = |v: &mut Vec<f32>, n: usize| {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        };
        grow(&mut self.logits, t * e.max(1));
        grow(&mut self.weights, t * k);
        grow(&mut self.rows, t * k * h);
        grow(&mut self.gate, t * ffn);
        grow(&mut self.up, t * ffn);
        grow(&mut self.shared, t * h);
        if self.ids.len() < t * k {
            self.ids.resize(t * k, 0);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<MoeScratch> = RefCell::new(MoeScratch::default());
}
