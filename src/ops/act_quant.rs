//! Activation quantizers written to ggml's exact rounding, for the weight types whose dot
//! products take Q8_0 (Q4_0, Q5_0, Q8_0 weights), Q8_1 (Q4_1, Q5_1 weights) or Q8_K (all
//! K-quants) activations. candle's own quantizers scale by `1/d` and round half away from
//! zero; ggml scales by `127/max` and rounds half to even (`_mm256_round_ps`,
//! `nearest_int`), and those last-bit choices show up in the logits (see `ggml_math`).

#[cfg(target_arch = "x86_64")]
mod avx2;

use candle_core::quantized::k_quants::QK_K;
use half::f16;

/// ggml's `block_q8_0` (same layout as candle's `BlockQ8_0`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Q8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

impl Q8_0 {
    /// A block of zeros.
    pub const ZERO: Q8_0 = Q8_0 {
        d: f16::ZERO,
        qs: [0; 32],
    };
}

const _: () = assert!(std::mem::size_of::<Q8_0>() == 34);

/// ggml's `block_q8_1` values: `d` and `s` (= d·Σq) are the f16-rounded values ggml
/// stores, kept widened to f32 so the dot products' inner loops need no conversions
/// (so the layout is not ggml's: 40 bytes instead of 36).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct Q8_1 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<Q8_1>() == 40);

/// ggml's `block_q8_K` (same layout as candle's `BlockQ8K`).
#[repr(C)]
pub struct Q8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

impl Q8K {
    /// The quants in groups of 32 (what one AVX2 register holds): `[QK_K / 32][32]`.
    #[inline(always)]
    pub fn qs32(&self) -> &[[i8; 32]] {
        self.qs.as_chunks::<32>().0
    }
}

/// Round-half-to-even for |x| < 2^22 (ggml's `nearest_int` trick), no libm call.
#[inline(always)]
pub fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    (x + MAGIC) - MAGIC
}

/// ggml's `quantize_row_q8_0` (AVX2 path): d = max|x|/127, q = round(x · 127/max).
pub fn quantize_q8_0(x: &[f32], out: &mut [Q8_0]) {
    quantize_rows(x, out, 32, q8_0_block, |_xs, _y| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only called after `cpu_features::avx2()` (see `quantize_rows`).
        return unsafe { avx2::q8_0_block(_xs, _y) };
        #[cfg(not(target_arch = "x86_64"))]
        false
    });
}

/// ggml's `quantize_row_q8_1` (AVX2 path): as `quantize_q8_0`, plus the scaled sum
/// `s = d·Σq`; both rounded to f16 as ggml stores them.
pub fn quantize_q8_1(x: &[f32], out: &mut [Q8_1]) {
    quantize_rows(x, out, 32, q8_1_block, |_xs, _y| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `quantize_q8_0`.
        return unsafe { avx2::q8_1_block(_xs, _y) };
        #[cfg(not(target_arch = "x86_64"))]
        false
    });
}

/// ggml's `quantize_row_q8_K_ref`: scale from the signed value of largest magnitude,
/// q = nearest_int(-127/max · x) capped at 127, with 16-element sums.
pub fn quantize_q8k(x: &[f32], out: &mut [Q8K]) {
    quantize_rows(x, out, QK_K, q8k_block, |_xs, _y| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `quantize_q8_0`.
        return unsafe { avx2::q8k_block(_xs, _y) };
        #[cfg(not(target_arch = "x86_64"))]
        false
    });
}

/// Quantizes `x` block by block (`elems` values each) into `out`: by `simd` where the
/// process's level has AVX2 and it takes the block (it declines blocks with a NaN or an
/// infinity), else by the scalar `block` (the definition of the bytes).
#[inline(always)]
fn quantize_rows<B>(
    x: &[f32],
    out: &mut [B],
    elems: usize,
    block: fn(&[f32], &mut B),
    simd: impl Fn(&[f32], &mut B) -> bool,
) {
    let vector = crate::ops::cpu_features::avx2();
    for (xs, y) in x.chunks_exact(elems).zip(out.iter_mut()) {
        if !(vector && simd(xs, y)) {
            block(xs, y);
        }
    }
}

/// One block of `quantize_q8_0`, scalar.
fn q8_0_block(xs: &[f32], y: &mut Q8_0) {
    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    y.d = f16::from_f32(amax / 127.0);
    for (q, &v) in y.qs.iter_mut().zip(xs) {
        *q = round_half_even(v * id) as i8;
    }
}

/// One block of `quantize_q8_1`, scalar.
fn q8_1_block(xs: &[f32], y: &mut Q8_1) {
    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in y.qs.iter_mut().zip(xs) {
        *q = round_half_even(v * id) as i8;
        sum += i32::from(*q);
    }
    y.d = f16::from_f32(d).to_f32();
    y.s = f16::from_f32(d * sum as f32).to_f32();
}

/// One block of `quantize_q8k`, scalar.
fn q8k_block(xs: &[f32], y: &mut Q8K) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in xs {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        y.d = 0.0;
        y.qs = [0; QK_K];
        y.bsums = [0; QK_K / 16];
        return;
    }
    let iscale = -127.0 / max;
    for (q, &v) in y.qs.iter_mut().zip(xs) {
        *q = round_half_even(iscale * v).min(127.0) as i8;
    }
    for (sum, chunk) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
        *sum = chunk.iter().map(|&q| q as i16).sum();
    }
    y.d = 1.0 / iscale;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rounds_half_to_even_with_ggml_scale() {
        let mut x = [0f32; 32];
        x[0] = -127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        let mut q = [Q8_0 {
            d: f16::ZERO,
            qs: [0; 32],
        }];
        quantize_q8_0(&x, &mut q);
        assert_eq!(&q[0].qs[..3], &[-127, 2, 4]);
        assert_eq!(q[0].d.to_f32(), 1.0);
    }

    #[test]
    fn q8_1_rounds_half_to_even_and_keeps_the_scaled_sum() {
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        let mut q = [Q8_1::default()];
        quantize_q8_1(&x, &mut q);
        assert_eq!(&q[0].qs[..3], &[127, 2, -4]);
        assert_eq!(q[0].d, 1.0);
        assert_eq!(q[0].s, 125.0);
    }

    #[test]
    fn round_half_even_matches_std() {
        for v in [-127.0f32, -126.5, -0.5, 0.5, 1.5, 2.49, 2.5, 126.5] {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn q8k_uses_the_signed_max_and_block_sums() {
        let mut x = [0.5f32; QK_K];
        x[3] = -2.0;
        let mut q = [Q8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; 16],
        }];
        quantize_q8k(&x, &mut q);
        // iscale = -127 / -2 = 63.5: 0.5 → 31.75 → 32; -2 → -127.
        assert_eq!(q[0].qs[3], -127);
        assert_eq!(q[0].qs[0], 32);
        assert_eq!(q[0].bsums[0], 15 * 32 - 127);
        assert_eq!(q[0].d, 1.0 / 63.5);
    }

    /// Blocks that probe the vector quantizers' edges: random magnitudes over many
    /// decades, ties of `x` and `-x` at the maximum (either first), halves after scaling,
    /// zeros, a single non-zero, and NaN / ±∞ (declined to the scalar quantizer).
    fn probe_blocks(elems: usize) -> Vec<Vec<f32>> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut blocks: Vec<Vec<f32>> = (0..400)
            .map(|i| {
                let scale = 10f32.powi(i % 12 - 6);
                (0..elems)
                    .map(|_| rng.random_range(-1.0f32..1.0) * scale)
                    .collect()
            })
            .collect();
        let mut tie = vec![0.25f32; elems];
        tie[5] = 3.0;
        tie[9] = -3.0;
        blocks.push(tie.clone());
        tie[5] = -3.0;
        tie[9] = 3.0;
        blocks.push(tie);
        // 127 / 2.54 = 50 exactly: values k + 0.5 after scaling.
        blocks.push(
            (0..elems)
                .map(|j| (j as f32 + 0.5) / 50.0 * if j % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
        );
        blocks.push(vec![0.0; elems]);
        blocks.push(
            (0..elems)
                .map(|j| if j == elems - 1 { -1e-30 } else { -0.0 })
                .collect(),
        );
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut b = vec![0.5f32; elems];
            b[elems / 2] = bad;
            blocks.push(b);
        }
        blocks
    }

    #[test]
    fn vector_quantizers_write_the_scalar_bytes() {
        for xs in probe_blocks(32) {
            let mut fast = [Q8_0::ZERO];
            let mut slow = Q8_0::ZERO;
            quantize_q8_0(&xs, &mut fast);
            q8_0_block(&xs, &mut slow);
            assert_eq!(fast[0], slow, "q8_0 of {xs:?}");
            let (mut fast, mut slow) = ([Q8_1::default()], Q8_1::default());
            quantize_q8_1(&xs, &mut fast);
            q8_1_block(&xs, &mut slow);
            assert_eq!(fast[0].qs, slow.qs, "q8_1 of {xs:?}");
            assert_eq!(
                (fast[0].d.to_bits(), fast[0].s.to_bits()),
                (slow.d.to_bits(), slow.s.to_bits())
            );
        }
        let zero = || Q8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        };
        for xs in probe_blocks(QK_K) {
            let (mut fast, mut slow) = ([zero()], zero());
            quantize_q8k(&xs, &mut fast);
            q8k_block(&xs, &mut slow);
            assert_eq!(fast[0].qs, slow.qs, "q8k of {xs:?}");
            assert_eq!(fast[0].bsums, slow.bsums);
            assert_eq!(fast[0].d.to_bits(), slow.d.to_bits());
        }
    }
}
