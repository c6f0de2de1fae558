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
use super::tensor_names::LayerTensor;
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

/// A `MoeBlock`'s parts as loaded (`MoeBlock::parts`).
pub struct MoeParts<'a> {
    /// `[E, hidden]`
    pub router: &'a QMatrix,
    pub experts: &'a [Mlp],
    pub shared: Option<&'a SharedExpert>,
    pub top_k: usize,
    /// Renormalize the top-k probabilities to sum to 1 (`norm_topk_prob`).
    pub renormalize: bool,
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
        use LayerTensor::*;
        let n = |t: LayerTensor| w.naming().layer(i, t);
        let (e, ffn) = (cfg.n_expert, cfg.expert_ffn);
        let gates = w.experts(&n(GateExps), e, ffn, hidden)?;
        let ups = w.experts(&n(UpExps), e, ffn, hidden)?;
        let downs = w.experts(&n(DownExps), e, hidden, ffn)?;
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
                mlp: Mlp::load(w, i, [SharedGate, SharedUp, SharedDown], hidden, width)?,
                gate: w.row_matrix(&n(SharedRouter), hidden)?,
            }),
            None => None,
        };
        Ok(Self {
            router: w.matrix_as_stored(&n(Router), e, hidden)?,
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

    /// The block's weights and routing settings, for backends that copy them to a device.
    pub fn parts(&self) -> MoeParts<'_> {
        MoeParts {
            router: &self.router,
            experts: &self.experts,
            shared: self.shared.as_ref(),
            top_k: self.top_k,
            renormalize: self.renormalize,
        }
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
pub(crate) fn sigmoid_as_ggml(g: f32) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use rand::{Rng, SeedableRng};

    const H: usize = 64;
    const FFN: usize = 64;

    fn random(rng: &mut rand::rngs::StdRng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    fn matrix(rng: &mut rand::rngs::StdRng, rows: usize, cols: usize, scale: f32) -> QMatrix {
        QMatrix::quantize(
            GgmlDType::Q8_0,
            rows,
            cols,
            &random(rng, rows * cols, scale),
        )
        .unwrap()
    }

    fn mlp(rng: &mut rand::rngs::StdRng, ffn: usize) -> Mlp {
        Mlp {
            gate_up: FusedLinear::new(vec![matrix(rng, ffn, H, 0.2), matrix(rng, ffn, H, 0.2)]),
            down: matrix(rng, H, ffn, 0.2),
        }
    }

    /// `e` experts, top-`k`, with a shared expert (and no renormalization, as Qwen2-MoE)
    /// when `shared`; a `favourite` expert's router row is all ones, so it wins for every
    /// token whose elements are all positive.
    fn block(seed: u64, e: usize, k: usize, shared: bool, favourite: Option<usize>) -> MoeBlock {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut router = random(&mut rng, e * H, 0.3);
        if let Some(f) = favourite {
            router[f * H..(f + 1) * H].fill(1.0);
        }
        let router = QMatrix::quantize(GgmlDType::F32, e, H, &router).unwrap();
        let experts = (0..e).map(|_| mlp(&mut rng, FFN)).collect();
        let renormalize = !shared;
        let shared = shared.then(|| SharedExpert {
            mlp: mlp(&mut rng, 2 * FFN),
            gate: QMatrix::quantize(GgmlDType::F32, 1, H, &random(&mut rng, H, 0.3)).unwrap(),
        });
        MoeBlock::new(router, experts, shared, k, renormalize)
    }

    /// The block's definition, one token and one expert at a time.
    fn reference(b: &MoeBlock, x: &[f32]) -> Vec<f32> {
        let (e, k) = (b.experts.len(), b.top_k);
        let mut out = Vec::new();
        for row in x.chunks_exact(H) {
            let mut logits = vec![0.0; e];
            b.router.matmul(row, 1, &mut logits);
            let (mut ids, mut w) = (vec![0u32; k], vec![0f32; k]);
            topk_softmax(&logits, e, k, b.renormalize, &mut ids, &mut w);
            let mut acc = vec![0f32; H];
            for (r, (&id, &wr)) in ids.iter().zip(&w).enumerate() {
                let mut y = row.to_vec();
                let f = b.experts[id as usize].width();
                let (mut g, mut u, mut fused) = (vec![0.0; f], vec![0.0; f], Vec::new());
                b.experts[id as usize].forward(&mut y, 1, &mut g, &mut u, &mut fused);
                for (a, v) in acc.iter_mut().zip(&y) {
                    *a = if r == 0 { v * wr } else { *a + v * wr };
                }
            }
            if let Some(s) = &b.shared {
                let mut y = row.to_vec();
                let f = s.mlp.width();
                let (mut g, mut u, mut fused) = (vec![0.0; f], vec![0.0; f], Vec::new());
                s.mlp.forward(&mut y, 1, &mut g, &mut u, &mut fused);
                let mut gl = [0f32];
                s.gate.matmul(row, 1, &mut gl);
                let gate = sigmoid_as_ggml(gl[0]);
                for (a, v) in acc.iter_mut().zip(&y) {
                    *a += v * gate;
                }
            }
            out.extend(acc);
        }
        out
    }

    fn run(b: &MoeBlock, x: &[f32]) -> Vec<f32> {
        let mut y = x.to_vec();
        b.forward(&mut y, x.len() / H);
        y
    }

    #[test]
    fn grouped_dispatch_equals_the_per_token_definition_bit_for_bit() {
        for (seed, e, k, shared) in [(1, 8, 2, false), (2, 8, 1, true), (3, 16, 8, true)] {
            let b = block(seed, e, k, shared, None);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 100);
            let x = random(&mut rng, 37 * H, 2.0);
            assert_eq!(run(&b, &x), reference(&b, &x), "seed {seed}");
        }
    }

    #[test]
    fn a_tokens_output_does_not_depend_on_its_batch() {
        let b = block(4, 8, 2, true, None);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let x = random(&mut rng, 20 * H, 2.0);
        let batched = run(&b, &x);
        // Alone, and in reverse order (different expert groupings and row positions).
        for (t, row) in x.chunks_exact(H).enumerate() {
            assert_eq!(run(&b, row), &batched[t * H..(t + 1) * H], "token {t}");
        }
        let reversed: Vec<f32> = x.chunks_exact(H).rev().flatten().copied().collect();
        let out = run(&b, &reversed);
        for (t, row) in out.chunks_exact(H).rev().enumerate() {
            assert_eq!(row, &batched[t * H..(t + 1) * H], "token {t} reversed");
        }
    }

    #[test]
    fn all_tokens_on_one_expert_and_counters_add_up() {
        let b = block(6, 8, 2, false, Some(5));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let x: Vec<f32> = random(&mut rng, 12 * H, 0.5)
            .iter()
            .map(|v| v + 1.0) // every row points along the favourite's router row
            .collect();
        assert_eq!(run(&b, &x), reference(&b, &x));
        let counts: Vec<u64> = b
            .expert_tokens()
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts[5], 12, "expert 5 takes every token: {counts:?}");
        assert_eq!(counts.iter().sum::<u64>(), 24);
        let all = ExpertTokenCounts::collect([(3, b.expert_tokens())].into_iter()).unwrap();
        assert_eq!(all.snapshot()[5], (3, 5, 12));
        assert!(ExpertTokenCounts::collect(std::iter::empty()).is_none());
    }
}
