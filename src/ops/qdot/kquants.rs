//! Q4_K, Q5_K and Q6_K weights · Q8_K activations in ggml's x86 `vec_dot` order
//! (`ggml_vec_dot_{q4_K,q5_K,q6_K}_q8_K`, AVX2 path).
//!
//! Per 256-element super-block, the integer lane `l` (0..8) holds
//! `Σ_{e : (e % 32) / 4 == l} scale(e) · q(e) · a(e)` (exact), and
//! `acc[l] = fma(d_a · d_w, lane[l], acc[l])`. The mins differ per type:
//! - Q4_K: a second 4-lane accumulator `acc_m[k] = fma(−d_a · dmin_w, m₂ₖ·s₂ₖ + m₂ₖ₊₁·s₂ₖ₊₁,
//!   acc_m[k])` over the 32-element activation sums `s`, reduced as `(m0+m2) + (m1+m3)`;
//! - Q5_K: a scalar `summs = fma(−d_a · dmin_w, Σ mⱼ·sⱼ, summs)` (GCC's contraction);
//! - Q6_K: no mins; the `−32` offset is subtracted in the integer lanes, lane `l` losing
//!   `32 · (b₂ₗ·sc₂ₗ + b₂ₗ₊₁·sc₂ₗ₊₁)` over the 16-element sums `b` (ggml's `q8sclsub`).
//!
//! The result is `hsum_float_8(acc)` plus the min term.

use candle_core::quantized::k_quants::QK_K;

use super::blocks::{bsums32, k4_scales_mins, Q4K, Q5K, Q6K, Q8K};
use super::{hsum8, kernel, lane, Steps};
use crate::ops::act_quant;

/// Q4_K's 256 unsigned 4-bit values in element order.
fn q4k_values(w: &Q4K) -> [u8; QK_K] {
    std::array::from_fn(|e| {
        let (j, b) = (e / 64, e % 64);
        let byte = w.qs[32 * j + b % 32];
        if b < 32 {
            byte & 0x0F
        } else {
            byte >> 4
        }
    })
}

/// Q5_K's 256 unsigned 5-bit values in element order.
fn q5k_values(w: &Q5K) -> [u8; QK_K] {
    std::array::from_fn(|e| {
        let (j, b) = (e / 64, e % 64);
        let byte = w.qs[32 * j + b % 32];
        let low = if b < 32 { byte & 0x0F } else { byte >> 4 };
        let bit = 2 * j + b / 32;
        low | ((w.qh[b % 32] >> bit) & 1) << 4
    })
}

/// Q6_K's 256 unsigned 6-bit values (before the −32 offset) in element order.
pub(crate) fn q6k_values(w: &Q6K) -> [u8; QK_K] {
    std::array::from_fn(|e| {
        let (j, k, b) = (e / 128, (e % 128) / 32, e % 32);
        let ql = w.ql[64 * j + 32 * (k % 2) + b];
        let low = if k < 2 { ql & 0x0F } else { ql >> 4 };
        low | ((w.qh[32 * j + b] >> (2 * k)) & 3) << 4
    })
}

/// The 8 integer lanes of `Σ scale(e)·q(e)·a(e)`, scale per `group`-element sub-block.
#[inline(always)]
pub(crate) fn scaled_lanes<Q: Copy + Into<i32>, S: Copy + Into<i32>>(
    q: &[Q; QK_K],
    scales: &[S],
    group: usize,
    a: &[i8; QK_K],
) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for e in 0..QK_K {
        let (s, v): (i32, i32) = (scales[e / group].into(), q[e].into());
        lanes[lane(e)] += s * v * a[e] as i32;
    }
    lanes
}

/// Unpacked Q4_K / Q5_K block: values, 8 scales, 8 mins, d, dmin.
pub(crate) struct KUnpacked {
    pub(crate) q: [u8; QK_K],
    pub(crate) scales: [u8; 8],
    pub(crate) mins: [u8; 8],
    pub(crate) d: f32,
    pub(crate) dmin: f32,
}

/// The 4 `madd_epi16(mins, pairwise bsums)` lanes.
#[inline(always)]
fn min_lanes(mins: &[u8; 8], y: &Q8K) -> [i32; 4] {
    let s = bsums32(y);
    std::array::from_fn(|k| mins[2 * k] as i32 * s[2 * k] + mins[2 * k + 1] as i32 * s[2 * k + 1])
}

pub(crate) struct Q4KScalar;

impl Steps for Q4KScalar {
    type Weight = Q4K;
    type Act = Q8K;
    type Unpacked = KUnpacked;
    type Acc = ([f32; 8], [f32; 4]);
    unsafe fn init() -> Self::Acc {
        ([0.0; 8], [0.0; 4])
    }
    #[inline(always)]
    unsafe fn unpack(w: &Q4K) -> KUnpacked {
        let (scales, mins) = k4_scales_mins(&w.scales);
        let (d, dmin) = (w.d.to_f32(), w.dmin.to_f32());
        KUnpacked {
            q: q4k_values(w),
            scales,
            mins,
            d,
            dmin,
        }
    }
    #[inline(always)]
    unsafe fn step(u: &KUnpacked, y: &Q8K, acc: &mut Self::Acc) {
        let (d, dmin) = (y.d * u.d, -y.d * u.dmin);
        for (a, p) in acc.1.iter_mut().zip(min_lanes(&u.mins, y)) {
            *a = dmin.mul_add(p as f32, *a);
        }
        for (a, s) in acc
            .0
            .iter_mut()
            .zip(scaled_lanes(&u.q, &u.scales, 32, &y.qs))
        {
            *a = d.mul_add(s as f32, *a);
        }
    }
    unsafe fn finish(acc: Self::Acc) -> f32 {
        let m = acc.1;
        hsum8(acc.0) + ((m[0] + m[2]) + (m[1] + m[3]))
    }
}

pub(crate) struct Q5KScalar;

impl Steps for Q5KScalar {
    type Weight = Q5K;
    type Act = Q8K;
    type Unpacked = KUnpacked;
    type Acc = ([f32; 8], f32);
    unsafe fn init() -> Self::Acc {
        ([0.0; 8], 0.0)
    }
    #[inline(always)]
    unsafe fn unpack(w: &Q5K) -> KUnpacked {
        let (scales, mins) = k4_scales_mins(&w.scales);
        let (d, dmin) = (w.d.to_f32(), w.dmin.to_f32());
        KUnpacked {
            q: q5k_values(w),
            scales,
            mins,
            d,
            dmin,
        }
    }
    #[inline(always)]
    unsafe fn step(u: &KUnpacked, y: &Q8K, acc: &mut Self::Acc) {
        let (d, dmin) = (y.d * u.d, -y.d * u.dmin);
        let total: i32 = min_lanes(&u.mins, y).iter().sum();
        acc.1 = dmin.mul_add(total as f32, acc.1);
        for (a, s) in acc
            .0
            .iter_mut()
            .zip(scaled_lanes(&u.q, &u.scales, 32, &y.qs))
        {
            *a = d.mul_add(s as f32, *a);
        }
    }
    unsafe fn finish(acc: Self::Acc) -> f32 {
        hsum8(acc.0) + acc.1
    }
}

pub(crate) struct Q6KScalar;

impl Steps for Q6KScalar {
    type Weight = Q6K;
    type Act = Q8K;
    type Unpacked = ([u8; QK_K], [i8; 16], f32);
    type Acc = [f32; 8];
    unsafe fn init() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn unpack(w: &Q6K) -> Self::Unpacked {
        (q6k_values(w), w.scales, w.d.to_f32())
    }
    #[inline(always)]
    unsafe fn step(u: &Self::Unpacked, y: &Q8K, acc: &mut [f32; 8]) {
        let d = y.d * u.2;
        let mut lanes = scaled_lanes(&u.0, &u.1, 16, &y.qs);
        for (l, s) in lanes.iter_mut().enumerate() {
            let sub = y.bsums[2 * l] as i32 * u.1[2 * l] as i32
                + y.bsums[2 * l + 1] as i32 * u.1[2 * l + 1] as i32;
            *s -= sub << 5;
        }
        for (a, s) in acc.iter_mut().zip(lanes) {
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

    use super::super::x86::{hsum_float_8, load, load_i8};
    use super::super::Steps;
    use super::{Q4K, Q5K, Q6K, Q8K};
    use crate::ops::qdot::blocks::{k4_scales_mins, k4_utmp};

    /// Q4_K / Q5_K block in registers: 8 vectors of 32 values (sub-block order), the 8
    /// scales as i16 (in both 128-bit halves), the 8 mins as i16.
    pub(crate) struct KRegs {
        pub(crate) q: [__m256i; 8],
        pub(crate) scales: __m256i,
        pub(crate) mins: __m128i,
        pub(crate) d: f32,
        pub(crate) dmin: f32,
    }

    /// ggml's `mins_and_scales` split into (scales in both halves, mins).
    #[inline(always)]
    unsafe fn scales_and_mins(packed: &[u8; 12]) -> (__m256i, __m128i) {
        let u = k4_utmp(packed).map(|w| w as i32);
        let mas = _mm256_cvtepu8_epi16(_mm_set_epi32(u[3], u[2], u[1], u[0]));
        let sc128 = _mm256_castsi256_si128(mas);
        (
            _mm256_set_m128i(sc128, sc128),
            _mm256_extracti128_si256(mas, 1),
        )
    }

    /// Scale `i` in every i16 lane (ggml's `get_scale_shuffle_k4(i)`).
    #[inline(always)]
    unsafe fn scale(scales: __m256i, i: usize) -> __m256i {
        let pick = (((2 * i + 1) << 8) | (2 * i)) as i16;
        _mm256_shuffle_epi8(scales, _mm256_set1_epi16(pick))
    }

    /// `madd(mins, hadd(bsums))`: the 4 min lanes.
    #[inline(always)]
    pub(crate) unsafe fn min_prod(mins: __m128i, y: &Q8K) -> __m128i {
        let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
        let q8s = _mm_hadd_epi16(
            _mm256_castsi256_si128(q8sums),
            _mm256_extracti128_si256(q8sums, 1),
        );
        _mm_madd_epi16(mins, q8s)
    }

    /// The 8 integer lanes `Σ scale · q · a` of one super-block.
    #[inline(always)]
    pub(crate) unsafe fn sumi(u: &KRegs, y: &Q8K) -> __m256i {
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let q8l = load_i8(&y.qs32()[2 * j]);
            let q8h = load_i8(&y.qs32()[2 * j + 1]);
            let (sl, sh) = (scale(u.scales, 2 * j), scale(u.scales, 2 * j + 1));
            let p16l = _mm256_madd_epi16(sl, _mm256_maddubs_epi16(u.q[2 * j], q8l));
            let p16h = _mm256_madd_epi16(sh, _mm256_maddubs_epi16(u.q[2 * j + 1], q8h));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
        }
        sumi
    }

    pub(crate) struct Q4KAvx2;

    impl Steps for Q4KAvx2 {
        type Weight = Q4K;
        type Act = Q8K;
        type Unpacked = KRegs;
        type Acc = (__m256, __m128);
        #[inline(always)]
        unsafe fn init() -> Self::Acc {
            (_mm256_setzero_ps(), _mm_setzero_ps())
        }
        #[inline(always)]
        unsafe fn unpack(w: &Q4K) -> KRegs {
            let (scales, mins) = scales_and_mins(&w.scales);
            KRegs {
                q: q4k_vectors(w),
                scales,
                mins,
                d: f16_to_f32(w.d),
                dmin: f16_to_f32(w.dmin),
            }
        }
        #[inline(always)]
        unsafe fn step(u: &KRegs, y: &Q8K, acc: &mut Self::Acc) {
            let (d, dmin) = (y.d * u.d, -y.d * u.dmin);
            let prod = min_prod(u.mins, y);
            acc.1 = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc.1);
            acc.0 = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi(u, y)), acc.0);
        }
        #[inline(always)]
        unsafe fn finish(acc: Self::Acc) -> f32 {
            let mut m = acc.1;
            m = _mm_add_ps(m, _mm_movehl_ps(m, m));
            m = _mm_add_ss(m, _mm_movehdup_ps(m));
            hsum_float_8(acc.0) + _mm_cvtss_f32(m)
        }
    }

    pub(crate) struct Q5KAvx2;

    impl Steps for Q5KAvx2 {
        type Weight = Q5K;
        type Act = Q8K;
        type Unpacked = KRegs;
        type Acc = (__m256, f32);
        #[inline(always)]
        unsafe fn init() -> Self::Acc {
            (_mm256_setzero_ps(), 0.0)
        }
        #[inline(always)]
        unsafe fn unpack(w: &Q5K) -> KRegs {
            let m4 = _mm256_set1_epi8(0x0F);
            let hbits = load(&w.qh);
            let mut q = [_mm256_setzero_si256(); 8];
            for (k, qk) in q.iter_mut().enumerate() {
                let bits = _mm256_loadu_si256(w.qs[32 * (k / 2)..].as_ptr() as *const __m256i);
                let bits = if k % 2 == 0 {
                    bits
                } else {
                    _mm256_srli_epi16(bits, 4)
                };
                let low = _mm256_and_si256(bits, m4);
                // The high bit `k` of each qh byte, moved to bit 4.
                let hmask = _mm256_set1_epi8(1 << k);
                let high = _mm256_and_si256(hbits, hmask);
                let high =
                    _mm256_slli_epi16(_mm256_srl_epi16(high, _mm_cvtsi32_si128(k as i32)), 4);
                *qk = _mm256_add_epi8(low, high);
            }
            let (scales, mins) = scales_and_mins(&w.scales);
            KRegs {
                q,
                scales,
                mins,
                d: f16_to_f32(w.d),
                dmin: f16_to_f32(w.dmin),
            }
        }
        #[inline(always)]
        unsafe fn step(u: &KRegs, y: &Q8K, acc: &mut Self::Acc) {
            let (d, dmin) = (y.d * u.d, -y.d * u.dmin);
            let prod = min_prod(u.mins, y);
            let zero = _mm_setzero_si128();
            let hsum = _mm_hadd_epi32(_mm_hadd_epi32(prod, zero), zero);
            acc.1 = dmin.mul_add(_mm_cvtsi128_si32(hsum) as f32, acc.1);
            acc.0 = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi(u, y)), acc.0);
        }
        #[inline(always)]
        unsafe fn finish(acc: Self::Acc) -> f32 {
            hsum_float_8(acc.0) + acc.1
        }
    }

    /// Q6_K block in registers: 8 vectors of 32 values, their i16 scales (two per
    /// vector: first 16 bytes, last 16), all 16 scales as i16 for `q8sclsub`.
    pub(crate) struct Q6Regs {
        q: [__m256i; 8],
        scales: [__m256i; 8],
        scales_16: __m256i,
        d: f32,
    }

    pub(crate) struct Q6KAvx2;

    /// A Q4_K super-block's constants for both panel kernel sets: the 8 sub-block scales,
    /// lane `l`'s i16 pair `[min_l, min_l]` (against a row's two 16-element sums of
    /// sub-block `l`), and `[d, dmin]` in every lane.
    pub(crate) struct Q4KBlockScales {
        pub(crate) scales: [u8; 8],
        pub(crate) min_pairs: __m256i,
        pub(crate) d: [__m256; 2],
    }

    /// `Q4KBlockScales` of `w`.
    #[inline(always)]
    pub(crate) unsafe fn q4k_block_scales(w: &Q4K) -> Q4KBlockScales {
        let (scales, mins) = k4_scales_mins(&w.scales);
        let mut min_pairs = [0i32; 8];
        for (two, &m) in min_pairs.iter_mut().zip(&mins) {
            *two = m as i32 * 0x0001_0001;
        }
        Q4KBlockScales {
            scales,
            min_pairs: _mm256_loadu_si256(min_pairs.as_ptr() as *const __m256i),
            d: [
                _mm256_set1_ps(f16_to_f32(w.d)),
                _mm256_set1_ps(f16_to_f32(w.dmin)),
            ],
        }
    }

    /// The float steps of ggml's repacked Q4_K gemv (`Q4KInterleaved`) for 8 rows at
    /// once, shared by both panel kernel sets: per super-block `acc = fma(isum, d_w·d_a,
    /// acc)` and `acc_min = fma(imin, dmin_w·d_a, acc_min)`, result `acc − acc_min`.
    #[derive(Clone, Copy)]
    pub(crate) struct Q4KRowSums {
        acc: __m256,
        acc_min: __m256,
    }

    impl Q4KRowSums {
        #[inline(always)]
        pub(crate) unsafe fn new() -> Self {
            Self {
                acc: _mm256_setzero_ps(),
                acc_min: _mm256_setzero_ps(),
            }
        }

        /// One super-block: the 8 rows' exact `isum`, `imin`, the weight block's `d`, `dmin`
        /// (in every lane) and the rows' activation scales.
        #[inline(always)]
        pub(crate) unsafe fn add(
            &mut self,
            [isum, imin]: [__m256i; 2],
            [wd, wdmin]: [__m256; 2],
            act_d: &[f32; 8],
        ) {
            let act_d = _mm256_loadu_ps(act_d.as_ptr());
            let (isum, imin) = (_mm256_cvtepi32_ps(isum), _mm256_cvtepi32_ps(imin));
            self.acc = _mm256_fmadd_ps(isum, _mm256_mul_ps(wd, act_d), self.acc);
            self.acc_min = _mm256_fmadd_ps(imin, _mm256_mul_ps(wdmin, act_d), self.acc_min);
        }

        /// The 8 rows' results.
        #[inline(always)]
        pub(crate) unsafe fn rows(self) -> [f32; 8] {
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(self.acc, self.acc_min));
            out
        }
    }

    /// A Q4_K super-block's 256 values (0..16), one register per 32-element sub-block.
    #[inline(always)]
    pub(crate) unsafe fn q4k_vectors(w: &Q4K) -> [__m256i; 8] {
        let m4 = _mm256_set1_epi8(0x0F);
        let mut q = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            let bits = _mm256_loadu_si256(w.qs[32 * j..].as_ptr() as *const __m256i);
            q[2 * j] = _mm256_and_si256(bits, m4);
            q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
        }
        q
    }

    /// Q6_K's 256 unsigned 6-bit values (before the −32 offset) as 8 vectors of 32, in
    /// element order (`q6k_values`).
    #[inline(always)]
    pub(crate) unsafe fn q6k_vectors(w: &Q6K) -> [__m256i; 8] {
        let m15 = _mm256_set1_epi8(15);
        let mut q = [_mm256_setzero_si256(); 8];
        for (v, qv) in q.iter_mut().enumerate() {
            let (j, k) = (v / 4, v % 4);
            let ql = _mm256_loadu_si256(w.ql[64 * j + 32 * (k % 2)..].as_ptr() as *const __m256i);
            let ql = if k < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
            let qh = _mm256_loadu_si256(w.qh[32 * j..].as_ptr() as *const __m256i);
            // Bits 2k, 2k+1 of each qh byte, moved to bits 4, 5.
            let hi = _mm256_and_si256(qh, _mm256_set1_epi8((3u8 << (2 * k)) as i8));
            let hi = match k {
                0 => _mm256_slli_epi16(hi, 4),
                1 => _mm256_slli_epi16(hi, 2),
                2 => hi,
                _ => _mm256_srli_epi16(hi, 2),
            };
            *qv = _mm256_or_si256(_mm256_and_si256(ql, m15), hi);
        }
        q
    }

    impl Steps for Q6KAvx2 {
        type Weight = Q6K;
        type Act = Q8K;
        type Unpacked = Q6Regs;
        type Acc = __m256;
        #[inline(always)]
        unsafe fn init() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn unpack(w: &Q6K) -> Q6Regs {
            let q = q6k_vectors(w);
            let sc = &w.scales;
            let mut scales = [_mm256_setzero_si256(); 8];
            for (v, s) in scales.iter_mut().enumerate() {
                let (lo, hi) = (sc[2 * v] as i16, sc[2 * v + 1] as i16);
                *s = _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo));
            }
            let scales_16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr() as *const __m128i));
            Q6Regs {
                q,
                scales,
                scales_16,
                d: f16_to_f32(w.d),
            }
        }
        #[inline(always)]
        unsafe fn step(u: &Q6Regs, y: &Q8K, acc: &mut __m256) {
            let d = y.d * u.d;
            let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let q8sclsub = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, u.scales_16), 5);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..2 {
                let mut p = [_mm256_setzero_si256(); 4];
                for (k, pk) in p.iter_mut().enumerate() {
                    let v = 4 * j + k;
                    let q8 = load_i8(&y.qs32()[v]);
                    *pk = _mm256_madd_epi16(u.scales[v], _mm256_maddubs_epi16(u.q[v], q8));
                }
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[0], p[1]));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[2], p[3]));
            }
            sumi = _mm256_sub_epi32(sumi, q8sclsub);
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
    pub(crate) type Q4KAvx2 = super::Q4KScalar;
    pub(crate) type Q5KAvx2 = super::Q5KScalar;
    pub(crate) type Q6KAvx2 = super::Q6KScalar;
}

kernel!(
    /// Q4_K weights · Q8_K activations, `ggml_vec_dot_q4_K_q8_K` (matrices whose row count
    /// is not a multiple of 8; see `Q4KInterleaved` for the rest).
    Q4KDot: Q4K, Q8K, QK_K, act_quant::quantize_q8k, Q4KScalar, avx2::Q4KAvx2
);
kernel!(
    /// Q5_K weights · Q8_K activations, `ggml_vec_dot_q5_K_q8_K`.
    Q5KDot: Q5K, Q8K, QK_K, act_quant::quantize_q8k, Q5KScalar, avx2::Q5KAvx2
);
kernel!(
    /// Q6_K weights · Q8_K activations, `ggml_vec_dot_q6_K_q8_K`.
    Q6KDot: Q6K, Q8K, QK_K, act_quant::quantize_q8k, Q6KScalar, avx2::Q6KAvx2
);
