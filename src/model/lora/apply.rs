//! The LoRA updates of one engine step. The batch holds rows of several adapters and of
//! the base model; the base projection has already run once over all `T` rows, then each
//! adapter's rows (`LoraGroup`) are gathered into one block and get `y += scale · B (A x)`
//! with two small matmuls per group (Punica / S-LoRA's segmented update). Rows without
//! an adapter are not touched, so base-model rows give exactly what they give without
//! LoRA, and a row's result does not depend on which other rows share its step (the
//! matmuls are row-independent): batch invariance holds per adapter.
//!
//! The order of operations is llama.cpp's (`llm_build_lora_mm`): `ab = B (A x)`, then
//! `ab · scale`, then `W x + ab`, each rounded to f32.
//!
//! The groups of a step run in parallel on the compute pool, one task per group (their
//! rows are disjoint); inside a task the two matmuls run on that thread
//! (`QMatrix::matmul_here`: the same bits per element as the pooled `matmul`, without
//! its tiles, which cost more than these rank-r products; bench/NOTES.md §18).

use std::cell::RefCell;
use std::sync::Arc;

use super::{LoraAdapter, LoraTarget};
use crate::ops::pool::{self, SharedOut};

thread_local! {
    /// Per-thread scratch of one group's update: gathered inputs `[m, in]`, `A x`
    /// `[m, rank]`, `B (A x)` `[m, out]`.
    static SCRATCH: RefCell<[Vec<f32>; 3]> =
        const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// The rows of one adapter in this step's batch.
struct LoraGroup {
    adapter: Arc<LoraAdapter>,
    /// Batch rows, ascending.
    rows: Vec<usize>,
}

/// Which rows of the step run with which adapter, and the update's scratch buffers.
/// Kept by the runner between steps (rebuilt, not reallocated).
#[derive(Default)]
pub struct LoraStep {
    groups: Vec<LoraGroup>,
}

impl LoraStep {
    /// Forgets the last step's groups.
    pub fn clear(&mut self) {
        self.groups.clear();
    }

    /// Rows `rows` run with `adapter`; adds them to its group (one group per adapter).
    pub fn add_rows(&mut self, adapter: &Arc<LoraAdapter>, rows: std::ops::Range<usize>) {
        match self
            .groups
            .iter_mut()
            .find(|g| Arc::ptr_eq(&g.adapter, adapter))
        {
            Some(group) => group.rows.extend(rows),
            None => self.groups.push(LoraGroup {
                adapter: Arc::clone(adapter),
                rows: rows.collect(),
            }),
        }
    }

    /// True when no row of the step has an adapter.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Number of distinct adapters in the step.
    pub fn num_adapters(&self) -> usize {
        self.groups.len()
    }

    /// The view of this step for decoder layer `layer`.
    pub fn layer(&self, layer: usize) -> LayerLora<'_> {
        LayerLora {
            step: (!self.is_empty()).then_some(self),
            layer,
        }
    }
}

/// The LoRA updates one decoder layer applies in this step (none for base-only steps).
#[derive(Clone, Copy)]
pub struct LayerLora<'a> {
    step: Option<&'a LoraStep>,
    layer: usize,
}

impl LayerLora<'_> {
    /// No adapter anywhere: every `apply` is a no-op.
    pub const NONE: LayerLora<'static> = LayerLora {
        step: None,
        layer: 0,
    };

    /// Whether no adapter applies in this step (every `apply` is a no-op).
    pub fn is_none(&self) -> bool {
        self.step.is_none()
    }

    /// `y[r, out] += scale · B (A x[r, in])` for every row `r` of an adapter that updates
    /// `target`; `x: [T, in]` is the projection's input, `y: [T, out]` its output.
    pub fn apply(&self, target: LoraTarget, x: &[f32], y: &mut [f32], t: usize) {
        let Some(step) = self.step else {
            return;
        };
        if t == 0 {
            return;
        }
        let (k, n) = (x.len() / t, y.len() / t);
        let y_out = SharedOut::new(y);
        pool::run(step.groups.len(), |g| {
            let group = &step.groups[g];
            let Some(pair) = group.adapter.pair(self.layer, target) else {
                return;
            };
            let (m, r) = (group.rows.len(), pair.rank());
            debug_assert_eq!((pair.a.cols(), pair.b.rows()), (k, n));
            SCRATCH.with(|cell| {
                let [xg, xa, ab] = &mut *cell.borrow_mut();
                xg.clear();
                for &row in &group.rows {
                    xg.extend_from_slice(&x[row * k..(row + 1) * k]);
                }
                xa.resize(m * r, 0.0);
                ab.resize(m * n, 0.0);
                pair.a.matmul_here(xg, m, &mut xa[..m * r]);
                pair.b.matmul_here(&xa[..m * r], m, &mut ab[..m * n]);
                for (&row, update) in group.rows.iter().zip(ab.chunks_exact(n)) {
                    // SAFETY: a row belongs to one group, and each group is one task.
                    let out = unsafe { y_out.part(row * n, n) };
                    for (out, &u) in out.iter_mut().zip(update) {
                        *out += u * pair.scale;
                    }
                }
            });
        });
    }
}
