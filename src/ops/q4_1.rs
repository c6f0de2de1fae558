//! Q4_1 weights × Q8_1 activations: the default model's matmul, with an AVX2 kernel that
//! follows ggml's `ggml_vec_dot_q4_1_q8_1` operation for operation (including the FMA
//! GCC fuses into its `summs += m * s`) (so results track
//! llama.cpp's) and a 4-row variant that unpacks each weight block once for four
//! activation rows. Each row's arithmetic is the same sequence in both variants, so the
//! output does not depend on how rows are grouped (batch invariance).
//!
//! Block layouts are ggml's (`repr(C)`, identical to candle's `BlockQ4_1`/`BlockQ8_1`):
//! Q4_1 = `{d: f16, m: f16, qs: [u8; 16]}` (value = d·q + m, q in 0..16, low nibbles are
//! elements 0..16, high nibbles 16..32); Q8_1 = `{d: f16, s: f16 (= d·Σq), qs: [i8; 32]}`.

use candle_core::quantized::k_quants::BlockQ4_1;
use half::f16;

pub const QK: usize = 32;

/// A Q8_1 activation block. ggml stores `d` and `s` as f16; we keep the same f16-rounded
/// values widened to f32 so the inner loop needs no conversions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<Q4_1>() == std::mem::size_of::<BlockQ4_1>());
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 40);

/// Views candle's opaque Q4_1 blocks with their (ggml-defined) fields.
pub fn view(blocks: &[BlockQ4_1]) -> &[Q4_1] {
    // SAFETY: both are repr(C) {f16, f16, [u8; 16]}: same size, alignment and layout.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const Q4_1, blocks.len()) }
}

/// ggml's `quantize_row_q8_1`: per 32 values, d = max|x|/127, q = round-half-even(x·127/max).
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xs, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in y.qs.iter_mut().zip(xs) {
            *q = round_half_even(v * id) as i8;
            sum += *q as i32;
        }
        y.d = f16::from_f32(d).to_f32();
        y.s = f16::from_f32(d * sum as f32).to_f32();
    }
}

/// Round-half-to-even for |x| < 2^22 (here ≤ 127) without a libm call: adding and
/// subtracting 1.5·2^23 leaves the integer part rounded by the FPU's default mode.
#[inline]
fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Dot product of one Q4_1 row with one Q8_1 row (same number of blocks).
pub fn dot(w: &[Q4_1], x: &[BlockQ8_1]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { avx2::dot(w, x) };
    }
    dot_scalar(w, x)
}

/// Dots one Q4_1 row with four Q8_1 rows.
pub fn dot4(w: &[Q4_1], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { avx2::dot4(w, x) };
    }
    x.map(|xr| dot_scalar(w, xr))
}

fn dot_scalar(w: &[Q4_1], x: &[BlockQ8_1]) -> f32 {
    let mut acc = 0f32;
    let mut summs = 0f32;
    for (wb, xb) in w.iter().zip(x) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let lo = (wb.qs[j] & 0x0F) as i32;
            let hi = (wb.qs[j] >> 4) as i32;
            sumi += lo * xb.qs[j] as i32 + hi * xb.qs[j + QK / 2] as i32;
        }
        summs = wb.m.to_f32().mul_add(xb.s, summs);
        acc += wb.d.to_f32() * xb.d * sumi as f32;
    }
    acc + summs
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ8_1, Q4_1};
    use half::f16;
    use std::arch::x86_64::*;

    #[inline(always)]
    fn to_f32(h: f16) -> f32 {
        // SAFETY: only called from this module's F16C-enabled kernels.
        unsafe { crate::ops::qdot::x86::f16_to_f32(h) }
    }

    /// 32 nibbles → 32 bytes (low nibbles first, then high nibbles).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(qs: &[u8; 16]) -> __m256i {
        let tmp = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
        let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
        _mm256_and_si256(_mm256_set1_epi8(0x0F), bytes)
    }

    /// `acc + d · Σ(unsigned qx · signed qy)` in 8 f32 lanes (ggml's per-block step).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block(acc: __m256, qx: __m256i, wd: f32, y: &BlockQ8_1) -> __m256 {
        let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        let dot = _mm256_maddubs_epi16(qx, qy);
        let xy = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot));
        _mm256_fmadd_ps(_mm256_set1_ps(wd * y.d), xy, acc)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(x: __m256) -> f32 {
        let mut res = _mm256_extractf128_ps(x, 1);
        res = _mm_add_ps(res, _mm256_castps256_ps128(x));
        res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(w: &[Q4_1], x: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for (wb, xb) in w.iter().zip(x) {
            summs = to_f32(wb.m).mul_add(xb.s, summs);
            acc = block(acc, unpack(&wb.qs), to_f32(wb.d), xb);
        }
        hsum(acc) + summs
    }

    /// Four rows at once; each row's operations are exactly those of `dot`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4(w: &[Q4_1], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        let [x0, x1, x2, x3] = x;
        let (mut a0, mut a1, mut a2, mut a3) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let (mut s0, mut s1, mut s2, mut s3) = (0f32, 0f32, 0f32, 0f32);
        for (b, wb) in w.iter().enumerate() {
            let qx = unpack(&wb.qs);
            let (wd, wm) = (to_f32(wb.d), to_f32(wb.m));
            let (y0, y1, y2, y3) = (&x0[b], &x1[b], &x2[b], &x3[b]);
            s0 = wm.mul_add(y0.s, s0);
            a0 = block(a0, qx, wd, y0);
            s1 = wm.mul_add(y1.s, s1);
            a1 = block(a1, qx, wd, y1);
            s2 = wm.mul_add(y2.s, s2);
            a2 = block(a2, qx, wd, y2);
            s3 = wm.mul_add(y3.s, s3);
            a3 = block(a3, qx, wd, y3);
        }
        [hsum(a0) + s0, hsum(a1) + s1, hsum(a2) + s2, hsum(a3) + s3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::GgmlType;

    fn weights(n_blocks: usize) -> Vec<BlockQ4_1> {
        let vals: Vec<f32> = (0..n_blocks * QK)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let mut w = vec![BlockQ4_1::zeros(); n_blocks];
        BlockQ4_1::from_float(&vals, &mut w);
        w
    }

    fn acts(n_blocks: usize, seed: usize) -> Vec<BlockQ8_1> {
        let x: Vec<f32> = (0..n_blocks * QK)
            .map(|i| (((i + seed) * 53 % 97) as f32 - 48.0) / 30.0)
            .collect();
        let mut q = vec![BlockQ8_1::default(); n_blocks];
        quantize_q8_1(&x, &mut q);
        q
    }

    #[test]
    fn simd_matches_scalar_and_dot4_matches_dot() {
        let w = weights(18);
        let xs: Vec<Vec<BlockQ8_1>> = (0..4).map(|s| acts(18, s)).collect();
        for x in &xs {
            let (a, b) = (dot(view(&w), x), dot_scalar(view(&w), x));
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
        }
        let four = dot4(view(&w), [&xs[0], &xs[1], &xs[2], &xs[3]]);
        for r in 0..4 {
            assert_eq!(
                four[r].to_bits(),
                dot(view(&w), &xs[r]).to_bits(),
                "row {r}"
            );
        }
    }

    #[test]
    fn q8_1_rounds_half_to_even_and_keeps_the_scaled_sum() {
        let mut x = [0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        let mut q = [BlockQ8_1::default()];
        quantize_q8_1(&x, &mut q);
        assert_eq!(&q[0].qs[..3], &[127, 2, -4]);
        for v in [-127.0f32, -0.5, 0.5, 1.5, 2.49, 126.5] {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
        assert_eq!(q[0].d, 1.0);
        assert_eq!(q[0].s, 125.0);
    }
}
