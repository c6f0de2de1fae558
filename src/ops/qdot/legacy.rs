//! 32-element block types in ggml's x86 `vec_dot` order: Q4_0, Q5_0 and Q8_0 weights
//! against Q8_0 activations (`ggml_vec_dot_{q4_0,q5_0,q8_0}_q8_0`) and Q5_1 against Q8_1
//! (`ggml_vec_dot_q5_1_q8_1`).
//!
//! Per block: `d = d_w · d_a` (one f32 product), 8 i32 lanes of 4 products each (exact),
//! `acc[l] = fma(d, lane[l], acc[l])`; the row's result is `hsum_float_8(acc)` (+ for
//! Q5_1 the running `summs = fma(m_w, s_a, summs)`, which GCC contracts to an FMA).

use half::f16;

use super::blocks::{Q4_0, Q5_0, Q5_1, Q8_0};
use super::{hsum8, kernel, Steps};
use crate::ops::act_quant;
use crate::ops::q4_1::{self, BlockQ8_1};

/// A 32-element block whose values are signed bytes times one f16 scale.
pub(crate) trait Signed32 {
    fn d(&self) -> f16;
    /// The 32 quantized values (already offset to be signed).
    fn values(&self) -> [i8; 32];
    /// The same values in one register.
    #[cfg(target_arch = "x86_64")]
    unsafe fn values_avx2(&self) -> std::arch::x86_64::__m256i;
}

impl Signed32 for Q4_0 {
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn values(&self) -> [i8; 32] {
        std::array::from_fn(|i| {
            let byte = self.qs[i % 16];
            let nibble = if i < 16 { byte & 0x0F } else { byte >> 4 };
            nibble as i8 - 8
        })
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn values_avx2(&self) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        let qx = super::x86::bytes_from_nibbles_32(&self.qs);
        _mm256_sub_epi8(qx, _mm256_set1_epi8(8))
    }
}

impl Signed32 for Q5_0 {
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn values(&self) -> [i8; 32] {
        let qh = u32::from_le_bytes(self.qh);
        std::array::from_fn(|i| {
            let byte = self.qs[i % 16];
            let nibble = if i < 16 { byte & 0x0F } else { byte >> 4 };
            (nibble | (((qh >> i) & 1) as u8) << 4) as i8 - 16
        })
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn values_avx2(&self) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        let qx = super::x86::bytes_from_nibbles_32(&self.qs);
        let bxhi = super::x86::bytes_from_bits_32(&self.qh);
        let bxhi = _mm256_andnot_si256(bxhi, _mm256_set1_epi8(0xF0u8 as i8));
        _mm256_or_si256(qx, bxhi)
    }
}

impl Signed32 for Q8_0 {
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn values(&self) -> [i8; 32] {
        self.qs
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn values_avx2(&self) -> std::arch::x86_64::__m256i {
        super::x86::load_i8(&self.qs)
    }
}

/// Sums of 4 consecutive products per lane (ggml's `mul_sum_i8_pairs` lanes).
#[inline(always)]
pub(crate) fn lane_sums(q: &[i8; 32], a: &[i8; 32]) -> [i32; 8] {
    std::array::from_fn(|l| (4 * l..4 * l + 4).map(|i| q[i] as i32 * a[i] as i32).sum())
}

/// `vec_dot` order, portable.
pub(crate) struct VecScalar<B>(std::marker::PhantomData<B>);

impl<B: Signed32> Steps for VecScalar<B> {
    type Weight = B;
    type Act = Q8_0;
    type Unpacked = ([i8; 32], f32);
    type Acc = [f32; 8];
    unsafe fn init() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn unpack(w: &B) -> ([i8; 32], f32) {
        (w.values(), w.d().to_f32())
    }
    #[inline(always)]
    unsafe fn step(u: &([i8; 32], f32), y: &Q8_0, acc: &mut [f32; 8]) {
        let d = u.1 * y.d.to_f32();
        for (a, s) in acc.iter_mut().zip(lane_sums(&u.0, &y.qs)) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    unsafe fn finish(acc: [f32; 8]) -> f32 {
        hsum8(acc)
    }
}

/// Q5_1 × Q8_1 `vec_dot` order, portable.
pub(crate) struct Q5_1Scalar;

fn q5_1_values(w: &Q5_1) -> [i8; 32] {
    let qh = u32::from_le_bytes(w.qh);
    std::array::from_fn(|i| {
        let byte = w.qs[i % 16];
        let nibble = if i < 16 { byte & 0x0F } else { byte >> 4 };
        (nibble | (((qh >> i) & 1) as u8) << 4) as i8
    })
}

impl Steps for Q5_1Scalar {
    type Weight = Q5_1;
    type Act = BlockQ8_1;
    type Unpacked = ([i8; 32], f32, f32);
    type Acc = ([f32; 8], f32);
    unsafe fn init() -> ([f32; 8], f32) {
        ([0.0; 8], 0.0)
    }
    #[inline(always)]
    unsafe fn unpack(w: &Q5_1) -> ([i8; 32], f32, f32) {
        (q5_1_values(w), w.d.to_f32(), w.m.to_f32())
    }
    #[inline(always)]
    unsafe fn step(u: &([i8; 32], f32, f32), y: &BlockQ8_1, acc: &mut ([f32; 8], f32)) {
        acc.1 = u.2.mul_add(y.s, acc.1);
        let d = u.1 * y.d;
        for (a, s) in acc.0.iter_mut().zip(lane_sums(&u.0, &y.qs)) {
            *a = (s as f32).mul_add(d, *a);
        }
    }
    unsafe fn finish(acc: ([f32; 8], f32)) -> f32 {
        hsum8(acc.0) + acc.1
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::f16_to_f32;

    use super::super::x86::{hsum_float_8, load_i8, mul_sum_i8_pairs, mul_sum_us8_pairs};
    use super::super::Steps;
    use super::{BlockQ8_1, Signed32, Q5_1, Q8_0};

    /// `vec_dot` order with AVX2.
    pub(crate) struct VecAvx2<B>(std::marker::PhantomData<B>);

    impl<B: Signed32> Steps for VecAvx2<B> {
        type Weight = B;
        type Act = Q8_0;
        type Unpacked = (__m256i, f32);
        type Acc = __m256;
        #[inline(always)]
        unsafe fn init() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn unpack(w: &B) -> (__m256i, f32) {
            (w.values_avx2(), f16_to_f32(w.d()))
        }
        #[inline(always)]
        unsafe fn step(u: &(__m256i, f32), y: &Q8_0, acc: &mut __m256) {
            let d = _mm256_set1_ps(u.1 * f16_to_f32(y.d));
            let q = _mm256_cvtepi32_ps(mul_sum_i8_pairs(u.0, load_i8(&y.qs)));
            *acc = _mm256_fmadd_ps(d, q, *acc);
        }
        #[inline(always)]
        unsafe fn finish(acc: __m256) -> f32 {
            hsum_float_8(acc)
        }
    }

    /// Q5_1 × Q8_1 with AVX2.
    pub(crate) struct Q5_1Avx2;

    impl Steps for Q5_1Avx2 {
        type Weight = Q5_1;
        type Act = BlockQ8_1;
        type Unpacked = (__m256i, f32, f32);
        type Acc = (__m256, f32);
        #[inline(always)]
        unsafe fn init() -> (__m256, f32) {
            (_mm256_setzero_ps(), 0.0)
        }
        #[inline(always)]
        unsafe fn unpack(w: &Q5_1) -> (__m256i, f32, f32) {
            let qx = super::super::x86::bytes_from_nibbles_32(&w.qs);
            let bxhi = super::super::x86::bytes_from_bits_32(&w.qh);
            let bxhi = _mm256_and_si256(bxhi, _mm256_set1_epi8(0x10));
            (_mm256_or_si256(qx, bxhi), f16_to_f32(w.d), f16_to_f32(w.m))
        }
        #[inline(always)]
        unsafe fn step(u: &(__m256i, f32, f32), y: &BlockQ8_1, acc: &mut (__m256, f32)) {
            acc.1 = u.2.mul_add(y.s, acc.1);
            let q = _mm256_cvtepi32_ps(mul_sum_us8_pairs(u.0, load_i8(&y.qs)));
            let d = _mm256_mul_ps(_mm256_set1_ps(u.1), _mm256_set1_ps(y.d));
            acc.0 = _mm256_fmadd_ps(q, d, acc.0);
        }
        #[inline(always)]
        unsafe fn finish(acc: (__m256, f32)) -> f32 {
            hsum_float_8(acc.0) + acc.1
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) mod avx2 {
    //! No AVX2 on this architecture: the "AVX2" kernels are the scalar ones (never run).
    #![allow(dead_code)]
    pub(crate) type VecAvx2<B> = super::VecScalar<B>;
    pub(crate) type Q5_1Avx2 = super::Q5_1Scalar;
}

kernel!(
    /// Q4_0 weights · Q8_0 activations, `ggml_vec_dot_q4_0_q8_0` (matrices whose row count
    /// is not a multiple of 8; see `Q4_0Interleaved` for the rest).
    Q4_0Dot: Q4_0, Q8_0, 32, act_quant::quantize_q8_0, VecScalar<Q4_0>, avx2::VecAvx2<Q4_0>
);
kernel!(
    /// Q5_0 weights · Q8_0 activations, `ggml_vec_dot_q5_0_q8_0`.
    Q5_0Dot: Q5_0, Q8_0, 32, act_quant::quantize_q8_0, VecScalar<Q5_0>, avx2::VecAvx2<Q5_0>
);
kernel!(
    /// Q8_0 weights · Q8_0 activations, `ggml_vec_dot_q8_0_q8_0`.
    Q8_0Dot: Q8_0, Q8_0, 32, act_quant::quantize_q8_0, VecScalar<Q8_0>, avx2::VecAvx2<Q8_0>
);
kernel!(
    /// Q5_1 weights · Q8_1 activations, `ggml_vec_dot_q5_1_q8_1`.
    Q5_1Dot: Q5_1, BlockQ8_1, 32, q4_1::quantize_q8_1, Q5_1Scalar, avx2::Q5_1Avx2
);

/// Q4_1 weights · Q8_1 activations: the kernels of `ops::q4_1` (the default model's
/// matmul, `ggml_vec_dot_q4_1_q8_1`) behind the common interface.
pub struct Q4_1Dot;

impl super::Kernel for Q4_1Dot {
    type Weight = q4_1::Q4_1;
    type Act = BlockQ8_1;
    const BLOCK: usize = q4_1::QK;

    fn quantize(x: &[f32], out: &mut [BlockQ8_1]) {
        assert_eq!(x.len(), out.len() * q4_1::QK, "quantize: row length");
        q4_1::quantize_q8_1(x, out)
    }
    fn dot(w: &[q4_1::Q4_1], x: &[BlockQ8_1]) -> f32 {
        assert_eq!(
            w.len(),
            x.len(),
            "dot: weight and activation block counts differ"
        );
        q4_1::dot(w, x)
    }
    fn dot4(w: &[q4_1::Q4_1], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        for row in x {
            assert_eq!(
                w.len(),
                row.len(),
                "dot4: weight and activation block counts differ"
            );
        }
        q4_1::dot4(w, x)
    }
    fn dot_portable(w: &[q4_1::Q4_1], x: &[BlockQ8_1]) -> f32 {
        Self::dot(w, x)
    }
}
