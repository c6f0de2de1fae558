//! 32-element block types in ggml's x86 `vec_dot` order: Q4_0, Q5_0 and Q8_0 weights
//! against Q8_0 activations (`ggml_vec_dot_{q4_0,q5_0,q8_0}_q8_0`) and Q4_1, Q5_1 against
//! Q8_1 (`ggml_vec_dot_{q4_1,q5_1}_q8_1`; Q4_1 is the default model's matmul).
//!
//! Per block: `d = d_w · d_a` (one f32 product), 8 i32 lanes of 4 products each (exact),
//! `acc[l] = fma(d, lane[l], acc[l])`; the row's result is `hsum_float_8(acc)` (+ for
//! Q4_1 / Q5_1 the running `summs = fma(m_w, s_a, summs)`, which GCC contracts to an FMA).
//! Each type has a portable twin (`VecScalar`, `OffsetScalar`) written from the
//! definition of the block, not from the intrinsics, that emulates those lanes.

use half::f16;

use super::blocks::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1};
use super::{hsum8, kernel, Steps};
use crate::ops::act_quant;

/// The 32 quants packed as nibbles in `qs` (ggml's order: low nibbles are elements
/// 0..16, high nibbles 16..32).
#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|i| {
        if i < 16 {
            qs[i] & 0x0F
        } else {
            qs[i - 16] >> 4
        }
    })
}

/// 5-bit quants: bit `i` of `qh` is element `i`'s fifth bit.
#[inline(always)]
fn with_high_bits(low: [u8; 32], qh: &[u8; 4]) -> [u8; 32] {
    let qh = u32::from_le_bytes(*qh);
    std::array::from_fn(|i| low[i] | (((qh >> i) & 1) as u8) << 4)
}

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
        nibbles(&self.qs).map(|q| q as i8 - 8)
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
        with_high_bits(nibbles(&self.qs), &self.qh).map(|q| q as i8 - 16)
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

/// A 32-element block whose values are unsigned quants times one f16 scale plus one f16
/// offset (`value = d · q + m`): dotted with Q8_1 activations, whose stored sum `s`
/// carries the offset term.
pub(crate) trait Offset32 {
    fn d(&self) -> f16;
    fn m(&self) -> f16;
    /// The 32 unsigned quants (0..16 for Q4_1, 0..32 for Q5_1).
    fn quants(&self) -> [u8; 32];
    /// The same quants in one register.
    #[cfg(target_arch = "x86_64")]
    unsafe fn quants_avx2(&self) -> std::arch::x86_64::__m256i;
}

impl Offset32 for Q4_1 {
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn m(&self) -> f16 {
        self.m
    }
    #[inline(always)]
    fn quants(&self) -> [u8; 32] {
        nibbles(&self.qs)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn quants_avx2(&self) -> std::arch::x86_64::__m256i {
        super::x86::bytes_from_nibbles_32(&self.qs)
    }
}

impl Offset32 for Q5_1 {
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn m(&self) -> f16 {
        self.m
    }
    #[inline(always)]
    fn quants(&self) -> [u8; 32] {
        with_high_bits(nibbles(&self.qs), &self.qh)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn quants_avx2(&self) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        let qx = super::x86::bytes_from_nibbles_32(&self.qs);
        let bxhi = super::x86::bytes_from_bits_32(&self.qh);
        let bxhi = _mm256_and_si256(bxhi, _mm256_set1_epi8(0x10));
        _mm256_or_si256(qx, bxhi)
    }
}

/// Q4_1 / Q5_1 × Q8_1 `vec_dot` order, portable.
pub(crate) struct OffsetScalar<B>(std::marker::PhantomData<B>);

impl<B: Offset32> Steps for OffsetScalar<B> {
    type Weight = B;
    type Act = Q8_1;
    type Unpacked = ([i8; 32], f32, f32);
    type Acc = ([f32; 8], f32);
    unsafe fn init() -> ([f32; 8], f32) {
        ([0.0; 8], 0.0)
    }
    #[inline(always)]
    unsafe fn unpack(w: &B) -> ([i8; 32], f32, f32) {
        // Quants are below 32, so they fit an i8 unchanged.
        let q = w.quants().map(|q| q as i8);
        (q, w.d().to_f32(), w.m().to_f32())
    }
    #[inline(always)]
    unsafe fn step(u: &([i8; 32], f32, f32), y: &Q8_1, acc: &mut ([f32; 8], f32)) {
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
    use super::{Offset32, Signed32, Q8_0, Q8_1};

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

    /// Q4_1 / Q5_1 × Q8_1 with AVX2.
    pub(crate) struct OffsetAvx2<B>(std::marker::PhantomData<B>);

    impl<B: Offset32> Steps for OffsetAvx2<B> {
        type Weight = B;
        type Act = Q8_1;
        type Unpacked = (__m256i, f32, f32);
        type Acc = (__m256, f32);
        #[inline(always)]
        unsafe fn init() -> (__m256, f32) {
            (_mm256_setzero_ps(), 0.0)
        }
        #[inline(always)]
        unsafe fn unpack(w: &B) -> (__m256i, f32, f32) {
            (w.quants_avx2(), f16_to_f32(w.d()), f16_to_f32(w.m()))
        }
        #[inline(always)]
        unsafe fn step(u: &(__m256i, f32, f32), y: &Q8_1, acc: &mut (__m256, f32)) {
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
    pub(crate) type OffsetAvx2<B> = super::OffsetScalar<B>;
}

kernel!(
    /// Q4_0 weights · Q8_0 activations, `ggml_vec_dot_q4_0_q8_0` (matrices whose row count
    /// is not a multiple of 8; see `Q4_0Interleaved` for the rest).
    Q4_0Dot: Q4_0, Q8_0, 32, act_quant::quantize_q8_0, VecScalar<Q4_0>, avx2::VecAvx2<Q4_0>
);
kernel!(
    /// Q5_0 weights · Q8_0 activations, `ggml_vec_dot_q5_0_q8_0`.
    Q5_0Dot: Q5_0, Q8_0, 32, act_quant::quantize_q8_0, VecScalar<Q5_0>, avx2::VecAvx2<Q5_0>,
    rows8: super::avx512_gemv::q5_0_rows8
);
kernel!(
    /// Q8_0 weights · Q8_0 activations, `ggml_vec_dot_q8_0_q8_0`.
    Q8_0Dot: Q8_0, Q8_0, 32, act_quant::quantize_q8_0, VecScalar<Q8_0>, avx2::VecAvx2<Q8_0>,
    rows8: super::avx512_gemv::q8_0_rows8
);
kernel!(
    /// Q4_1 weights · Q8_1 activations, `ggml_vec_dot_q4_1_q8_1` (the default model's).
    Q4_1Dot: Q4_1, Q8_1, 32, act_quant::quantize_q8_1, OffsetScalar<Q4_1>, avx2::OffsetAvx2<Q4_1>,
    rows8: super::avx512_gemv::q4_1_rows8
);
kernel!(
    /// Q5_1 weights · Q8_1 activations, `ggml_vec_dot_q5_1_q8_1`.
    Q5_1Dot: Q5_1, Q8_1, 32, act_quant::quantize_q8_1, OffsetScalar<Q5_1>, avx2::OffsetAvx2<Q5_1>
);
