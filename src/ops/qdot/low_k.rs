//! Q2_K and Q3_K weights · Q8_K activations in ggml's x86 `vec_dot` order
//! (`ggml_vec_dot_{q2_K,q3_K}_q8_K`, AVX2 path).
//!
//! Both have 16 sub-blocks of 16 elements. Per super-block the integer lane `l` holds
//! `Σ_{e : (e % 32) / 4 == l} scale(e/16) · q(e) · a(e)` (exact); then
//! - Q2_K: `acc[l] = fma(−d_a·dmin_w, m₂ₗ·b₂ₗ + m₂ₗ₊₁·b₂ₗ₊₁, acc[l])` (16-element sums `b`)
//!   followed by `acc[l] = fma(d_a·d_w, lane[l], acc[l])`;
//! - Q3_K: `acc[l] = fma(d_a·d_w, lane[l], acc[l])` with signed 3-bit values and scales.
//!
//! The result is `hsum_float_8(acc)`.

use candle_core::quantized::k_quants::QK_K;

use super::blocks::{q3k_scales, Q2K, Q3K, Q8K};
use super::kquants::scaled_lanes;
use super::{hsum8, kernel, Steps};
use crate::ops::act_quant;

/// Q2_K's 256 unsigned 2-bit values in element order.
pub(crate) fn q2k_values(w: &Q2K) -> [u8; QK_K] {
    std::array::from_fn(|e| {
        let (j, k, b) = (e / 128, (e % 128) / 32, e % 32);
        (w.qs[32 * j + b] >> (2 * k)) & 3
    })
}

/// Q3_K's 256 signed 3-bit values (−4..4) in element order.
fn q3k_values(w: &Q3K) -> [i8; QK_K] {
    std::array::from_fn(|e| {
        let (j, k, b) = (e / 128, (e % 128) / 32, e % 32);
        let low = ((w.qs[32 * j + b] >> (2 * k)) & 3) as i8;
        let high_set = (w.hmask[b] >> (4 * j + k)) & 1 == 1;
        if high_set {
            low
        } else {
            low - 4
        }
    })
}

/// Unpacked Q2_K block: values, 16 scales, 16 mins, d, dmin.
pub(crate) struct Q2Unpacked {
    pub(crate) q: [u8; QK_K],
    pub(crate) scales: [u8; 16],
    pub(crate) mins: [u8; 16],
    pub(crate) d: f32,
    pub(crate) dmin: f32,
}

pub(crate) fn q2k_unpack(w: &Q2K) -> Q2Unpacked {
    Q2Unpacked {
        q: q2k_values(w),
        scales: w.scales.map(|s| s & 0x0F),
        mins: w.scales.map(|s| s >> 4),
        d: w.d.to_f32(),
        dmin: w.dmin.to_f32(),
    }
}

pub(crate) struct Q2KScalar;

impl Steps for Q2KScalar {
    type Weight = Q2K;
    type Act = Q8K;
    type Unpacked = Q2Unpacked;
    type Acc = [f32; 8];
    unsafe fn init() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn unpack(w: &Q2K) -> Q2Unpacked {
        q2k_unpack(w)
    }
    #[inline(always)]
    unsafe fn step(u: &Q2Unpacked, y: &Q8K, acc: &mut [f32; 8]) {
        let (d, dmin) = (y.d * u.d, -y.d * u.dmin);
        for (l, a) in acc.iter_mut().enumerate() {
            let prod = u.mins[2 * l] as i32 * y.bsums[2 * l] as i32
                + u.mins[2 * l + 1] as i32 * y.bsums[2 * l + 1] as i32;
            *a = dmin.mul_add(prod as f32, *a);
        }
        for (a, s) in acc.iter_mut().zip(scaled_lanes(&u.q, &u.scales, 16, &y.qs)) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    unsafe fn finish(acc: [f32; 8]) -> f32 {
        hsum8(acc)
    }
}

pub(crate) struct Q3KScalar;

impl Steps for Q3KScalar {
    type Weight = Q3K;
    type Act = Q8K;
    type Unpacked = ([i8; QK_K], [i8; 16], f32);
    type Acc = [f32; 8];
    unsafe fn init() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn unpack(w: &Q3K) -> Self::Unpacked {
        (q3k_values(w), q3k_scales(&w.scales), w.d.to_f32())
    }
    #[inline(always)]
    unsafe fn step(u: &Self::Unpacked, y: &Q8K, acc: &mut [f32; 8]) {
        let d = y.d * u.2;
        for (a, s) in acc.iter_mut().zip(scaled_lanes(&u.0, &u.1, 16, &y.qs)) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    unsafe fn finish(acc: [f32; 8]) -> f32 {
        hsum8(acc)
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::f16_to_f32;

    use super::super::x86::{hsum_float_8, load_i8};
    use super::super::Steps;
    use super::{q3k_scales, Q2K, Q3K, Q8K};

    /// Per 32-element vector `v`: the i16 scales of its two sub-blocks (16 bytes each).
    #[inline(always)]
    unsafe fn pair_scales<S: Copy + Into<i32>>(sc: &[S; 16]) -> [__m256i; 8] {
        let mut out = [_mm256_setzero_si256(); 8];
        for (v, o) in out.iter_mut().enumerate() {
            let lo = _mm_set1_epi16(Into::<i32>::into(sc[2 * v]) as i16);
            let hi = _mm_set1_epi16(Into::<i32>::into(sc[2 * v + 1]) as i16);
            *o = _mm256_set_m128i(hi, lo);
        }
        out
    }

    /// The 2 low bits of vector `v = 4j + k`: bits `2k` of `qs[32j..32j+32]`.
    #[inline(always)]
    unsafe fn low2(qs: &[u8; 64], v: usize) -> __m256i {
        let (j, k) = (v / 4, v % 4);
        let bits = _mm256_loadu_si256(qs[32 * j..].as_ptr() as *const __m256i);
        let bits = _mm256_srl_epi16(bits, _mm_cvtsi32_si128(2 * k as i32));
        _mm256_and_si256(bits, _mm256_set1_epi8(3))
    }

    /// All 8 vectors of 2 low bits.
    #[inline(always)]
    unsafe fn low2_all(qs: &[u8; 64]) -> [__m256i; 8] {
        let mut out = [_mm256_setzero_si256(); 8];
        for (v, o) in out.iter_mut().enumerate() {
            *o = low2(qs, v);
        }
        out
    }

    /// Q2_K block in registers.
    pub(crate) struct Q2Regs {
        pub(crate) q: [__m256i; 8],
        pub(crate) scales: [__m256i; 8],
        pub(crate) mins: __m256i,
        pub(crate) d: f32,
        pub(crate) dmin: f32,
    }

    /// The 8 integer lanes `Σ scale · q · a` of one Q2_K super-block.
    #[inline(always)]
    pub(crate) unsafe fn q2_sumi(u: &Q2Regs, y: &Q8K) -> __m256i {
        let mut sumi = _mm256_setzero_si256();
        for j in 0..2 {
            let mut p = [_mm256_setzero_si256(); 4];
            for (k, pk) in p.iter_mut().enumerate() {
                let v = 4 * j + k;
                let q8 = load_i8(&y.qs32()[v]);
                *pk = _mm256_madd_epi16(u.scales[v], _mm256_maddubs_epi16(u.q[v], q8));
            }
            let p01 = _mm256_add_epi32(p[0], p[1]);
            let p23 = _mm256_add_epi32(p[2], p[3]);
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p01, p23));
        }
        sumi
    }

    /// `madd(mins, bsums)`: 8 lanes of two 16-element sums times their mins.
    #[inline(always)]
    pub(crate) unsafe fn q2_min_prod(u: &Q2Regs, y: &Q8K) -> __m256i {
        let bsums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
        _mm256_madd_epi16(u.mins, bsums)
    }

    pub(crate) struct Q2KAvx2;

    impl Steps for Q2KAvx2 {
        type Weight = Q2K;
        type Act = Q8K;
        type Unpacked = Q2Regs;
        type Acc = __m256;
        #[inline(always)]
        unsafe fn init() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn unpack(w: &Q2K) -> Q2Regs {
            let mas = _mm_loadu_si128(w.scales.as_ptr() as *const __m128i);
            let m4 = _mm_set1_epi8(0x0F);
            let mins8 = _mm_and_si128(_mm_srli_epi16(mas, 4), m4);
            Q2Regs {
                q: low2_all(&w.qs),
                scales: pair_scales(&w.scales.map(|s| s & 0x0F)),
                mins: _mm256_cvtepi8_epi16(mins8),
                d: f16_to_f32(w.d),
                dmin: f16_to_f32(w.dmin),
            }
        }
        #[inline(always)]
        unsafe fn step(u: &Q2Regs, y: &Q8K, acc: &mut __m256) {
            let (d, dmin) = (y.d * u.d, -y.d * u.dmin);
            let prod = q2_min_prod(u, y);
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod), *acc);
            let sumi = q2_sumi(u, y);
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
        }
        #[inline(always)]
        unsafe fn finish(acc: __m256) -> f32 {
            hsum_float_8(acc)
        }
    }

    /// Q3_K block in registers: low 2 bits, "4 if the high bit is clear", scales.
    pub(crate) struct Q3Regs {
        low: [__m256i; 8],
        high: [__m256i; 8],
        scales: [__m256i; 8],
        d: f32,
    }

    pub(crate) struct Q3KAvx2;

    impl Steps for Q3KAvx2 {
        type Weight = Q3K;
        type Act = Q8K;
        type Unpacked = Q3Regs;
        type Acc = __m256;
        #[inline(always)]
        unsafe fn init() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn unpack(w: &Q3K) -> Q3Regs {
            let hbits = _mm256_loadu_si256(w.hmask.as_ptr() as *const __m256i);
            let mut high = [_mm256_setzero_si256(); 8];
            for (bit, h) in high.iter_mut().enumerate() {
                let mask = _mm256_set1_epi8(1 << bit);
                let clear = _mm256_andnot_si256(hbits, mask);
                let count = _mm_cvtsi32_si128(bit as i32);
                *h = _mm256_slli_epi16(_mm256_srl_epi16(clear, count), 2);
            }
            Q3Regs {
                low: low2_all(&w.qs),
                high,
                scales: pair_scales(&q3k_scales(&w.scales)),
                d: f16_to_f32(w.d),
            }
        }
        #[inline(always)]
        unsafe fn step(u: &Q3Regs, y: &Q8K, acc: &mut __m256) {
            let d = y.d * u.d;
            let mut sumi = _mm256_setzero_si256();
            for j in 0..2 {
                let mut p = [_mm256_setzero_si256(); 4];
                for (k, pk) in p.iter_mut().enumerate() {
                    let v = 4 * j + k;
                    let q8 = load_i8(&y.qs32()[v]);
                    let q8s = _mm256_maddubs_epi16(u.high[v], q8);
                    let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(u.low[v], q8), q8s);
                    *pk = _mm256_madd_epi16(u.scales[v], p16);
                }
                let p01 = _mm256_add_epi32(p[0], p[1]);
                let p23 = _mm256_add_epi32(p[2], p[3]);
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p01, p23));
            }
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
        }
        #[inline(always)]
        unsafe fn finish(acc: __m256) -> f32 {
            hsum_float_8(acc)
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod avx2 {
    //! No AVX2 on this architecture: the "AVX2" kernels are the scalar ones (never run).
    #![allow(dead_code)]
    pub(crate) type Q2KAvx2 = super::Q2KScalar;
    pub(crate) type Q3KAvx2 = super::Q3KScalar;
}

kernel!(
    /// Q2_K weights · Q8_K activations, `ggml_vec_dot_q2_K_q8_K` (matrices that llama.cpp
    /// does not repack; see `Q2KInterleaved`).
    Q2KDot: Q2K, Q8K, QK_K, act_quant::quantize_q8k, Q2KScalar, avx2::Q2KAvx2
);
kernel!(
    /// Q3_K weights · Q8_K activations, `ggml_vec_dot_q3_K_q8_K`.
    Q3KDot: Q3K, Q8K, QK_K, act_quant::quantize_q8k, Q3KScalar, avx2::Q3KAvx2
);
