//! Scalar twins of the ggml CPU primitives whose rounding shows in the logits: ggml's
//! vectorized `expf` (AVX-512 `ggml_v_expf`), SiLU built on it, the 16-lane horizontal
//! sum (`_mm512_reduce_add_ps`), and `ggml_vec_dot_f16`'s 4×16-lane FMA order.
//!
//! Why: 8-bit activation quantization turns last-bit differences into visible logit
//! differences over a few dozen layers, so matching llama.cpp token for token needs the
//! same arithmetic, not just the same math. Each function is written per lane with
//! `mul_add` (one rounding, as the hardware FMA) and must be called from code compiled
//! with FMA enabled to be fast (`#[inline(always)]` into a `target_feature` caller).

/// Lanes of ggml's AVX-512 vectors.
pub const LANES: usize = 16;
/// Elements per iteration of `ggml_vec_dot_f16` (4 accumulators × 16 lanes).
pub const F16_STEP: usize = 64;

/// One lane of ggml's AVX-512 `ggml_v_expf` (max error ~1.5 ulp; exact ggml bits).
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4B40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3FB8_AA3B), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35BF_BE8E),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3F31_7200), x), // 0x1.62e4p-1
    );
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = f32::from_bits(0x3C07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3D2B_9F17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3E2A_AF33).mul_add(b, f32::from_bits(0x3EFF_FEDB)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3F7F_FFF6).mul_add(b, 1.0)); // 0x1.ffffecp-1
                                                                  // _mm512_scalef_ps(j, n) = j · 2^n with one rounding (exact in f64, then rounded);
                                                                  // |n| ≤ 192 here, well inside f64's exponent range.
    let pow2 = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (j as f64 * pow2) as f32
}

/// One lane of ggml's AVX-512 `ggml_v_silu`: `x / (1 + expf(-x))`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + expf(-x))
}

/// ggml's scalar SiLU for the elements after the last full 16-lane chunk.
#[inline(always)]
pub fn silu_tail(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `_mm512_reduce_add_ps` as GCC expands it: halves, quarters, then pairs.
#[inline(always)]
pub fn reduce16(v: &[f32; LANES]) -> f32 {
    let mut t3 = [0f32; 8];
    for i in 0..8 {
        t3[i] = v[i + 8] + v[i];
    }
    let mut t6 = [0f32; 4];
    for i in 0..4 {
        t6[i] = t3[i + 4] + t3[i];
    }
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// Folds the 4×16 accumulators of `ggml_vec_dot_f16` (`acc[j*16 + l]`) as
/// `GGML_F32x16_REDUCE` does: `(a0 + a2) + (a1 + a3)` lane-wise, then `reduce16`.
#[inline(always)]
pub fn reduce64(acc: &[f32; F16_STEP]) -> f32 {
    let mut x = [0f32; LANES];
    for l in 0..LANES {
        let x0 = acc[l] + acc[2 * LANES + l];
        let x1 = acc[LANES + l] + acc[3 * LANES + l];
        x[l] = x0 + x1;
    }
    reduce16(&x)
}

/// FMA into 64 lanes over the whole 64-element steps of `x·y`, lanes folded as
/// `reduce64`; returns that sum and where the leftovers start.
#[inline(always)]
fn dot_steps(x: &[f32], y: &[f32]) -> (f32, usize) {
    let n = x.len().min(y.len());
    let np = n - n % F16_STEP;
    if np == 0 {
        return (0.0, 0);
    }
    let mut acc = [0f32; F16_STEP];
    for (xs, ys) in x[..np]
        .chunks_exact(F16_STEP)
        .zip(y[..np].chunks_exact(F16_STEP))
    {
        for l in 0..F16_STEP {
            acc[l] = xs[l].mul_add(ys[l], acc[l]);
        }
    }
    (reduce64(&acc), np)
}

/// `ggml_vec_dot_f16` of two rows already holding f16 values (widened to f32): the
/// 64-lane steps, then the leftovers accumulated in f64.
#[inline(always)]
pub fn dot_f16(x: &[f32], y: &[f32]) -> f32 {
    let (steps, np) = dot_steps(x, y);
    let mut sum = steps as f64;
    for (a, b) in x[np..].iter().zip(&y[np..]) {
        sum += (a * b) as f64;
    }
    sum as f32
}

/// `ggml_vec_dot_f32`: the same 64-lane steps; leftovers accumulated in f32, each product
/// rounded before the add (GCC vectorizes the products there, so nothing is fused).
#[inline(always)]
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let (mut sum, np) = dot_steps(x, y);
    for (a, b) in x[np..].iter().zip(&y[np..]) {
        sum += a * b;
    }
    sum
}

/// x86 versions of the hot helpers, bit-identical to the scalar ones above.
#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::F16_STEP;
    use half::f16;
    use std::arch::x86_64::*;

    /// ggml's AVX-512 `ggml_v_expf` on 16 lanes: `super::expf` lane by lane, same bits.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[inline(always)]
    pub unsafe fn expf16(x: __m512) -> __m512 {
        let c = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
        let r = c(0x4B40_0000); // 0x1.8p23
        let z = _mm512_fmadd_ps(x, c(0x3FB8_AA3B), r); // log2(e)
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(n, c(0x35BF_BE8E), _mm512_fnmadd_ps(n, c(0x3F31_7200), x));
        let out_of_range =
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(c(0x3C07_2010), b, c(0x3D2B_9F17)),
                u,
                _mm512_fmadd_ps(c(0x3E2A_AF33), b, c(0x3EFF_FEDB)),
            ),
            u,
            _mm512_fmadd_ps(c(0x3F7F_FFF6), b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        if out_of_range == 0 {
            return res;
        }
        let negative = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
        let saturated =
            _mm512_mask_blend_ps(negative, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
        _mm512_mask_blend_ps(out_of_range, res, saturated)
    }

    /// `super::expf` on 8 lanes, same bits: ggml's AVX-512 `ggml_v_expf` steps, its
    /// `scalef` as the scalar twin computes it (`j · 2^n` in f64, then rounded to f32).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline(always)]
    pub unsafe fn expf8(x: __m256) -> __m256 {
        let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
        let r = c(0x4B40_0000); // 0x1.8p23
        let z = _mm256_fmadd_ps(x, c(0x3FB8_AA3B), r); // log2(e)
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, c(0x35BF_BE8E), _mm256_fnmadd_ps(n, c(0x3F31_7200), x));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(c(0x3C07_2010), b, c(0x3D2B_9F17)),
                u,
                _mm256_fmadd_ps(c(0x3E2A_AF33), b, c(0x3EFF_FEDB)),
            ),
            u,
            _mm256_fmadd_ps(c(0x3F7F_FFF6), b, _mm256_set1_ps(1.0)),
        );
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let out_of_range = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
        // In range, n is an integer in [-192, 192]: 2^n is exact in f64.
        let n_int = _mm256_cvtps_epi32(_mm256_andnot_ps(out_of_range, n));
        let scaled = |j4: __m128, n4: __m128i| {
            let exp = _mm256_add_epi64(_mm256_cvtepi32_epi64(n4), _mm256_set1_epi64x(1023));
            let pow2 = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(exp));
            _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(j4), pow2))
        };
        let lo = scaled(_mm256_castps256_ps128(j), _mm256_castsi256_si128(n_int));
        let hi = scaled(
            _mm256_extractf128_ps::<1>(j),
            _mm256_extracti128_si256::<1>(n_int),
        );
        let res = _mm256_set_m128(hi, lo);
        if _mm256_movemask_ps(out_of_range) == 0 {
            return res;
        }
        let negative = _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps());
        let saturated =
            _mm256_blendv_ps(_mm256_set1_ps(f32::INFINITY), _mm256_setzero_ps(), negative);
        _mm256_blendv_ps(res, saturated, out_of_range)
    }

    /// `[f(0), …, f(N - 1)]` as `std::array::from_fn`, always inlined: `from_fn` passes
    /// `f` through core's closure wrappers, which are not always inlined, and an
    /// out-of-line copy has no target features, so every intrinsic in `f` becomes a call
    /// (the attention kernels ran 10× slower when a new caller tipped that balance).
    #[inline(always)]
    pub fn regs<T: Copy, const N: usize>(mut f: impl FnMut(usize) -> T) -> [T; N] {
        let mut out = [std::mem::MaybeUninit::<T>::uninit(); N];
        for (i, o) in out.iter_mut().enumerate() {
            o.write(f(i));
        }
        // SAFETY: every element was written above; `[MaybeUninit<T>; N]` and `[T; N]`
        // have the same layout.
        unsafe { std::mem::transmute_copy(&out) }
    }

    /// f16 → f32 for a row whose length is a multiple of 8.
    ///
    /// # Safety
    /// The CPU must support F16C and AVX; `dst.len() >= src.len()`.
    #[inline(always)]
    pub unsafe fn widen_f16(src: &[f16], dst: &mut [f32]) {
        debug_assert!(src.len().is_multiple_of(8) && dst.len() >= src.len());
        for i in (0..src.len()).step_by(8) {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }

    /// `super::dot_f16` for rows whose length is a multiple of 64 (no leftovers).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; both rows hold at least `len` elements, with
    /// `len % 64 == 0`.
    #[inline(always)]
    pub unsafe fn dot_f16_steps(x: &[f32], y: &[f32], len: usize) -> f32 {
        debug_assert!(len.is_multiple_of(F16_STEP) && x.len() >= len && y.len() >= len);
        let (px, py) = (x.as_ptr(), y.as_ptr());
        let mut a = [_mm256_setzero_ps(); 8];
        for step in (0..len).step_by(F16_STEP) {
            for (j, acc) in a.iter_mut().enumerate() {
                let o = step + 8 * j;
                *acc =
                    _mm256_fmadd_ps(_mm256_loadu_ps(px.add(o)), _mm256_loadu_ps(py.add(o)), *acc);
            }
        }
        // reduce64: lanes l and l+32, l+16 and l+48, then the two halves; then reduce16.
        let x_lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
        let x_hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
        let t3 = _mm256_add_ps(x_hi, x_lo);
        let t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
        let u = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
        _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn regs_builds_the_array_in_index_order() {
        let mut calls = vec![];
        let squares: [usize; 5] = x86::regs(|i| {
            calls.push(i);
            i * i
        });
        assert_eq!(squares, [0, 1, 4, 9, 16]);
        assert_eq!(calls, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn expf_is_close_to_libm_and_saturates() {
        for i in -2000..2000 {
            let x = i as f32 * 0.043;
            let (ours, exact) = (expf(x), (x as f64).exp());
            let rel = ((ours as f64 - exact) / exact).abs();
            assert!(rel < 4e-7, "expf({x}) = {ours}, exact {exact}");
        }
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-200.0), 0.0);
        assert_eq!(expf(200.0), f32::INFINITY);
        assert_eq!(expf(0.0), 1.0);
    }

    #[test]
    fn reductions_follow_the_documented_tree() {
        // Values where the order of additions matters in f32.
        let mut v = [0f32; 16];
        v[0] = 1e8;
        v[8] = -1e8;
        v[1] = 1.0;
        assert_eq!(reduce16(&v), 1.0); // (v0 + v8) first cancels exactly
        let mut acc = [0f32; 64];
        acc[0] = 3.0;
        acc[32] = 4.0;
        acc[16] = 5.0;
        assert_eq!(reduce64(&acc), 12.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_dot_steps_are_bit_identical_to_the_scalar_order() {
        use crate::ops::cpu_features::{host, Level};
        // The SIMD steps are called directly, so this asks what the CPU has, not the level.
        if host().level < Level::Avx2 {
            eprintln!("skipped: no AVX2/FMA");
            return;
        }
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
        };
        for len in [64usize, 128, 256] {
            for _ in 0..200 {
                let x: Vec<f32> = (0..len).map(|_| next()).collect();
                let y: Vec<f32> = (0..len).map(|_| next()).collect();
                // SAFETY: features checked above; len % 64 == 0.
                let simd = unsafe { x86::dot_f16_steps(&x, &y, len) };
                assert_eq!(simd.to_bits(), dot_f16(&x, &y).to_bits(), "len {len}");
            }
        }
    }

    #[test]
    fn dot_f16_matches_plain_dot_on_exact_values() {
        let x: Vec<f32> = (0..100).map(|i| (i % 7) as f32 - 3.0).collect();
        let y: Vec<f32> = (0..100).map(|i| (i % 5) as f32 * 0.5).collect();
        let plain: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert_eq!(dot_f16(&x, &y), plain);
    }
}
