//! Float weights (F32, F16) as ggml multiplies them: the activations rounded as ggml's
//! `vec_dot` sees them, each weight row widened to f32 once per tile, then dotted in
//! `ggml_vec_dot_f32` / `ggml_vec_dot_f16` order (`ggml_math`).

use std::cell::RefCell;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{tiled, with_quantized};
use crate::ops::ggml_math;

/// Float weights as ggml multiplies them: F32 rows dotted in `ggml_vec_dot_f32` order;
/// F16 rows against activations rounded to f16, in `ggml_vec_dot_f16` order.
pub(super) fn matmul_float<W: FloatWeight>(
    w: &[W],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::ops::cpu_features::avx2() {
        // SAFETY: the chosen level includes FMA.
        return unsafe { matmul_float_fma(w, n, k, x, m, y) };
    }
    matmul_float_body(w, n, k, x, m, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn matmul_float_fma<W: FloatWeight>(
    w: &[W],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) {
    matmul_float_body(w, n, k, x, m, y)
}

#[inline(always)]
fn matmul_float_body<W: FloatWeight>(
    w: &[W],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) {
    let quantize = |row: &[f32], q: &mut [f32]| W::round_activations(row, q);
    with_quantized(x, m, k, k, quantize, |xq: &[f32]| {
        tiled(n, m, y, |col, rows, out| {
            FLOAT_ROW.with(|cell| {
                let mut w_row = cell.borrow_mut();
                w_row.resize(k, 0.0);
                W::widen(&w[col * k..(col + 1) * k], &mut w_row);
                float_dots::<W>(&w_row, xq, rows, k, out);
            })
        })
    })
}

/// `out[i] = W::dot(w_row, xq[rows[i]])`; FMA-compiled where available (closures above do
/// not inherit target features).
fn float_dots<W: FloatWeight>(
    w_row: &[f32],
    xq: &[f32],
    rows: std::ops::Range<usize>,
    k: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::ops::cpu_features::avx2() {
        // SAFETY: the chosen level includes FMA.
        return unsafe { float_dots_fma::<W>(w_row, xq, rows, k, out) };
    }
    for (o, r) in out.iter_mut().zip(rows) {
        *o = W::dot(w_row, &xq[r * k..(r + 1) * k]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn float_dots_fma<W: FloatWeight>(
    w_row: &[f32],
    xq: &[f32],
    rows: std::ops::Range<usize>,
    k: usize,
    out: &mut [f32],
) {
    for (o, r) in out.iter_mut().zip(rows) {
        *o = W::dot(w_row, &xq[r * k..(r + 1) * k]);
    }
}

thread_local! {
    /// One float weight row widened to f32.
    static FLOAT_ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// F32 or F16 weight elements.
pub(super) trait FloatWeight: Copy + Send + Sync {
    fn widen(src: &[Self], dst: &mut [f32]);
    /// The activations as the dot product sees them.
    fn round_activations(src: &[f32], dst: &mut [f32]);
    fn dot(w: &[f32], x: &[f32]) -> f32;
}

impl FloatWeight for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn round_activations(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn dot(w: &[f32], x: &[f32]) -> f32 {
        ggml_math::dot_f32(w, x)
    }
}

impl FloatWeight for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn round_activations(src: &[f32], dst: &mut [f32]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = f16::from_f32(v).to_f32();
        }
    }
    #[inline(always)]
    fn dot(w: &[f32], x: &[f32]) -> f32 {
        ggml_math::dot_f16(w, x)
    }
}
