//! AVX2 twins of the block quantizers: the same float operations lane by lane (one
//! multiply, ggml's round-half-to-even by `1.5 · 2^23`, the cap), the maxima and the
//! integer sums in any order (they are exact), so every block's bytes equal the scalar
//! quantizer's. A block holding a NaN or an infinity goes to the scalar quantizer: its
//! saturating casts and NaN-skipping maxima are what define those bytes.
//!
//! No closures (`map`, `from_fn`) around intrinsics: a closure does not inherit the
//! function's target features, and its intrinsics become calls.

use std::arch::x86_64::*;

use super::{Q8K, Q8_0, Q8_1};
use candle_core::quantized::k_quants::QK_K;
use half::f16;

/// The eight lanes of `v`, each cleared of its sign bit.
#[inline(always)]
unsafe fn abs(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

/// Largest of `abs` values (none NaN), folded across the eight lanes.
#[inline(always)]
unsafe fn max_lane(m: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// `max |v|` over `vs`, and whether every value is finite. `vmaxps` returns its second
/// operand when the first is NaN, so the running maximum stays a number.
#[inline(always)]
unsafe fn abs_max<const N: usize>(vs: &[__m256; N]) -> (f32, bool) {
    let limit = _mm256_set1_ps(f32::MAX);
    let mut m = _mm256_setzero_ps();
    let mut not_finite = _mm256_setzero_ps();
    for &v in vs {
        let a = abs(v);
        m = _mm256_max_ps(a, m);
        // Not (|v| ≤ MAX), unordered: true for NaN and ±∞.
        not_finite = _mm256_or_ps(not_finite, _mm256_cmp_ps::<_CMP_NLE_UQ>(a, limit));
    }
    (max_lane(m), _mm256_movemask_ps(not_finite) == 0)
}

/// ggml's `nearest_int` on eight lanes: `(x + 1.5·2^23) − 1.5·2^23`.
#[inline(always)]
unsafe fn round_half_even(x: __m256) -> __m256 {
    let magic = _mm256_set1_ps(12_582_912.0);
    _mm256_sub_ps(_mm256_add_ps(x, magic), magic)
}

/// 32 whole-number floats in `[-128, 127]` as bytes, in order.
#[inline(always)]
unsafe fn to_bytes(q: [__m256; 4]) -> __m256i {
    let i = to_ints(q);
    // `packs` works within 128-bit halves; the dword permute puts the bytes back in order.
    let words = [
        _mm256_packs_epi32(i[0], i[1]),
        _mm256_packs_epi32(i[2], i[3]),
    ];
    let bytes = _mm256_packs_epi16(words[0], words[1]);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Whole-number floats as i32 lanes.
#[inline(always)]
unsafe fn to_ints(q: [__m256; 4]) -> [__m256i; 4] {
    let mut i = [_mm256_setzero_si256(); 4];
    for (i, &v) in i.iter_mut().zip(&q) {
        *i = _mm256_cvtps_epi32(v);
    }
    i
}

/// Σ of the eight i32 lanes of each vector.
#[inline(always)]
unsafe fn sum_i32(vs: &[__m256i]) -> i32 {
    let mut s = _mm256_setzero_si256();
    for &v in vs {
        s = _mm256_add_epi32(s, v);
    }
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// One 32-value block's four registers.
#[inline(always)]
unsafe fn load<const N: usize>(xs: &[f32]) -> [__m256; N] {
    assert!(xs.len() >= 8 * N);
    let mut v = [_mm256_setzero_ps(); N];
    for (i, v) in v.iter_mut().enumerate() {
        *v = _mm256_loadu_ps(xs.as_ptr().add(8 * i));
    }
    v
}

/// The block's values times `id`, rounded: `[4]` registers of whole numbers.
#[inline(always)]
unsafe fn scaled(mut v: [__m256; 4], id: f32) -> [__m256; 4] {
    let id = _mm256_set1_ps(id);
    for x in &mut v {
        *x = round_half_even(_mm256_mul_ps(*x, id));
    }
    v
}

/// A 32-value block's `max |x|` and its values scaled by `127 / max` and rounded (whole
/// numbers in registers), or `None` for a block with a NaN or an infinity.
#[inline(always)]
unsafe fn scaled_block(xs: &[f32]) -> Option<(f32, [__m256; 4])> {
    let v = load::<4>(xs);
    let (amax, finite) = abs_max(&v);
    if !finite {
        return None;
    }
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    Some((amax, scaled(v, id)))
}

/// `act_quant::quantize_q8_0` of one block; `false` (nothing written) for a block the
/// scalar quantizer must take.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_block(xs: &[f32], y: &mut Q8_0) -> bool {
    let Some((amax, q)) = scaled_block(xs) else {
        return false;
    };
    y.d = f16::from_f32(amax / 127.0);
    _mm256_storeu_si256(y.qs.as_mut_ptr() as *mut __m256i, to_bytes(q));
    true
}

/// `act_quant::quantize_q8_1` of one block, as `q8_0_block`.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_1_block(xs: &[f32], y: &mut Q8_1) -> bool {
    let Some((amax, q)) = scaled_block(xs) else {
        return false;
    };
    let d = amax / 127.0;
    _mm256_storeu_si256(y.qs.as_mut_ptr() as *mut __m256i, to_bytes(q));
    let sum = sum_i32(&to_ints(q));
    y.d = f16::from_f32(d).to_f32();
    y.s = f16::from_f32(d * sum as f32).to_f32();
    true
}

/// `act_quant::quantize_q8k` of one 256-value block, as `q8_0_block`.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8k_block(xs: &[f32], y: &mut Q8K) -> bool {
    let v = load::<{ QK_K / 8 }>(xs);
    let (amax, finite) = abs_max(&v);
    if !finite {
        return false;
    }
    if amax == 0.0 {
        y.d = 0.0;
        y.qs = [0; QK_K];
        y.bsums = [0; QK_K / 16];
        return true;
    }
    // The first value of largest magnitude, with its sign (the scalar loop keeps the first).
    let Some(&max) = xs[..QK_K].iter().find(|v| v.abs() == amax) else {
        return false;
    };
    let iscale = -127.0 / max;
    let (id, cap) = (_mm256_set1_ps(iscale), _mm256_set1_ps(127.0));
    for (c, chunk) in v.chunks_exact(4).enumerate() {
        let mut q = [_mm256_setzero_ps(); 4];
        for (q, &x) in q.iter_mut().zip(chunk) {
            *q = _mm256_min_ps(round_half_even(_mm256_mul_ps(x, id)), cap);
        }
        let dst = y.qs.as_mut_ptr().add(32 * c) as *mut __m256i;
        _mm256_storeu_si256(dst, to_bytes(q));
        let ints = to_ints(q);
        y.bsums[2 * c] = sum_i32(&ints[..2]) as i16;
        y.bsums[2 * c + 1] = sum_i32(&ints[2..]) as i16;
    }
    y.d = 1.0 / iscale;
    true
}
