//! The lane loop shared by the x86 V kernels (`avx512::accumulate_v`,
//! `avx2::accumulate_v`): for each of the 64 lanes of ggml's V dot products (positions
//! `lane, lane + 64, …`), the kernel's pass over the tile's rows and heads, reading the
//! lane's V rows from a side-by-side copy when the tile has several rows, and asking for
//! the rows of a lane a few ahead (`prefetch_rows`, which also serves the score pass's K
//! rows, `avx2::tiled_scores`). The kernels zero the lanes no
//! position reaches themselves (`avx2::zero_unreached_lanes`).

use half::f16;

use crate::ops::ggml_math::F16_STEP;

/// Tiles of at least this many query rows read a lane's V rows from a copy
/// (`gather_lane`); a single row (decode) reads each V row once anyway.
const GATHER_MIN_ROWS: usize = 2;

/// The probabilities of a tile, as the V kernels take them: `probs[(r * group + g) *
/// stride + pos]` for row `r` (context `n_ctx[r]`) and head `g`.
pub(super) struct TileProbs<'a> {
    pub n_ctx: &'a [usize],
    pub group: usize,
    pub probs: &'a [f32],
    pub stride: usize,
}

/// One kernel's work on one lane: `acc[r, g, lane, :]` for every row and head of `tile`
/// that reaches the lane, V row of `pos` at `slot_of(pos)` in `v_cache`.
pub(super) trait LanePass {
    /// # Safety
    /// The kernel's CPU features; sizes as `accumulate_lanes`.
    unsafe fn lane<F: Fn(usize) -> usize>(
        tile: &TileProbs<'_>,
        v_cache: &[f16],
        slot_of: &F,
        lane: usize,
        acc: &mut [f32],
    );
}

/// `P`'s pass over every lane a row reaches, V rows of `hd` values: the body of the
/// kernels' `accumulate_v`. `lane_rows` is scratch for `gather_lane`.
///
/// # Safety
/// `P`'s CPU features; `tile.probs` holds `n_ctx.len() * group * stride` values, `acc`
/// `n_ctx.len() * group * 64 * 64`, and `slot_of(pos) + 64 <= v_cache.len()` for
/// `pos < max(n_ctx)`.
#[inline(always)]
pub(super) unsafe fn accumulate_lanes<P: LanePass>(
    tile: &TileProbs<'_>,
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    hd: usize,
    acc: &mut [f32],
    lane_rows: &mut Vec<f16>,
) {
    let n_max = tile.n_ctx.iter().copied().max().unwrap_or(0);
    // Where `gather_lane` put position `pos`'s row.
    let gathered_slot = |pos: usize| pos / F16_STEP * hd;
    let lanes = F16_STEP.min(n_max);
    for lane in 0..lanes {
        if lane + PREFETCH_LANES < lanes {
            let ahead = (lane + PREFETCH_LANES..n_max).step_by(F16_STEP);
            prefetch_rows(v_cache, slot_of, ahead, hd);
        }
        if tile.n_ctx.len() >= GATHER_MIN_ROWS {
            let rows = gather_lane(v_cache, slot_of, lane, n_max, hd, lane_rows);
            P::lane(tile, rows, &gathered_slot, lane, acc);
        } else {
            P::lane(tile, v_cache, slot_of, lane, acc);
        }
    }
}

/// Lanes ahead of the V pass whose rows are prefetched: a lane's rows lie 64 token rows
/// apart in scattered cache blocks, an order no hardware prefetcher follows, so without
/// help the loads of only a few lanes are in flight at a time. In the default model's
/// c = 32 run on the AVX2 path the V pass took 8 % of the time (a timing-only variant
/// without it ran 231 → 251 tok/s); asking 8 lanes ahead made the run 0.8-2.6 % faster
/// (16 lanes: no better; bench/NOTES.md §34).
const PREFETCH_LANES: usize = 8;
/// f16 values in one 64-byte cache line.
const LINE_VALUES: usize = 32;

/// Asks for the rows (`hd` values each, at `slot_of(pos)` in `cache`) of `positions` into
/// L1: the V pass's lane ahead, the score pass's tiles ahead (`avx2::tiled_scores`).
#[inline(always)]
pub(super) fn prefetch_rows(
    cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    positions: impl Iterator<Item = usize>,
    hd: usize,
) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for pos in positions {
        // The row the pass reads (same bounds).
        let at = slot_of(pos);
        for line in cache[at..at + hd].chunks(LINE_VALUES) {
            // SAFETY: the address lies inside `cache`, and a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr() as *const i8) };
        }
    }
}

/// Copies the V rows of positions `lane, lane + 64, … < n` side by side into `rows` and
/// returns them: `[count, hd]`, the `j`-th at `(j · hd)`. In the cache
/// they lie 64 token rows apart, a multiple of 4 KiB for the models served (64 × 384 B
/// for SmolLM2, 64 × 256 B for Qwen2.5-0.5B), so all of a lane's rows fall into the same
/// few L1 sets and evict each other before the tile's next query row reads them again.
/// The copy is read from L1 by every row of the tile.
fn gather_lane<'r>(
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    lane: usize,
    n: usize,
    hd: usize,
    rows: &'r mut Vec<f16>,
) -> &'r [f16] {
    let count = n.saturating_sub(lane).div_ceil(F16_STEP);
    rows.resize(count * hd, f16::ZERO);
    for (j, dst) in rows.chunks_exact_mut(hd).enumerate() {
        let at = slot_of(lane + j * F16_STEP);
        dst.copy_from_slice(&v_cache[at..at + hd]);
    }
    rows
}
