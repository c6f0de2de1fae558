//! SwiGLU, `silu(gate) * up`, row by row as ggml's `ggml_vec_swiglu_f32` computes it in
//! its AVX-512 build: whole 16-lane chunks with ggml's vectorized exp, the elements after
//! the last whole chunk with libm. The rows are split over the compute pool, and each
//! CPU level's kernel gives the bits of the scalar twin (`ggml_math::silu`, `silu_tail`).
//!
//! Two layouts of the input: `gate` and `up` in separate buffers (the result replaces
//! `gate`), or one stacked `[gate | up]` row per token, as a fused gate+up projection
//! writes it (the result goes to its own buffer, so the halves are never copied apart).

use super::ggml_math::{self, LANES};
use super::pool;

/// `gate[t][i] = silu(gate[t][i]) * up[t][i]` over each `[width]` row of
/// `gate, up: [tokens, width]`.
pub fn silu_mul(gate: &mut [f32], up: &[f32], width: usize) {
    assert_eq!(gate.len(), up.len());
    pool::for_row_runs(gate, width, |first, out| {
        let up = &up[first * width..first * width + out.len()];
        for (out_row, up_row) in out.chunks_exact_mut(width).zip(up.chunks_exact(width)) {
            row(out_row, None, up_row);
        }
    });
}

/// `out[t][i] = silu(gate_up[t][i]) * gate_up[t][width + i]` for `gate_up: [tokens,
/// 2 * width]` (each row the gate part, then the up part) and `out: [tokens, width]`.
pub fn silu_mul_stacked(gate_up: &[f32], out: &mut [f32], width: usize) {
    assert_eq!(gate_up.len(), 2 * out.len());
    pool::for_row_runs(out, width, |first, out| {
        for (t, out_row) in out.chunks_exact_mut(width).enumerate() {
            let at = (first + t) * 2 * width;
            let (gate_row, up_row) = gate_up[at..at + 2 * width].split_at(width);
            row(out_row, Some(gate_row), up_row);
        }
    });
}

/// One row: `out[i] = silu(g[i]) * up[i]`, where `g` is `gate` or, without it, `out`'s
/// own values.
fn row(out: &mut [f32], gate: Option<&[f32]>, up: &[f32]) {
    debug_assert!(out.len() == up.len() && gate.is_none_or(|g| g.len() == out.len()));
    #[cfg(target_arch = "x86_64")]
    {
        use super::cpu_features;
        if cpu_features::avx512() {
            // SAFETY: the chosen level includes AVX-512F; lengths checked above.
            return unsafe { x86::row_avx512(out, gate, up) };
        }
        if cpu_features::avx2() {
            // SAFETY: the chosen level includes AVX2 and FMA; lengths checked above.
            return unsafe { x86::row_avx2(out, gate, up) };
        }
    }
    row_scalar(out, gate, up, 0);
}

/// The scalar twin from element `from` on: `silu` over whole 16-lane chunks, `silu_tail`
/// after them.
fn row_scalar(out: &mut [f32], gate: Option<&[f32]>, up: &[f32], from: usize) {
    let full = out.len() - out.len() % LANES;
    for i in from..out.len() {
        let g = gate.map_or(out[i], |g| g[i]);
        let silu = if i < full {
            ggml_math::silu(g)
        } else {
            ggml_math::silu_tail(g)
        };
        out[i] = silu * up[i];
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{row_scalar, LANES};
    use crate::ops::ggml_math::x86::{expf16, expf8};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F; `gate` (when given) and `up` are as long as `out`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row_avx512(out: &mut [f32], gate: Option<&[f32]>, up: &[f32]) {
        let full = out.len() - out.len() % LANES;
        let (po, pu) = (out.as_mut_ptr(), up.as_ptr());
        let pg = gate.map_or(po as *const f32, <[f32]>::as_ptr);
        let one = _mm512_set1_ps(1.0);
        for i in (0..full).step_by(LANES) {
            // ggml_v_silu: x / (1 + exp(0 - x)); then · up.
            let x = _mm512_loadu_ps(pg.add(i));
            let e = expf16(_mm512_sub_ps(_mm512_setzero_ps(), x));
            let silu = _mm512_div_ps(x, _mm512_add_ps(one, e));
            _mm512_storeu_ps(po.add(i), _mm512_mul_ps(silu, _mm512_loadu_ps(pu.add(i))));
        }
        row_scalar(out, gate, up, full);
    }

    /// # Safety
    /// AVX2 and FMA; `gate` (when given) and `up` are as long as `out`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row_avx2(out: &mut [f32], gate: Option<&[f32]>, up: &[f32]) {
        let full = out.len() - out.len() % LANES;
        let (po, pu) = (out.as_mut_ptr(), up.as_ptr());
        let pg = gate.map_or(po as *const f32, <[f32]>::as_ptr);
        let one = _mm256_set1_ps(1.0);
        // Whole 16-lane chunks as two 8-lane halves: the same steps lane by lane.
        for i in (0..full).step_by(8) {
            let x = _mm256_loadu_ps(pg.add(i));
            let e = expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let silu = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(po.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(pu.add(i))));
        }
        row_scalar(out, gate, up, full);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu_features::{host, Level};

    #[test]
    fn silu_mul_matches_definition() {
        let silu = |x: f32| x / (1.0 + (-x).exp());
        let gate: Vec<f32> = (0..40).map(|i| i as f32 * 0.37 - 7.0).collect();
        let up: Vec<f32> = (0..40).map(|i| 1.0 + i as f32 * 0.1).collect();
        let mut got = gate.clone();
        silu_mul(&mut got, &up, 20);
        for i in 0..40 {
            let want = silu(gate[i]) * up[i];
            assert!((got[i] - want).abs() <= 1e-6 * want.abs().max(1.0), "{i}");
        }
        // The tail of each row (elements 16..20) is computed with libm exactly.
        assert_eq!(got[18], silu(gate[18]) * up[18]);
    }

    /// Gate values over the whole range `expf` treats differently: tiny, ordinary,
    /// saturating to 0 and to ∞ (|n| > 192), ±0, ±∞, NaN, subnormals.
    fn gate_values(n: usize, seed: u64) -> Vec<f32> {
        let special = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-40,
            -1e-40,
            88.7,
            -88.7,
            133.0,
            -133.0,
            140.0,
            -140.0,
            1e30,
            -1e30,
        ];
        let mut state = seed;
        (0..n)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (state >> 33) as u32;
                match r % 8 {
                    0 => special[(r as usize / 8) % special.len()],
                    1 => f32::from_bits(r.rotate_left(7)), // any bit pattern
                    _ => ((r % 20001) as f32 - 10000.0) / 500.0 + (i % 3) as f32 * 1e-3,
                }
            })
            .collect()
    }

    /// Bit patterns, every NaN as one (which NaN's payload an operation keeps is the
    /// compiler's choice of operand order, not arithmetic).
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter()
            .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
            .collect()
    }

    #[test]
    fn every_level_gives_the_scalar_twins_bits_in_both_layouts() {
        // Widths with and without a libm tail; 40 rows of 4870 are large enough that the
        // rows are split over the pool.
        for (tokens, width) in [(3usize, 37usize), (5, 64), (40, 4870), (2, 8)] {
            let gate = gate_values(tokens * width, width as u64);
            let up = gate_values(tokens * width, 7 + width as u64);
            let mut want = gate.clone();
            for (g, u) in want.chunks_exact_mut(width).zip(up.chunks_exact(width)) {
                row_scalar(g, None, u, 0);
            }
            let mut in_place = gate.clone();
            silu_mul(&mut in_place, &up, width);
            let stacked: Vec<f32> = gate
                .chunks_exact(width)
                .zip(up.chunks_exact(width))
                .flat_map(|(g, u)| g.iter().chain(u).copied())
                .collect();
            let mut from_stacked = vec![0f32; tokens * width];
            silu_mul_stacked(&stacked, &mut from_stacked, width);
            assert_eq!(bits(&in_place), bits(&want), "in place, {tokens}×{width}");
            assert_eq!(
                bits(&from_stacked),
                bits(&want),
                "stacked, {tokens}×{width}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_kernels_give_the_scalar_twins_bits() {
        // Called directly, so this asks what the CPU has, not the chosen level.
        let width = 16 * 40 + 5;
        let gate = gate_values(width, 99);
        let up = gate_values(width, 100);
        let mut want = gate.clone();
        row_scalar(&mut want, None, &up, 0);
        if host().level >= Level::Avx2 {
            let mut got = vec![0f32; width];
            // SAFETY: the host has AVX2 and FMA; equal lengths.
            unsafe { x86::row_avx2(&mut got, Some(&gate), &up) };
            assert_eq!(bits(&got), bits(&want), "avx2");
        }
        if host().level >= Level::Avx512 {
            let mut got = gate.clone();
            // SAFETY: the host has AVX-512F; equal lengths.
            unsafe { x86::row_avx512(&mut got, None, &up) };
            assert_eq!(bits(&got), bits(&want), "avx512");
        }
    }
}
