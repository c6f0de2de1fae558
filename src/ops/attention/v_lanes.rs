//! The lane loop shared by the x86 V kernels (`avx512::accumulate_v`,
//! `avx2::accumulate_v`): for each of the 64 lanes of ggml's V dot products (positions
//! `lane, lane + 64, …`), the kernel's pass over the tile's rows and heads, reading the
//! lane's V rows from a side-by-side copy widened to f32 when the tile has several rows
//! (`VRows`), and asking for the rows of a lane a few ahead (`prefetch_rows`, which also
//! serves the score pass's K rows, `avx2::tiled_scores`). The kernels zero the lanes no
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

/// Where a lane pass reads position `pos`'s V row (`hd` values).
pub(super) enum VRows<'a, F> {
    /// The cache itself: f16 at `slot_of(pos)` (decode: each row is read once anyway).
    Cache(&'a [f16], &'a F),
    /// `gather_lane`'s copy, widened to f32: row `pos` at `pos / 64 * hd`.
    Gathered(&'a [f32]),
}

/// One kernel's work on one lane: `acc[r, g, lane, :]` for every row and head of `tile`
/// that reaches the lane.
pub(super) trait LanePass {
    /// # Safety
    /// The kernel's CPU features; sizes as `accumulate_lanes`.
    unsafe fn lane<F: Fn(usize) -> usize>(
        tile: &TileProbs<'_>,
        rows: VRows<'_, F>,
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
    lane_rows: &mut Vec<f32>,
) {
    let n_max = tile.n_ctx.iter().copied().max().unwrap_or(0);
    let lanes = F16_STEP.min(n_max);
    for lane in 0..lanes {
        if lane + PREFETCH_LANES < lanes {
            let ahead = (lane + PREFETCH_LANES..n_max).step_by(F16_STEP);
            prefetch_rows(v_cache, slot_of, ahead, hd);
        }
        if tile.n_ctx.len() >= GATHER_MIN_ROWS {
            let rows = gather_lane(v_cache, slot_of, lane, n_max, hd, lane_rows);
            P::lane(
                tile,
                VRows::<'_, fn(usize) -> usize>::Gathered(rows),
                lane,
                acc,
            );
        } else {
            P::lane(tile, VRows::Cache(v_cache, slot_of), lane, acc);
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

/// Copies the V rows of positions `lane, lane + 64, … < n` side by side into `rows`,
/// widened to f32, and returns them: `[count, hd]`, the `j`-th at `(j · hd)`.
/// In the cache they lie 64 token rows apart, a multiple of 4 KiB for the models served
/// (64 × 384 B for SmolLM2, 64 × 256 B for Qwen2.5-0.5B), so all of a lane's rows fall
/// into the same few L1 sets and evict each other before the tile's next query row reads
/// them again. The copy is read from L1 by every row of the tile, and widened once for
/// all of them rather than once per row (bench/NOTES.md §40).
///
/// # Safety
/// As `accumulate_lanes`.
#[inline(always)]
unsafe fn gather_lane<'r>(
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    lane: usize,
    n: usize,
    hd: usize,
    rows: &'r mut Vec<f32>,
) -> &'r [f32] {
    let count = n.saturating_sub(lane).div_ceil(F16_STEP);
    rows.resize(count * hd, 0.0);
    for (j, dst) in rows.chunks_exact_mut(hd).enumerate() {
        let at = slot_of(lane + j * F16_STEP);
        widen(&v_cache[at..at + hd], dst);
    }
    rows
}

/// `dst = src` widened to f32 (exact, `vcvtph2ps`), `hd` a multiple of 8.
///
/// # Safety
/// AVX2 and F16C (both kernel sets have them).
#[inline(always)]
unsafe fn widen(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    assert_eq!(src.len(), dst.len());
    for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr() as *const __m128i));
        _mm256_storeu_ps(d.as_mut_ptr(), v);
    }
}

/// Position `pos`'s row (`hd` values) in `gather_lane`'s copy `wide`.
///
/// # Safety
/// `pos` is one of the gathered lane's positions (below the tile's longest context).
#[inline(always)]
pub(super) unsafe fn gathered_row(wide: &[f32], pos: usize, hd: usize) -> *const f32 {
    let at = pos / F16_STEP * hd;
    debug_assert!(at + hd <= wide.len());
    wide.as_ptr().add(at)
}
