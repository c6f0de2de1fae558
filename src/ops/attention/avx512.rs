//! AVX-512 attention for `head_dim == 64`, bit-identical to `attend`'s generic path.
//!
//! Scores: a K row is widened straight into four 16-lane registers (no scratch row) and
//! each query head's `ggml_vec_dot_f16` is four FMAs onto zero and the same fold
//! `(a0 + a2) + (a1 + a3)`; the 16-lane horizontal sums (`reduce16`: halves, quarters,
//! pairs) of 8 positions are then done together by a transpose, whose every addition
//! pairs the same two operands as `reduce16` does (float addition is commutative).
//!
//! V: for each of ggml's 64 lanes, the positions feeding it (`lane, lane + 64, …`) are
//! accumulated in registers for up to 4 heads at once (a mul for the first, FMAs after:
//! the order `accumulate_v` uses) and stored once, instead of a load and a store of the
//! accumulator row per position.

use half::f16;
use std::arch::x86_64::*;

use crate::ops::ggml_math::{reduce16, F16_STEP, LANES};

/// The head size these kernels take.
pub const HEAD_DIM: usize = 64;
/// Positions reduced together.
const POS_TILE: usize = 8;

/// Whether the CPU has what these kernels use.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// The K (or V) row at element offset `at` as four 16-lane f32 registers.
#[inline(always)]
unsafe fn load_row(cache: &[f16], at: usize) -> [__m512; 4] {
    let row = cache[at..at + HEAD_DIM].as_ptr() as *const __m256i;
    std::array::from_fn(|k| _mm512_cvtph_ps(_mm256_loadu_si256(row.add(k))))
}

/// `reduce64`'s lane-wise fold of one row · query dot: `(a0 + a2) + (a1 + a3)`.
#[inline(always)]
unsafe fn folded_dot(k: &[__m512; 4], q: &[__m512; 4]) -> __m512 {
    let a: [__m512; 4] = std::array::from_fn(|j| _mm512_fmadd_ps(k[j], q[j], _mm512_setzero_ps()));
    _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]))
}

/// `reduce16`'s first step: `t3[i] = x[i + 8] + x[i]`.
#[inline(always)]
unsafe fn halves(x: __m512) -> __m256 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
    _mm256_add_ps(hi, _mm512_castps512_ps256(x))
}

/// The rest of `reduce16` for 8 positions' `t3` at once: `[r_0, …, r_7]`.
#[inline(always)]
unsafe fn finish8(t3: &[__m256; POS_TILE]) -> __m256 {
    // s[p] = [t6 of p | t6 of p + 4], t6[i] = t3[i + 4] + t3[i].
    let s: [__m256; 4] = std::array::from_fn(|p| {
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

/// `scores[g * n_ctx + pos] = (k_pos · q16_g) * scale` for every head `g < group`.
///
/// # Safety
/// `available()`; `q16` holds `group * 64` values, `scores` `group * n_ctx`, and
/// `slot_of(pos) + 64 <= k_cache.len()` for `pos < n_ctx`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn scores(
    k_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    n_ctx: usize,
    q16: &[f32],
    scale: f32,
    scores: &mut [f32],
) {
    let group = q16.len() / HEAD_DIM;
    let tiled = n_ctx - n_ctx % POS_TILE;
    let scale8 = _mm256_set1_ps(scale);
    for g in 0..group {
        let qp = q16[g * HEAD_DIM..(g + 1) * HEAD_DIM].as_ptr();
        let q: [__m512; 4] = std::array::from_fn(|j| _mm512_loadu_ps(qp.add(16 * j)));
        let out = &mut scores[g * n_ctx..(g + 1) * n_ctx];
        for p0 in (0..tiled).step_by(POS_TILE) {
            let t3: [__m256; POS_TILE] = std::array::from_fn(|p| {
                halves(folded_dot(&load_row(k_cache, slot_of(p0 + p)), &q))
            });
            let r = _mm256_mul_ps(finish8(&t3), scale8);
            _mm256_storeu_ps(out.as_mut_ptr().add(p0), r);
        }
        for (pos, s) in out.iter_mut().enumerate().skip(tiled) {
            let mut x = [0f32; LANES];
            _mm512_storeu_ps(
                x.as_mut_ptr(),
                folded_dot(&load_row(k_cache, slot_of(pos)), &q),
            );
            *s = reduce16(&x) * scale;
        }
    }
}

/// `acc[g, lane, :]` = Σ over `pos ≡ lane (mod 64)` of `probs[g, pos] · v_pos` in
/// position order (a mul, then FMAs); lanes no position reaches are zeroed.
///
/// # Safety
/// `available()`; `probs` holds `group * n_ctx` values, `acc` `group * 64 * 64`, and
/// `slot_of(pos) + 64 <= v_cache.len()` for `pos < n_ctx`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn accumulate_v(
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    n_ctx: usize,
    group: usize,
    probs: &[f32],
    acc: &mut [f32],
) {
    let mut g0 = 0;
    while g0 < group {
        let heads = g0..(g0 + 4).min(group);
        match heads.len() {
            1 => heads_v::<1>(v_cache, slot_of, n_ctx, g0, probs, acc),
            2 => heads_v::<2>(v_cache, slot_of, n_ctx, g0, probs, acc),
            3 => heads_v::<3>(v_cache, slot_of, n_ctx, g0, probs, acc),
            _ => heads_v::<4>(v_cache, slot_of, n_ctx, g0, probs, acc),
        }
        g0 = heads.end;
    }
    if n_ctx < F16_STEP {
        for g in 0..group {
            acc[(g * F16_STEP + n_ctx) * HEAD_DIM..(g + 1) * F16_STEP * HEAD_DIM].fill(0.0);
        }
    }
}

/// `accumulate_v` for heads `g0..g0 + G`, their accumulators in registers.
#[inline(always)]
unsafe fn heads_v<const G: usize>(
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    n_ctx: usize,
    g0: usize,
    probs: &[f32],
    acc: &mut [f32],
) {
    for lane in 0..F16_STEP.min(n_ctx) {
        let prob = |g: usize, pos: usize| _mm512_set1_ps(probs[(g0 + g) * n_ctx + pos]);
        let v = load_row(v_cache, slot_of(lane));
        let mut r: [[__m512; 4]; G] =
            std::array::from_fn(|g| std::array::from_fn(|k| _mm512_mul_ps(v[k], prob(g, lane))));
        for pos in (lane + F16_STEP..n_ctx).step_by(F16_STEP) {
            let v = load_row(v_cache, slot_of(pos));
            for (g, rg) in r.iter_mut().enumerate() {
                let p = prob(g, pos);
                for k in 0..4 {
                    rg[k] = _mm512_fmadd_ps(v[k], p, rg[k]);
                }
            }
        }
        for (g, rg) in r.iter().enumerate() {
            let dst = acc[((g0 + g) * F16_STEP + lane) * HEAD_DIM..].as_mut_ptr();
            for (k, &x) in rg.iter().enumerate() {
                _mm512_storeu_ps(dst.add(16 * k), x);
            }
        }
    }
}
