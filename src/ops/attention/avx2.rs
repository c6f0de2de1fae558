//! AVX2 attention for `head_dim == 64` over a tile of query rows of one sequence: the
//! AVX-512 kernels' loop order with 8-lane registers, bit-identical row by row to
//! `attend`'s generic path (for CPUs without AVX-512, or `TESSERA_CPU_FEATURES=avx2`).
//!
//! A 16-lane chunk of ggml's AVX-512 order is two registers here (lanes 0..8, 8..16);
//! every addition and FMA pairs the same operands as the 16-lane kernels do, so each
//! score, probability and V sum has the same bits.
//!
//! Scores: positions are the outer loop (a K row is read from memory once per tile);
//! `reduce16`'s first step (`x[i + 8] + x[i]`) is the add of the two halves, and 8
//! positions' remaining steps are done together by `finish8`.
//! Softmax: ggml's AVX-512 `expf` lane by lane in 8 lanes, `scalef` as the scalar twin
//! does it (in f64, 4 lanes at a time).
//! V: per lane of ggml's 64, row and half of the dimensions, the positions feeding it
//! accumulated for up to 3 heads at once in registers (a mul, then FMAs) and stored once;
//! tiles of short contexts take `fold_v` (`v_folded`) instead.

use half::f16;
use std::arch::x86_64::*;

use super::v_folded::{fold_head, VReg};
use super::v_lanes::{accumulate_lanes, gathered_row, prefetch_rows, LanePass, TileProbs, VRows};
use crate::ops::ggml_math::x86::{expf8, regs, widen_f16};
use crate::ops::ggml_math::{expf, reduce16, F16_STEP, LANES};

/// The head size these kernels take.
pub const HEAD_DIM: usize = 64;
/// Positions reduced together.
pub(super) const POS_TILE: usize = 8;

/// One K row · query head as ggml's `t3`: `reduce64`'s lane fold `(a0 + a2) + (a1 + a3)`
/// of the four 16-lane chunks' products (`a0`, `a1` FMAs onto zero, `a2`, `a3` fused into
/// the sums: exact products, see `attention`), then `reduce16`'s first step. Chunk `j`'s
/// lanes `8h..8h + 8` are register `2j + h`.
#[inline(always)]
unsafe fn dot_t3(k: &[__m256; 8], q: &[__m256; 8]) -> __m256 {
    let zero = _mm256_setzero_ps();
    // `a[i] + a[i + 4]` as one FMA of the second (exact) product onto the first
    // (`products_fuse_exactly`).
    let pair = |i: usize| _mm256_fmadd_ps(k[i + 4], q[i + 4], _mm256_fmadd_ps(k[i], q[i], zero));
    let fold = |h: usize| _mm256_add_ps(pair(h), pair(2 + h));
    _mm256_add_ps(fold(1), fold(0))
}

/// The rest of `reduce16` for 8 positions' `t3` at once: `[r_0, …, r_7]`.
#[inline(always)]
pub(super) unsafe fn finish8(t3: &[__m256; POS_TILE]) -> __m256 {
    // s[p] = [t6 of p | t6 of p + 4], t6[i] = t3[i + 4] + t3[i].
    let s: [__m256; 4] = regs(|p| {
        let lo = _mm256_permute2f128_ps::<0x20>(t3[p], t3[p + 4]);
        let hi = _mm256_permute2f128_ps::<0x31>(t3[p], t3[p + 4]);
        _mm256_add_ps(hi, lo)
    });
    // u = [t6[0] + t6[2], t6[1] + t6[3]] of positions (0, 1 | 4, 5) and (2, 3 | 6, 7).
    let pair = |a: __m256, b: __m256| {
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm256_shuffle_ps::<0b11_10_11_10>(a, b),
        )
    };
    let (u01, u23) = (pair(s[0], s[1]), pair(s[2], s[3]));
    _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(u01, u23),
        _mm256_shuffle_ps::<0b11_01_11_01>(u01, u23),
    )
}

/// The rest of `reduce16` for one `t3`.
#[inline(always)]
pub(super) unsafe fn finish1(t3: __m256) -> f32 {
    let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
    let u = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
    _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)))
}

/// One kernel set's query-head dot product for `tiled_scores`.
pub(super) trait ScoreDot {
    /// A query head (64 values) in registers.
    type Query;
    /// Loads query head `q: [64]`.
    ///
    /// # Safety
    /// The set's CPU features; `q` points at 64 values.
    unsafe fn query(q: *const f32) -> Self::Query;
    /// A K row (widened to f32) · `q`, as ggml's `t3` (`reduce16`'s first step done).
    ///
    /// # Safety
    /// The set's CPU features.
    unsafe fn t3(k: &[f32; HEAD_DIM], q: &Self::Query) -> __m256;
}

/// The 8-lane registers of this module.
struct Avx2Dot;

impl ScoreDot for Avx2Dot {
    type Query = [__m256; 8];
    #[inline(always)]
    unsafe fn query(q: *const f32) -> Self::Query {
        regs(|j| _mm256_loadu_ps(q.add(8 * j)))
    }
    #[inline(always)]
    unsafe fn t3(k: &[f32; HEAD_DIM], q: &Self::Query) -> __m256 {
        dot_t3(&regs(|i| _mm256_loadu_ps(k.as_ptr().add(8 * i))), q)
    }
}

/// Scores of a tile of query rows of one sequence: `scores[(r * group + g) * stride + pos]
/// = (k_pos · q16[r, g]) * scale` for `pos < n_ctx[r]`. Positions are the outer loop, so
/// each K row is read from memory and widened to f32 once for the whole tile (every query
/// row and head); 8 positions' sums are finished together.
///
/// # Safety
/// `D`'s CPU features; `q16` holds `n_ctx.len() * group * 64` values, `scores`
/// `n_ctx.len() * group * stride`, every `n_ctx[r] <= stride`, and
/// `slot_of(pos) + 64 <= k_cache.len()` for `pos < max(n_ctx)`.
#[inline(always)]
pub(super) unsafe fn tiled_scores<D: ScoreDot>(
    k_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    n_ctx: &[usize],
    q16: &[f32],
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    let group = q16.len() / (n_ctx.len() * HEAD_DIM);
    let n_max = n_ctx.iter().copied().max().unwrap_or(0);
    let scale8 = _mm256_set1_ps(scale);
    let mut k_tile = [[0f32; HEAD_DIM]; POS_TILE];
    // The first tiles' rows are asked for at once, then each tile asks for the tile
    // `PREFETCH_TILES` ahead.
    let first = 0..(PREFETCH_TILES * POS_TILE).min(n_max);
    prefetch_rows(k_cache, slot_of, first, HEAD_DIM);
    for p0 in (0..n_max).step_by(POS_TILE) {
        let ahead = (p0 + PREFETCH_TILES * POS_TILE).min(n_max);
        let next = ahead..(ahead + POS_TILE).min(n_max);
        prefetch_rows(k_cache, slot_of, next, HEAD_DIM);
        for (p, k) in k_tile.iter_mut().enumerate().take(n_max - p0) {
            let at = slot_of(p0 + p);
            widen_f16(&k_cache[at..at + HEAD_DIM], k);
        }
        for (r, &n) in n_ctx.iter().enumerate().filter(|&(_, &n)| p0 < n) {
            for g in 0..group {
                let head = r * group + g;
                let q = D::query(q16[head * HEAD_DIM..(head + 1) * HEAD_DIM].as_ptr());
                let out = &mut scores[head * stride..head * stride + n];
                if p0 + POS_TILE <= n {
                    let t3: [__m256; POS_TILE] = regs(|p| D::t3(&k_tile[p], &q));
                    let r8 = _mm256_mul_ps(finish8(&t3), scale8);
                    _mm256_storeu_ps(out.as_mut_ptr().add(p0), r8);
                } else {
                    for (pos, s) in out.iter_mut().enumerate().skip(p0) {
                        *s = finish1(D::t3(&k_tile[pos - p0], &q)) * scale;
                    }
                }
            }
        }
    }
}

/// Score tiles ahead of `tiled_scores` whose K rows are prefetched: the rows lie in
/// scattered cache blocks (a kv head's 128 bytes of each 384-byte token row for SmolLM2),
/// and a decode step's K comes from memory, as no layer's cache stays in L2 until the next
/// step. In `bench_attention_shapes`' 30-layer decode shape (AVX2) a layer took 0.55 →
/// 0.49-0.51 ms with 4 tiles ahead; 1, 2 and 8 tiles gave 0.51-0.52 (bench/NOTES.md §35).
const PREFETCH_TILES: usize = 4;

/// `tiled_scores` with this module's 8-lane registers.
///
/// # Safety
/// AVX2, FMA and F16C; sizes as `tiled_scores`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores(
    k_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    n_ctx: &[usize],
    q16: &[f32],
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    tiled_scores::<Avx2Dot>(k_cache, slot_of, n_ctx, q16, scale, scores, stride)
}

/// For each row `r` of the tile and head `g`: `acc[r, g, lane, :]` = Σ over
/// `pos ≡ lane (mod 64)`, `pos < n_ctx[r]`, of `probs[(r * group + g) * stride + pos] ·
/// v_pos` in position order (a mul, then FMAs); lanes no position reaches are zeroed.
/// Per lane, row and half of the 64 dimensions, up to 3 heads at once share each widened
/// V half-row (12 accumulators, 4 inputs: the 16 registers).
///
/// # Safety
/// AVX2, FMA and F16C; sizes as `v_lanes::accumulate_lanes`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn accumulate_v(
    tile: &TileProbs<'_>,
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    acc: &mut [f32],
    lane_rows: &mut Vec<f32>,
) {
    accumulate_lanes::<Avx2Pass>(tile, v_cache, slot_of, HEAD_DIM, acc, lane_rows);
    zero_unreached_lanes(tile.n_ctx, tile.group, acc);
}

/// `accumulate_v`'s work on one lane.
struct Avx2Pass;

impl LanePass for Avx2Pass {
    #[inline(always)]
    unsafe fn lane<F: Fn(usize) -> usize>(
        tile: &TileProbs<'_>,
        rows: VRows<'_, F>,
        lane: usize,
        acc: &mut [f32],
    ) {
        match rows {
            VRows::Cache(v_cache, slot_of) => {
                let load = |pos: usize, half: usize| {
                    let row = v_cache[slot_of(pos) + half..][..HALF].as_ptr() as *const __m128i;
                    regs(|k| _mm256_cvtph_ps(_mm_loadu_si128(row.add(k))))
                };
                Avx2Pass::rows(tile, &load, lane, acc)
            }
            VRows::Gathered(wide) => {
                // SAFETY (`gathered_row`): `heads` asks only for the lane's positions, and
                // `half + 32 <= 64`.
                let load = |pos: usize, half: usize| {
                    let row = gathered_row(wide, pos, HEAD_DIM).add(half);
                    regs(|k| _mm256_loadu_ps(row.add(8 * k)))
                };
                Avx2Pass::rows(tile, &load, lane, acc)
            }
        }
    }
}

impl Avx2Pass {
    /// Every row's heads, 3 at a time, each half of the dimensions in turn; `load(pos,
    /// half)`: dimensions `half..half + 32` of position `pos`'s V row.
    #[inline(always)]
    unsafe fn rows(
        tile: &TileProbs<'_>,
        load: &impl Fn(usize, usize) -> [__m256; 4],
        lane: usize,
        acc: &mut [f32],
    ) {
        let group = tile.group;
        for (r, &n) in tile.n_ctx.iter().enumerate().filter(|&(_, &n)| lane < n) {
            for half in [0, HALF] {
                let pass = VPass {
                    load,
                    probs: tile.probs,
                    stride: tile.stride,
                    lane,
                    n,
                    half,
                };
                let mut head = r * group;
                while head < (r + 1) * group {
                    let take = ((r + 1) * group - head).min(3);
                    match take {
                        1 => pass.heads::<1>(head, acc),
                        2 => pass.heads::<2>(head, acc),
                        _ => pass.heads::<3>(head, acc),
                    }
                    head += take;
                }
            }
        }
    }
}

/// Half of a V row's dimensions.
const HALF: usize = HEAD_DIM / 2;

/// One lane's positions of one row (`lane, lane + 64, … < n`) and the 32 dimensions from
/// `half` (0 or 32), for `accumulate_v`.
struct VPass<'a, L> {
    /// `load(pos, half)`: dimensions `half..half + 32` of position `pos`'s V row.
    load: &'a L,
    probs: &'a [f32],
    stride: usize,
    lane: usize,
    n: usize,
    half: usize,
}

impl<L: Fn(usize, usize) -> [__m256; 4]> VPass<'_, L> {
    /// Heads `head0..head0 + G`: their sums in registers, stored once.
    #[inline(always)]
    unsafe fn heads<const G: usize>(&self, head0: usize, acc: &mut [f32]) {
        // SAFETY: `pos < n <= stride` and `head0 + g` is one of the tile's heads, so the
        // index lies in `probs` (`rows · group · stride` values, `accumulate_lanes`).
        let prob = |g: usize, pos: usize| {
            let at = (head0 + g) * self.stride + pos;
            debug_assert!(at < self.probs.len());
            _mm256_set1_ps(*self.probs.get_unchecked(at))
        };
        let mut sums: [[__m256; 4]; G] = [[_mm256_setzero_ps(); 4]; G];
        let v = (self.load)(self.lane, self.half);
        for k in 0..4 {
            for (g, sg) in sums.iter_mut().enumerate() {
                sg[k] = _mm256_mul_ps(v[k], prob(g, self.lane));
            }
        }
        for pos in (self.lane + F16_STEP..self.n).step_by(F16_STEP) {
            let (v, p) = ((self.load)(pos, self.half), regs::<_, G>(|g| prob(g, pos)));
            for k in 0..4 {
                for (sg, &pg) in sums.iter_mut().zip(&p) {
                    sg[k] = _mm256_fmadd_ps(v[k], pg, sg[k]);
                }
            }
        }
        for (g, sg) in sums.iter().enumerate() {
            let dst =
                acc[((head0 + g) * F16_STEP + self.lane) * HEAD_DIM + self.half..].as_mut_ptr();
            for (k, &x) in sg.iter().enumerate() {
                _mm256_storeu_ps(dst.add(8 * k), x);
            }
        }
    }
}

/// `attention::fold_lanes` of one head's 64 V lanes (`lanes: [64, 64]`), written to
/// `out: [64]`, 8 outputs per register (`avx512::fold_lanes`' steps).
///
/// # Safety
/// AVX2; `lanes` holds 64 × 64 values, `out` 64.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn fold_lanes(lanes: &[f32], out: &mut [f32]) {
    assert!(lanes.len() >= F16_STEP * HEAD_DIM && out.len() >= HEAD_DIM);
    for c in (0..HEAD_DIM).step_by(8) {
        let a = |lane: usize| _mm256_loadu_ps(lanes.as_ptr().add(lane * HEAD_DIM + c));
        let x: [__m256; LANES] = regs(|l| {
            let x0 = _mm256_add_ps(a(l), a(l + 2 * LANES));
            let x1 = _mm256_add_ps(a(l + LANES), a(l + 3 * LANES));
            _mm256_add_ps(x0, x1)
        });
        let t3: [__m256; 8] = regs(|i| _mm256_add_ps(x[i + 8], x[i]));
        let t6: [__m256; 4] = regs(|i| _mm256_add_ps(t3[i + 4], t3[i]));
        let sum = _mm256_add_ps(_mm256_add_ps(t6[0], t6[2]), _mm256_add_ps(t6[1], t6[3]));
        _mm256_storeu_ps(out.as_mut_ptr().add(c), sum);
    }
}

/// `v_folded::fold_head` of one row and head (`probs: [n]`, `out: [64]`) with this
/// module's registers, 32 outputs per pass.
///
/// # Safety
/// AVX2, FMA and F16C; sizes as `fold_head`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn fold_v(
    probs: &[f32],
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    out: &mut [f32],
) {
    fold_head::<__m256, FOLD_REGS>(probs, v_cache, slot_of, out)
}

/// Registers of outputs per pass of `fold_v`.
const FOLD_REGS: usize = 4;

impl VReg for __m256 {
    const WIDTH: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn widen(row: *const f16) -> Self {
        _mm256_cvtph_ps(_mm_loadu_si128(row as *const __m128i))
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut f32) {
        _mm256_storeu_ps(dst, self)
    }
}

/// Zeroes the V accumulator lanes `n..64` of rows whose context `n` is shorter than 64.
pub(super) fn zero_unreached_lanes(n_ctx: &[usize], group: usize, acc: &mut [f32]) {
    for (r, &n) in n_ctx.iter().enumerate().filter(|&(_, &n)| n < F16_STEP) {
        for head in r * group..(r + 1) * group {
            acc[(head * F16_STEP + n) * HEAD_DIM..(head + 1) * F16_STEP * HEAD_DIM].fill(0.0);
        }
    }
}

/// The largest value of `x` (−∞ when empty), as the generic softmax's
/// `fold(f32::NEG_INFINITY, f32::max)`: NaNs are skipped (each `max` returns its second
/// operand, the running maximum, when either is NaN). Only the sign of a zero maximum may
/// differ, which no `x - max` and so no probability can tell.
///
/// # Safety
/// AVX.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn max_of(x: &[f32]) -> f32 {
    let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
    let mut chunks = x.chunks_exact(32);
    for chunk in &mut chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_max_ps(_mm256_loadu_ps(chunk.as_ptr().add(8 * k)), *a);
        }
    }
    let both = _mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), both);
    lanes
        .into_iter()
        .chain(chunks.remainder().iter().copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `softmax_in_place` then `round_in_place_to_f16` (the generic path's two steps), with
/// the same bits: whole 16-lane chunks as two registers, the last partial chunk lane by
/// lane.
///
/// # Safety
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax_to_f16(x: &mut [f32]) {
    let whole = x.len() - x.len() % LANES;
    let max = max_of(x);
    let max8 = _mm256_set1_ps(max);
    let mut sum = 0f64;
    for i in (0..whole).step_by(LANES) {
        let p = x.as_mut_ptr().add(i);
        let lo = expf8(_mm256_sub_ps(_mm256_loadu_ps(p), max8));
        let hi = expf8(_mm256_sub_ps(_mm256_loadu_ps(p.add(8)), max8));
        _mm256_storeu_ps(p, lo);
        _mm256_storeu_ps(p.add(8), hi);
        sum += finish1(_mm256_add_ps(hi, lo)) as f64;
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
    let inv8 = _mm256_set1_ps(inv);
    for i in (0..whole).step_by(8) {
        let p = x.as_mut_ptr().add(i);
        let scaled = _mm256_mul_ps(_mm256_loadu_ps(p), inv8);
        let half = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(scaled);
        _mm256_storeu_ps(p, _mm256_cvtph_ps(half));
    }
    for v in x[whole..].iter_mut() {
        *v = f16::from_f32(*v * inv).to_f32();
    }
}
