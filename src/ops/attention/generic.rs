//! The generic path's steps of `attend` (any CPU, any head size): the scalar twin that
//! every x86 attention kernel is checked against bit for bit. `SIMD` variants of `widen`
//! and `dot` take ggml's x86 steps when `attend_fma` has made AVX2/FMA/F16C known; the
//! bits are the same either way.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::AttnInputs;
use crate::ops::ggml_math::{dot_f16, expf, reduce16, F16_STEP, LANES};

/// `acc[g, lane, :]` = the V rows weighted by `probs[g * stride + pos]`, position `pos`
/// feeding lane `pos % 64` (`ggml_vec_dot_f16`'s order): a lane's first product is
/// stored (an FMA onto zero), later ones fused in; lanes no position reaches are zeroed.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn accumulate_v<const SIMD: bool>(
    inp: &AttnInputs<'_>,
    n_ctx: usize,
    stride: usize,
    group: usize,
    slot_of: &impl Fn(usize) -> usize,
    probs: &[f32],
    kv_row: &mut [f32],
    acc: &mut [f32],
) {
    let hd = kv_row.len();
    for pos in 0..n_ctx {
        let at = slot_of(pos);
        widen::<SIMD>(&inp.v_cache[at..at + hd], kv_row);
        let lane = pos % F16_STEP;
        for g in 0..group {
            let p = probs[g * stride + pos];
            let dst = &mut acc[(g * F16_STEP + lane) * hd..][..hd];
            if pos < F16_STEP {
                for (a, &v) in dst.iter_mut().zip(kv_row.iter()) {
                    *a = v * p;
                }
            } else {
                for (a, &v) in dst.iter_mut().zip(kv_row.iter()) {
                    *a = v.mul_add(p, *a);
                }
            }
        }
    }
    if n_ctx < F16_STEP {
        for g in 0..group {
            acc[(g * F16_STEP + n_ctx) * hd..(g + 1) * F16_STEP * hd].fill(0.0);
        }
    }
}

/// Folds 64 lanes `[64, hd]` into lane 0 exactly as `ggml_math::reduce64` does, for all
/// `hd` outputs at once (element-wise over `hd`, so it vectorizes).
#[inline(always)]
pub(super) fn fold_lanes(lanes: &mut [f32], hd: usize) {
    let add_into = |lanes: &mut [f32], dst: usize, a: usize, b: usize| {
        for d in 0..hd {
            lanes[dst * hd + d] = lanes[a * hd + d] + lanes[b * hd + d];
        }
    };
    for l in 0..LANES {
        add_into(lanes, l, l, 2 * LANES + l); // x0 = a[l] + a[l+32]
        add_into(lanes, LANES + l, LANES + l, 3 * LANES + l); // x1 = a[l+16] + a[l+48]
        add_into(lanes, l, l, LANES + l); // x = x0 + x1
    }
    for i in 0..8 {
        add_into(lanes, i, i + 8, i);
    }
    for i in 0..4 {
        add_into(lanes, i, i + 4, i);
    }
    add_into(lanes, 0, 0, 2);
    add_into(lanes, 1, 1, 3);
    add_into(lanes, 0, 0, 1);
}

/// f16 K/V row → f32.
#[inline(always)]
pub(super) fn widen<const SIMD: bool>(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if SIMD && src.len().is_multiple_of(8) {
        // SAFETY: SIMD is only true inside `attend_fma` (F16C checked by its caller).
        return unsafe { crate::ops::ggml_math::x86::widen_f16(src, dst) };
    }
    src.convert_to_f32_slice(dst);
}

/// `ggml_vec_dot_f16` of a K row and a query head.
#[inline(always)]
pub(super) fn dot<const SIMD: bool>(k: &[f32], q: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if SIMD && k.len().is_multiple_of(F16_STEP) {
        // SAFETY: SIMD is only true inside `attend_fma` (AVX2/FMA checked by its caller).
        return unsafe { crate::ops::ggml_math::x86::dot_f16_steps(k, q, k.len()) };
    }
    dot_f16(k, q)
}

/// `x[i] = f16(x[i])` widened back to f32: the probabilities as ggml's f16 V pass sees them.
pub(super) fn round_in_place_to_f16(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = f16::from_f32(*v).to_f32();
    }
}

/// ggml's `soft_max`: exponentials by `ggml_math::expf` in 16-lane chunks, each chunk's
/// sum reduced as AVX-512 does and accumulated in f64, then one f32 scale.
#[inline(always)]
pub(super) fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for chunk in x.chunks_mut(LANES) {
        let mut lanes = [0f32; LANES];
        for (lane, v) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *v = expf(*v - max);
            *lane = *v;
        }
        sum += reduce16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}
