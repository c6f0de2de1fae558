//! Q4_0, Q4_K and Q2_K in the order of ggml's interleaved gemv kernels
//! (`ggml_gemv_{q4_0_8x8_q8_0, q4_K_8x8_q8_K, q2_K_8x8_q8_K}`, `arch/x86/repack.cpp`).
//!
//! llama.cpp's CPU backend repacks these weights 8 rows at a time whenever a matrix has a
//! multiple of 8 rows (Q2_K only on AVX-512 builds) and then computes a single token's
//! matmul with those kernels. Each output lane there is one weight row, and per block it
//! does (all integer sums exact):
//! - Q4_0: `acc = fma(Σ q·a, d_w · d_a, acc)`;
//! - Q4_K / Q2_K: `acc = fma(Σ scale·q·a, d_w · d_a, acc)` and
//!   `acc_min = fma(Σ min·(activation sums), dmin_w · d_a, acc_min)`; result `acc − acc_min`.
//!
//! We keep candle's (ggml's) plain block layout and reproduce that per-row arithmetic.

use super::blocks::{bsums32, Q2K, Q4K, Q4_0, Q8K, Q8_0};
use super::kquants::{scaled_lanes, KUnpacked};
use super::legacy::Signed32;
use super::low_k::{q2k_unpack, Q2Unpacked};
use super::{kernel, Steps};
use crate::ops::act_quant;
use candle_core::quantized::k_quants::QK_K;

pub(crate) struct Q4_0Scalar;

impl Steps for Q4_0Scalar {
    type Weight = Q4_0;
    type Act = Q8_0;
    type Unpacked = ([i8; 32], f32);
    type Acc = f32;
    unsafe fn init() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn unpack(w: &Q4_0) -> ([i8; 32], f32) {
        (w.values(), w.d.to_f32())
    }
    #[inline(always)]
    unsafe fn step(u: &([i8; 32], f32), y: &Q8_0, acc: &mut f32) {
        let isum: i32 =
            u.0.iter()
                .zip(&y.qs)
                .map(|(&q, &a)| q as i32 * a as i32)
                .sum();
        *acc = (isum as f32).mul_add(u.1 * y.d.to_f32(), *acc);
    }
    unsafe fn finish(acc: f32) -> f32 {
        acc
    }
}

pub(crate) struct Q4KScalar;

impl Steps for Q4KScalar {
    type Weight = Q4K;
    type Act = Q8K;
    type Unpacked = KUnpacked;
    type Acc = (f32, f32);
    unsafe fn init() -> (f32, f32) {
        (0.0, 0.0)
    }
    #[inline(always)]
    unsafe fn unpack(w: &Q4K) -> KUnpacked {
        super::kquants::Q4KScalar::unpack(w)
    }
    #[inline(always)]
    unsafe fn step(u: &KUnpacked, y: &Q8K, acc: &mut (f32, f32)) {
        let isum: i32 = scaled_lanes(&u.q, &u.scales, 32, &y.qs).iter().sum();
        let s = bsums32(y);
        let imin: i32 = (0..8).map(|j| u.mins[j] as i32 * s[j]).sum();
        acc.0 = (isum as f32).mul_add(u.d * y.d, acc.0);
        acc.1 = (imin as f32).mul_add(u.dmin * y.d, acc.1);
    }
    unsafe fn finish(acc: (f32, f32)) -> f32 {
        acc.0 - acc.1
    }
}

pub(crate) struct Q2KScalar;

impl Steps for Q2KScalar {
    type Weight = Q2K;
    type Act = Q8K;
    type Unpacked = Q2Unpacked;
    type Acc = (f32, f32);
    unsafe fn init() -> (f32, f32) {
        (0.0, 0.0)
    }
    #[inline(always)]
    unsafe fn unpack(w: &Q2K) -> Q2Unpacked {
        q2k_unpack(w)
    }
    #[inline(always)]
    unsafe fn step(u: &Q2Unpacked, y: &Q8K, acc: &mut (f32, f32)) {
        let isum: i32 = scaled_lanes(&u.q, &u.scales, 16, &y.qs).iter().sum();
        let imin: i32 = (0..16).map(|k| u.mins[k] as i32 * y.bsums[k] as i32).sum();
        acc.0 = (isum as f32).mul_add(u.d * y.d, acc.0);
        acc.1 = (imin as f32).mul_add(u.dmin * y.d, acc.1);
    }
    unsafe fn finish(acc: (f32, f32)) -> f32 {
        acc.0 - acc.1
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::f16_to_f32;

    use super::super::kquants::avx2::{min_prod, sumi, KRegs, Q4KAvx2 as Q4KVec};
    use super::super::low_k::avx2::{q2_min_prod, q2_sumi, Q2KAvx2 as Q2KVec, Q2Regs};
    use super::super::x86::{hsum_i32_8, load_i8, mul_sum_i8_pairs};
    use super::super::Steps;
    use super::{Signed32, Q2K, Q4K, Q4_0, Q8K, Q8_0};

    pub(crate) struct Q4_0Avx2;

    impl Steps for Q4_0Avx2 {
        type Weight = Q4_0;
        type Act = Q8_0;
        type Unpacked = (__m256i, f32);
        type Acc = f32;
        #[inline(always)]
        unsafe fn init() -> f32 {
            0.0
        }
        #[inline(always)]
        unsafe fn unpack(w: &Q4_0) -> (__m256i, f32) {
            (w.values_avx2(), f16_to_f32(w.d))
        }
        #[inline(always)]
        unsafe fn step(u: &(__m256i, f32), y: &Q8_0, acc: &mut f32) {
            let isum = hsum_i32_8(mul_sum_i8_pairs(u.0, load_i8(&y.qs)));
            *acc = (isum as f32).mul_add(u.1 * f16_to_f32(y.d), *acc);
        }
        #[inline(always)]
        unsafe fn finish(acc: f32) -> f32 {
            acc
        }
    }

    /// Sum of 4 i32 lanes (exact).
    #[inline(always)]
    unsafe fn hsum_i32_4(a: __m128i) -> i32 {
        let hi64 = _mm_unpackhi_epi64(a, a);
        let sum64 = _mm_add_epi32(hi64, a);
        let hi32 = _mm_shuffle_epi32(sum64, 0b10_11_00_01);
        _mm_cvtsi128_si32(_mm_add_epi32(sum64, hi32))
    }

    pub(crate) struct Q4KAvx2;

    impl Steps for Q4KAvx2 {
        type Weight = Q4K;
        type Act = Q8K;
        type Unpacked = KRegs;
        type Acc = (f32, f32);
        #[inline(always)]
        unsafe fn init() -> (f32, f32) {
            (0.0, 0.0)
        }
        #[inline(always)]
        unsafe fn unpack(w: &Q4K) -> KRegs {
            Q4KVec::unpack(w)
        }
        #[inline(always)]
        unsafe fn step(u: &KRegs, y: &Q8K, acc: &mut (f32, f32)) {
            let isum = hsum_i32_8(sumi(u, y));
            let imin = hsum_i32_4(min_prod(u.mins, y));
            acc.0 = (isum as f32).mul_add(u.d * y.d, acc.0);
            acc.1 = (imin as f32).mul_add(u.dmin * y.d, acc.1);
        }
        #[inline(always)]
        unsafe fn finish(acc: (f32, f32)) -> f32 {
            acc.0 - acc.1
        }
    }

    pub(crate) struct Q2KAvx2;

    impl Steps for Q2KAvx2 {
        type Weight = Q2K;
        type Act = Q8K;
        type Unpacked = Q2Regs;
        type Acc = (f32, f32);
        #[inline(always)]
        unsafe fn init() -> (f32, f32) {
            (0.0, 0.0)
        }
        #[inline(always)]
        unsafe fn unpack(w: &Q2K) -> Q2Regs {
            Q2KVec::unpack(w)
        }
        #[inline(always)]
        unsafe fn step(u: &Q2Regs, y: &Q8K, acc: &mut (f32, f32)) {
            let isum = hsum_i32_8(q2_sumi(u, y));
            let imin = hsum_i32_8(q2_min_prod(u, y));
            acc.0 = (isum as f32).mul_add(u.d * y.d, acc.0);
            acc.1 = (imin as f32).mul_add(u.dmin * y.d, acc.1);
        }
        #[inline(always)]
        unsafe fn finish(acc: (f32, f32)) -> f32 {
            acc.0 - acc.1
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod avx2 {
    //! No AVX2 on this architecture: the "AVX2" kernels are the scalar ones (never run).
    #![allow(dead_code)]
    pub(crate) type Q4_0Avx2 = super::Q4_0Scalar;
    pub(crate) type Q4KAvx2 = super::Q4KScalar;
    pub(crate) type Q2KAvx2 = super::Q2KScalar;
}

kernel!(
    /// Q4_0 weights · Q8_0 activations as `ggml_gemv_q4_0_8x8_q8_0` computes each row.
    Q4_0Interleaved: Q4_0, Q8_0, 32, act_quant::quantize_q8_0, Q4_0Scalar, avx2::Q4_0Avx2
);
kernel!(
    /// Q4_K weights · Q8_K activations as `ggml_gemv_q4_K_8x8_q8_K` computes each row.
    Q4KInterleaved: Q4K, Q8K, QK_K, act_quant::quantize_q8k, Q4KScalar, avx2::Q4KAvx2
);
kernel!(
    /// Q2_K weights · Q8_K activations as `ggml_gemv_q2_K_8x8_q8_K` computes each row.
    Q2KInterleaved: Q2K, Q8K, QK_K, act_quant::quantize_q8k, Q2KScalar, avx2::Q2KAvx2
);
