//! Quantized row dot products in ggml's exact float order, one kernel per weight type.
//!
//! llama.cpp's x86 CPU backend computes a single token's matmul with one of two kinds of
//! kernel, and each fixes an order of float operations that we reproduce bit for bit:
//! - `ggml_vec_dot_<w>_<a>` (`arch/x86/quants.c`, AVX2 path; the AVX-512 build only
//!   swaps the integer pair sums for VNNI, which gives the same integers): 8 f32 lanes,
//!   lane `l` holding the products of elements `e` with `(e % 32) / 4 == l`, accumulated
//!   block by block with FMAs and summed by `hsum_float_8` at the end.
//! - the interleaved ("repacked") gemv kernels `ggml_gemv_<w>_8x8_q8_<a>`
//!   (`arch/x86/repack.cpp`), used for Q4_0, Q4_K (and Q2_K on AVX-512 hosts) whenever
//!   the matrix has a multiple of 8 rows: each output is one FMA chain over whole blocks.
//!
//! Every kernel is written twice from the same per-block `Steps`: an AVX2+FMA+F16C
//! version (run-time detected) and a portable scalar version that emulates the lanes, so
//! both give the same bits. `dot` (one activation row) and `dot4` (four rows sharing one
//! unpack of the weights) run the same `step` per row, so a row's result never depends on
//! how rows are grouped (batch invariance).
//!
//! Integer parts are exact in both versions (no i16 pair sum can saturate: activations
//! are within ±127, weights within ±128 (Q8_0) or 0..63 (K-quants)), so only the float
//! order matters; the replay test (`ggml_vectors`) checks it against ggml's own results.

#[cfg(target_arch = "x86_64")]
mod ahead;
mod avx2_panel;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_gemv;
#[cfg(target_arch = "x86_64")]
mod avx512_lanes;
pub mod blocks;
#[cfg(test)]
mod ggml_vectors;
mod interleaved;
mod kquants;
mod legacy;
mod low_k;
pub mod panel;
mod panel_layout;
#[cfg(test)]
mod panel_tests;
#[cfg(test)]
mod tests;

pub use ahead::Ahead;
pub use interleaved::{Q2KInterleaved, Q4KInterleaved, Q4_0Interleaved};
pub use kquants::{Q4KDot, Q5KDot, Q6KDot};
pub use legacy::{Q4_0Dot, Q4_1Dot, Q5_0Dot, Q5_1Dot, Q8_0Dot};
pub use low_k::{Q2KDot, Q3KDot};

use candle_core::quantized::GgmlDType;

/// A weight type's dot product with its quantized activations.
pub trait Kernel {
    /// One weight block (ggml's layout).
    type Weight: Sync;
    /// One activation block, covering as many elements as a weight block.
    type Act: Send + Sync;
    /// Elements per block.
    const BLOCK: usize;
    /// Quantizes one activation row (`x.len() == out.len() * BLOCK`) as ggml does.
    fn quantize(x: &[f32], out: &mut [Self::Act]);
    /// One weight row · one activation row (same number of blocks).
    fn dot(w: &[Self::Weight], x: &[Self::Act]) -> f32;
    /// One weight row · four activation rows; each result equals `dot`'s bit for bit.
    fn dot4(w: &[Self::Weight], x: [&[Self::Act]; 4]) -> [f32; 4];
    /// Four weight rows · one activation row (single-stream decode: four independent
    /// accumulations in flight), prefetching `ahead` as it goes; each result equals
    /// `dot`'s bit for bit.
    fn dot_rows4(w: [&[Self::Weight]; 4], x: &[Self::Act], ahead: Ahead) -> [f32; 4];
    /// Eight weight rows · one activation row (single-stream decode), prefetching `ahead`
    /// as it goes; each result equals `dot`'s bit for bit. Two `dot_rows4` unless the
    /// type has a wider kernel.
    fn dot_rows8(w: [&[Self::Weight]; 8], x: &[Self::Act], ahead: Ahead) -> [f32; 8]
    where
        Self: Sized,
    {
        rows8_by_fours::<Self>(w, x, ahead)
    }
    /// The portable implementation (same bits as the SIMD one; used by tests).
    fn dot_portable(w: &[Self::Weight], x: &[Self::Act]) -> f32;
}

/// A kernel's arithmetic, block by block. `unpack` runs once per weight block, `step`
/// once per (weight block, activation row).
///
/// # Safety
/// The AVX2 implementations use intrinsics: callers must have checked `has_avx2()`.
pub(crate) trait Steps {
    type Weight;
    type Act;
    type Unpacked;
    type Acc: Copy;
    unsafe fn init() -> Self::Acc;
    unsafe fn unpack(w: &Self::Weight) -> Self::Unpacked;
    unsafe fn step(u: &Self::Unpacked, y: &Self::Act, acc: &mut Self::Acc);
    unsafe fn finish(acc: Self::Acc) -> f32;
}

/// `Σ_blocks` of one weight row with one activation row.
#[inline(always)]
pub(crate) unsafe fn run_dot<S: Steps>(w: &[S::Weight], x: &[S::Act]) -> f32 {
    assert_eq!(
        w.len(),
        x.len(),
        "dot: weight and activation block counts differ"
    );
    let mut acc = S::init();
    for (wb, xb) in w.iter().zip(x) {
        let u = S::unpack(wb);
        S::step(&u, xb, &mut acc);
    }
    S::finish(acc)
}

/// Four activation rows against one weight row, unpacking each weight block once.
#[inline(always)]
pub(crate) unsafe fn run_dot4<S: Steps>(w: &[S::Weight], x: [&[S::Act]; 4]) -> [f32; 4] {
    for row in x {
        assert_eq!(
            w.len(),
            row.len(),
            "dot4: weight and activation block counts differ"
        );
    }
    let [x0, x1, x2, x3] = x;
    // Four named accumulators (not an array) so they stay in registers.
    let (mut a0, mut a1, mut a2, mut a3) = (S::init(), S::init(), S::init(), S::init());
    for (b, wb) in w.iter().enumerate() {
        let u = S::unpack(wb);
        S::step(&u, &x0[b], &mut a0);
        S::step(&u, &x1[b], &mut a1);
        S::step(&u, &x2[b], &mut a2);
        S::step(&u, &x3[b], &mut a3);
    }
    // Not `.map(..)`: a closure would not inherit the caller's target features.
    [S::finish(a0), S::finish(a1), S::finish(a2), S::finish(a3)]
}

/// Four weight rows against one activation row: each row's steps in `run_dot`'s order,
/// the rows' independent chains interleaved; `ahead`'s lines asked for block by block.
#[inline(always)]
pub(crate) unsafe fn run_dot_rows4<S: Steps>(
    w: [&[S::Weight]; 4],
    x: &[S::Act],
    ahead: Ahead,
) -> [f32; 4] {
    for row in w {
        assert_eq!(
            row.len(),
            x.len(),
            "dot_rows4: weight and activation block counts differ"
        );
    }
    let [w0, w1, w2, w3] = w;
    let (mut a0, mut a1, mut a2, mut a3) = (S::init(), S::init(), S::init(), S::init());
    for (b, xb) in x.iter().enumerate() {
        ahead.block(b);
        S::step(&S::unpack(&w0[b]), xb, &mut a0);
        S::step(&S::unpack(&w1[b]), xb, &mut a1);
        S::step(&S::unpack(&w2[b]), xb, &mut a2);
        S::step(&S::unpack(&w3[b]), xb, &mut a3);
    }
    [S::finish(a0), S::finish(a1), S::finish(a2), S::finish(a3)]
}

/// `Kernel::dot_rows8` as two `dot_rows4` calls, each prefetching half of `ahead`.
pub(crate) fn rows8_by_fours<K: Kernel>(
    w: [&[K::Weight]; 8],
    x: &[K::Act],
    ahead: Ahead,
) -> [f32; 8] {
    let [a, b, c, d, e, f, g, h] = w;
    let (ahead_lo, ahead_hi) = ahead.halves(x.len());
    let lo = K::dot_rows4([a, b, c, d], x, ahead_lo);
    let hi = K::dot_rows4([e, f, g, h], x, ahead_hi);
    let mut out = [0f32; 8];
    out[..4].copy_from_slice(&lo);
    out[4..].copy_from_slice(&hi);
    out
}

/// Implements `Kernel` for `$name` from a scalar and an AVX2 `Steps` type, and with
/// `rows8: f` an AVX-512 VNNI `dot_rows8` kernel `f` (run at level avx512 on a VNNI host).
macro_rules! kernel {
    ($(#[$doc:meta])* $name:ident: $w:ty, $a:ty, $block:expr, $quant:path, $scalar:ty, $avx2:ty
     $(, rows8: $rows8:path)?) => {
        $(#[$doc])*
        pub struct $name;

        impl $crate::ops::qdot::Kernel for $name {
            type Weight = $w;
            type Act = $a;
            const BLOCK: usize = $block;

            fn quantize(x: &[f32], out: &mut [$a]) {
                assert_eq!(x.len(), out.len() * $block, "quantize: row length");
                $quant(x, out)
            }

            fn dot(w: &[$w], x: &[$a]) -> f32 {
                #[cfg(target_arch = "x86_64")]
                if $crate::ops::qdot::has_avx2() {
                    #[target_feature(enable = "avx2,fma,f16c")]
                    unsafe fn imp(w: &[$w], x: &[$a]) -> f32 {
                        $crate::ops::qdot::run_dot::<$avx2>(w, x)
                    }
                    // SAFETY: AVX2, FMA and F16C were detected at run time.
                    return unsafe { imp(w, x) };
                }
                Self::dot_portable(w, x)
            }

            fn dot4(w: &[$w], x: [&[$a]; 4]) -> [f32; 4] {
                #[cfg(target_arch = "x86_64")]
                if $crate::ops::qdot::has_avx2() {
                    #[target_feature(enable = "avx2,fma,f16c")]
                    unsafe fn imp(w: &[$w], x: [&[$a]; 4]) -> [f32; 4] {
                        $crate::ops::qdot::run_dot4::<$avx2>(w, x)
                    }
                    // SAFETY: AVX2, FMA and F16C were detected at run time.
                    return unsafe { imp(w, x) };
                }
                // SAFETY: the scalar steps use no intrinsics.
                unsafe { $crate::ops::qdot::run_dot4::<$scalar>(w, x) }
            }

            fn dot_rows4(
                w: [&[$w]; 4],
                x: &[$a],
                ahead: $crate::ops::qdot::Ahead,
            ) -> [f32; 4] {
                #[cfg(target_arch = "x86_64")]
                if $crate::ops::qdot::has_avx2() {
                    #[target_feature(enable = "avx2,fma,f16c")]
                    unsafe fn imp(
                        w: [&[$w]; 4],
                        x: &[$a],
                        ahead: $crate::ops::qdot::Ahead,
                    ) -> [f32; 4] {
                        $crate::ops::qdot::run_dot_rows4::<$avx2>(w, x, ahead)
                    }
                    // SAFETY: AVX2, FMA and F16C were detected at run time.
                    return unsafe { imp(w, x, ahead) };
                }
                // SAFETY: the scalar steps use no intrinsics.
                unsafe { $crate::ops::qdot::run_dot_rows4::<$scalar>(w, x, ahead) }
            }

            fn dot_portable(w: &[$w], x: &[$a]) -> f32 {
                // SAFETY: the scalar steps use no intrinsics.
                unsafe { $crate::ops::qdot::run_dot::<$scalar>(w, x) }
            }
            $(
            fn dot_rows8(
                w: [&[$w]; 8],
                x: &[$a],
                ahead: $crate::ops::qdot::Ahead,
            ) -> [f32; 8] {
                #[cfg(target_arch = "x86_64")]
                if $crate::ops::cpu_features::avx512_vnni() {
                    // SAFETY: the process's level allows AVX-512 F/BW/VL + VNNI (with FMA
                    // and F16C), as the panel kernels require.
                    return unsafe { $rows8(w, x, ahead) };
                }
                $crate::ops::qdot::rows8_by_fours::<Self>(w, x, ahead)
            }
            )?
        }
    };
}
pub(crate) use kernel;

/// Whether llama.cpp's CPU backend (built for this host) repacks a `dtype` matrix with
/// `rows` rows (`ggml_repack_get_optimal_repack_type` on x86: Q4_0 and Q4_K with AVX2,
/// Q2_K with AVX-512, always only for a multiple of 8 rows). It follows what the CPU has,
/// not `TESSERA_CPU_FEATURES`: the reference's float order is the same whatever level our
/// kernels run at (each order has a scalar twin), so a forced level keeps llama.cpp's bits.
pub fn llama_cpp_repacks(dtype: GgmlDType, rows: usize) -> bool {
    if !rows.is_multiple_of(8) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::ops::cpu_features::{self, Level};
        let host = cpu_features::host().level;
        match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4K => host >= Level::Avx2,
            GgmlDType::Q2K => host >= Level::Avx512,
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dtype;
        false
    }
}

/// Whether the AVX2 kernels may run (the process's level, `cpu_features`).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    crate::ops::cpu_features::avx2()
}

/// ggml's `hsum_float_8`: `((x0+x4) + (x2+x6)) + ((x1+x5) + (x3+x7))`.
#[inline(always)]
pub(crate) fn hsum8(x: [f32; 8]) -> f32 {
    let r = [x[4] + x[0], x[5] + x[1], x[6] + x[2], x[7] + x[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// The AVX2 lane (0..8) that accumulates element `e` of a block: bytes `4l..4l+4` of
/// every 32-byte vector.
#[inline(always)]
pub(crate) fn lane(e: usize) -> usize {
    (e % 32) / 4
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    //! AVX2 helpers shared by the kernels (ggml's names).
    use std::arch::x86_64::*;

    /// f16 → f32 with F16C (exact, like ggml's table; `half` checks the CPU on every call).
    /// Written as asm because LLVM lowers the intrinsic version to `vpinsrw` into whatever
    /// register is at hand, often the accumulator: a false dependency that serializes the
    /// dot product's blocks. `vmovd` writes the whole register.
    #[inline(always)]
    pub unsafe fn f16_to_f32(h: half::f16) -> f32 {
        let v: __m128;
        std::arch::asm!(
            "vmovd {v}, {bits:e}",
            "vcvtph2ps {v}, {v}",
            bits = in(reg) h.to_bits() as u32,
            v = out(xmm_reg) v,
            options(pure, nomem, nostack, preserves_flags),
        );
        _mm_cvtss_f32(v)
    }

    /// ggml's `hsum_float_8`.
    #[inline(always)]
    pub unsafe fn hsum_float_8(x: __m256) -> f32 {
        let mut res = _mm256_extractf128_ps(x, 1);
        res = _mm_add_ps(res, _mm256_castps256_ps128(x));
        res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }

    /// ggml's `hsum_i32_8` (exact).
    #[inline(always)]
    pub unsafe fn hsum_i32_8(a: __m256i) -> i32 {
        let sum128 = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
        let hi64 = _mm_unpackhi_epi64(sum128, sum128);
        let sum64 = _mm_add_epi32(hi64, sum128);
        let hi32 = _mm_shuffle_epi32(sum64, 0b10_11_00_01);
        _mm_cvtsi128_si32(_mm_add_epi32(sum64, hi32))
    }

    /// 16 packed nibbles → 32 bytes in 0..16 (low nibbles first).
    #[inline(always)]
    pub unsafe fn bytes_from_nibbles_32(qs: &[u8; 16]) -> __m256i {
        let tmp = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
        let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
        _mm256_and_si256(_mm256_set1_epi8(0x0F), bytes)
    }

    /// 32 bits → 32 bytes of 0x00 / 0xFF.
    #[inline(always)]
    pub unsafe fn bytes_from_bits_32(qh: &[u8; 4]) -> __m256i {
        let x32 = u32::from_le_bytes(*qh) as i32;
        let shuf = _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf);
        let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
        _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
    }

    /// Signed bytes · signed bytes, summed in fours into 8 i32 lanes.
    #[inline(always)]
    pub unsafe fn mul_sum_i8_pairs(x: __m256i, y: __m256i) -> __m256i {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        mul_sum_us8_pairs(ax, sy)
    }

    /// Unsigned bytes · signed bytes, summed in fours into 8 i32 lanes.
    #[inline(always)]
    pub unsafe fn mul_sum_us8_pairs(ax: __m256i, sy: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(ax, sy))
    }

    /// A 32-byte unaligned load.
    #[inline(always)]
    pub unsafe fn load(p: &[u8; 32]) -> __m256i {
        _mm256_loadu_si256(p.as_ptr() as *const __m256i)
    }

    /// A 32-byte unaligned load of signed bytes (the type makes the 32 bytes exist;
    /// callers index fixed-size groups, e.g. `Q8K::qs32`, whose checks fold away).
    #[inline(always)]
    pub unsafe fn load_i8(p: &[i8; 32]) -> __m256i {
        _mm256_loadu_si256(p.as_ptr() as *const __m256i)
    }
}
