//! AVX-512 attention for `head_dim == 64` over a tile of query rows of one sequence,
//! bit-identical row by row to `attend`'s generic path.
//!
//! Scores: positions are the outer loop, so a K row is read from memory and widened to
//! f32 once per tile (into an 8-row scratch in L1); each query head's `ggml_vec_dot_f16`
//! is the same fold `(a0 + a2) + (a1 + a3)` in two FMAs onto zero, two FMAs that fuse
//! the exact products `a2`, `a3` into the sums (see `attention`), and one add; the 16-lane
//! horizontal sums (`reduce16`: halves, quarters, pairs) of 8 positions are then done
//! together by a transpose, whose every addition pairs the same two operands as
//! `reduce16` does (float addition is commutative). The loop is `avx2::tiled_scores`,
//! shared with the AVX2 kernels.
//!
//! V: for each of ggml's 64 lanes (the outer loop, so a lane's V rows are read from memory
//! once per tile), the positions feeding it (`lane, lane + 64, …`) are accumulated in
//! registers for up to 4 heads at once (a mul for the first, FMAs after: the order
//! `accumulate_v` uses) and stored once, instead of a load and a store of the
//! accumulator row per position. Tiles of short contexts take `fold_v` instead
//! (`v_folded`: the lanes summed and folded in registers, nothing stored).

use half::f16;
use std::arch::x86_64::*;

use super::avx2::{finish1, max_of, tiled_scores, zero_unreached_lanes, ScoreDot};
use super::v_folded::{fold_head, VReg};
use super::v_lanes::{accumulate_lanes, gathered_row, LanePass, TileProbs, VRows};
use crate::ops::ggml_math::x86::{expf16, regs};
use crate::ops::ggml_math::{expf, reduce16, F16_STEP, LANES};

/// The head size these kernels take.
pub const HEAD_DIM: usize = 64;

/// The K (or V) row at element offset `at` as four 16-lane f32 registers.
#[inline(always)]
unsafe fn load_row(cache: &[f16], at: usize) -> [__m512; 4] {
    let row = cache[at..at + HEAD_DIM].as_ptr() as *const __m256i;
    regs(|k| _mm512_cvtph_ps(_mm256_loadu_si256(row.add(k))))
}

/// `reduce64`'s lane-wise fold of one row · query dot: `(a0 + a2) + (a1 + a3)`.
#[inline(always)]
unsafe fn folded_dot(k: &[__m512; 4], q: &[__m512; 4]) -> __m512 {
    let zero = _mm512_setzero_ps();
    // `a0 + a2` as one FMA of a2's exact product onto a0 (`products_fuse_exactly`).
    let a02 = _mm512_fmadd_ps(k[2], q[2], _mm512_fmadd_ps(k[0], q[0], zero));
    let a13 = _mm512_fmadd_ps(k[3], q[3], _mm512_fmadd_ps(k[1], q[1], zero));
    _mm512_add_ps(a02, a13)
}

/// `reduce16`'s first step: `t3[i] = x[i + 8] + x[i]`.
#[inline(always)]
unsafe fn halves(x: __m512) -> __m256 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
    _mm256_add_ps(hi, _mm512_castps512_ps256(x))
}

/// The 16-lane registers of this module.
struct Avx512Dot;

impl ScoreDot for Avx512Dot {
    type Query = [__m512; 4];
    #[inline(always)]
    unsafe fn query(q: *const f32) -> Self::Query {
        regs(|j| _mm512_loadu_ps(q.add(16 * j)))
    }
    #[inline(always)]
    unsafe fn t3(k: &[f32; HEAD_DIM], q: &Self::Query) -> __m256 {
        let k = regs(|j| _mm512_loadu_ps(k.as_ptr().add(16 * j)));
        halves(folded_dot(&k, q))
    }
}

/// `avx2::tiled_scores` with this module's 16-lane registers.
///
/// # Safety
/// `available()`; sizes as `tiled_scores`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn scores(
    k_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    n_ctx: &[usize],
    q16: &[f32],
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    tiled_scores::<Avx512Dot>(k_cache, slot_of, n_ctx, q16, scale, scores, stride)
}

/// For each row `r` of the tile and head `g`: `acc[r, g, lane, :]` = Σ over
/// `pos ≡ lane (mod 64)`, `pos < n_ctx[r]`, of `probs[(r * group + g) * stride + pos] ·
/// v_pos` in position order (a mul, then FMAs); lanes no position reaches are zeroed.
/// Lanes are the outer loop, so a lane's V rows are read from memory once per tile.
///
/// # Safety
/// `available()`; sizes as `v_lanes::accumulate_lanes`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn accumulate_v(
    tile: &TileProbs<'_>,
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    acc: &mut [f32],
    lane_rows: &mut Vec<f32>,
) {
    accumulate_lanes::<Heads>(tile, v_cache, slot_of, HEAD_DIM, acc, lane_rows);
    zero_unreached_lanes(tile.n_ctx, tile.group, acc);
}

/// `accumulate_v`'s work on one lane: up to 4 heads of a row at a time, their
/// accumulators in registers.
struct Heads;

impl LanePass for Heads {
    #[inline(always)]
    unsafe fn lane<F: Fn(usize) -> usize>(
        tile: &TileProbs<'_>,
        rows: VRows<'_, F>,
        lane: usize,
        acc: &mut [f32],
    ) {
        match rows {
            VRows::Cache(v_cache, slot_of) => {
                Heads::rows(tile, &|pos| load_row(v_cache, slot_of(pos)), lane, acc)
            }
            VRows::Gathered(wide) => {
                // SAFETY (`gathered_row`): `accumulate` asks only for the lane's positions.
                let load = |pos: usize| {
                    let row = gathered_row(wide, pos, HEAD_DIM);
                    regs(|k| _mm512_loadu_ps(row.add(16 * k)))
                };
                Heads::rows(tile, &load, lane, acc)
            }
        }
    }
}

impl Heads {
    /// Every row's heads, up to 4 at a time; `load(pos)`: position `pos`'s V row.
    #[inline(always)]
    unsafe fn rows(
        tile: &TileProbs<'_>,
        load: &impl Fn(usize) -> [__m512; 4],
        lane: usize,
        acc: &mut [f32],
    ) {
        let mut g0 = 0;
        while g0 < tile.group {
            let end = (g0 + 4).min(tile.group);
            match end - g0 {
                1 => Heads::accumulate::<1>(tile, load, lane, g0, acc),
                2 => Heads::accumulate::<2>(tile, load, lane, g0, acc),
                3 => Heads::accumulate::<3>(tile, load, lane, g0, acc),
                _ => Heads::accumulate::<4>(tile, load, lane, g0, acc),
            }
            g0 = end;
        }
    }

    /// Lane `lane` of heads `g0..g0 + G` of every row, their accumulators in registers.
    #[inline(always)]
    unsafe fn accumulate<const G: usize>(
        tile: &TileProbs<'_>,
        load: &impl Fn(usize) -> [__m512; 4],
        lane: usize,
        g0: usize,
        acc: &mut [f32],
    ) {
        for (r, &n) in tile.n_ctx.iter().enumerate().filter(|&(_, &n)| lane < n) {
            let base = r * tile.group + g0;
            // SAFETY: `pos < n <= stride` and `base + g` is one of the tile's heads, so the
            // index lies in `probs` (`rows · group · stride` values, `accumulate_lanes`).
            let prob = |g: usize, pos: usize| {
                let at = (base + g) * tile.stride + pos;
                debug_assert!(at < tile.probs.len());
                _mm512_set1_ps(*tile.probs.get_unchecked(at))
            };
            let v = load(lane);
            let mut sums: [[__m512; 4]; G] = regs(|g| regs(|k| _mm512_mul_ps(v[k], prob(g, lane))));
            for pos in (lane + F16_STEP..n).step_by(F16_STEP) {
                let v = load(pos);
                for (g, sg) in sums.iter_mut().enumerate() {
                    let p = prob(g, pos);
                    for k in 0..4 {
                        sg[k] = _mm512_fmadd_ps(v[k], p, sg[k]);
                    }
                }
            }
            for (g, sg) in sums.iter().enumerate() {
                let dst = acc[((base + g) * F16_STEP + lane) * HEAD_DIM..].as_mut_ptr();
                for (k, &x) in sg.iter().enumerate() {
                    _mm512_storeu_ps(dst.add(16 * k), x);
                }
            }
        }
    }
}

/// `attention::fold_lanes` of one head's 64 V lanes (`lanes: [64, 64]`), written to
/// `out: [64]`: per 16 outputs, `x_l = (a_l + a_{l+32}) + (a_{l+16} + a_{l+48})`, then
/// `reduce16`'s tree over `l`, all in registers.
///
/// # Safety
/// `available()`; `lanes` holds 64 × 64 values, `out` 64.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn fold_lanes(lanes: &[f32], out: &mut [f32]) {
    assert!(lanes.len() >= F16_STEP * HEAD_DIM && out.len() >= HEAD_DIM);
    for c in (0..HEAD_DIM).step_by(LANES) {
        let a = |lane: usize| _mm512_loadu_ps(lanes.as_ptr().add(lane * HEAD_DIM + c));
        let x: [__m512; LANES] = regs(|l| {
            let x0 = _mm512_add_ps(a(l), a(l + 2 * LANES));
            let x1 = _mm512_add_ps(a(l + LANES), a(l + 3 * LANES));
            _mm512_add_ps(x0, x1)
        });
        let t3: [__m512; 8] = regs(|i| _mm512_add_ps(x[i + 8], x[i]));
        let t6: [__m512; 4] = regs(|i| _mm512_add_ps(t3[i + 4], t3[i]));
        let sum = _mm512_add_ps(_mm512_add_ps(t6[0], t6[2]), _mm512_add_ps(t6[1], t6[3]));
        _mm512_storeu_ps(out.as_mut_ptr().add(c), sum);
    }
}

/// `v_folded::fold_head` of one row and head (`probs: [n]`, `out: [64]`) with this
/// module's registers, 32 outputs per pass.
///
/// # Safety
/// `available()`; sizes as `fold_head`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn fold_v(
    probs: &[f32],
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    out: &mut [f32],
) {
    fold_head::<__m512, FOLD_REGS>(probs, v_cache, slot_of, out)
}

/// Registers of outputs per pass of `fold_v`.
const FOLD_REGS: usize = 4;

impl VReg for __m512 {
    const WIDTH: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn widen(row: *const f16) -> Self {
        _mm512_cvtph_ps(_mm256_loadu_si256(row as *const __m256i))
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut f32) {
        _mm512_storeu_ps(dst, self)
    }
}

/// `reduce16` of one register.
#[inline(always)]
unsafe fn reduce16_reg(x: __m512) -> f32 {
    finish1(halves(x))
}

/// `softmax_in_place` then `round_in_place_to_f16` (the generic path's two steps), with
/// the same bits: whole 16-lane chunks in registers, the last partial chunk lane by lane.
///
/// # Safety
/// `available()`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn softmax_to_f16(x: &mut [f32]) {
    let whole = x.len() - x.len() % LANES;
    let max = max_of(x);
    let max16 = _mm512_set1_ps(max);
    let mut sum = 0f64;
    for i in (0..whole).step_by(LANES) {
        let p = x.as_mut_ptr().add(i);
        let e = expf16(_mm512_sub_ps(_mm512_loadu_ps(p), max16));
        _mm512_storeu_ps(p, e);
        sum += reduce16_reg(e) as f64;
    }
    if whole < x.len() {
        let mut lanes = [0f32; LANES];
        for (lane, v) in lanes.iter_mut().zip(x[whole..].iter_mut()) {
            *v = expf(*v - max);
            *lane = *v;
        }
        sum += reduce16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    let inv16 = _mm512_set1_ps(inv);
    for i in (0..whole).step_by(LANES) {
        let p = x.as_mut_ptr().add(i);
        let scaled = _mm512_mul_ps(_mm512_loadu_ps(p), inv16);
        let half = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(scaled);
        _mm512_storeu_ps(p, _mm512_cvtph_ps(half));
    }
    for v in x[whole..].iter_mut() {
        *v = f16::from_f32(*v * inv).to_f32();
    }
}
