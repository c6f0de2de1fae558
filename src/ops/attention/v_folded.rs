//! The V pass of the x86 kernels for tiles whose contexts are short (at most
//! `MAX_CTX` positions): each row and head's 64 outputs are summed from ggml's 64 lanes
//! and folded in registers, in `attention::fold_lanes`' order, instead of storing the
//! lanes (`[64, 64]` floats per row and head) and folding them after.
//!
//! A lane of a short context holds one to three positions, so the lane accumulators that
//! `v_lanes::accumulate_lanes` stores are written and read back for about as many
//! operations as they took to make: 16 KB per row and head, 0.9 MB for a Qwen2.5-0.5B
//! tile of 8 rows × 7 heads, more than a core's L2. Here a row and head reads its V rows
//! (`n · 128` bytes, in L1 for the tile) once per register pass and writes 256 bytes.
//!
//! Bits: a lane's sum is a mul, then FMAs in position order (`acc = v · p + acc`), and
//! lanes no position reaches are +0, as in `accumulate_lanes` and `zero_unreached_lanes`;
//! the fold's every addition pairs the same two operands as `fold_lanes`.

use half::f16;

use crate::ops::ggml_math::{F16_STEP, LANES};

/// The head size of the x86 kernels.
const HEAD_DIM: usize = 64;

/// Tiles whose longest context is at most this take this pass (three positions a lane).
pub(super) const MAX_CTX: usize = 192;

/// One f32 SIMD register of a kernel set (`__m512`, `__m256`) and the operations the pass
/// takes.
pub(super) trait VReg: Copy {
    /// f32 values in one register.
    const WIDTH: usize;
    /// # Safety
    /// The register's CPU features (every method).
    unsafe fn zero() -> Self;
    /// `WIDTH` f16 values at `row`, widened.
    ///
    /// # Safety
    /// `row..row + WIDTH` readable.
    unsafe fn widen(row: *const f16) -> Self;
    /// # Safety
    /// As `zero`.
    unsafe fn splat(x: f32) -> Self;
    /// # Safety
    /// As `zero`.
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// `a · b + c`, rounded once.
    ///
    /// # Safety
    /// As `zero`.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// # Safety
    /// As `zero`.
    unsafe fn add(a: Self, b: Self) -> Self;
    /// # Safety
    /// `dst..dst + WIDTH` writable.
    unsafe fn store(self, dst: *mut f32);
}

/// `out[d] = Σ_pos probs[pos] · v_pos[d]` of one row and head, `probs: [n]` (the row's
/// context), V row of `pos` at `slot_of(pos)` in `v_cache`, summed as ggml's 64 lanes and
/// folded as `fold_lanes` (see the module header); `C` registers of outputs per pass.
///
/// # Safety
/// `R`'s CPU features; `slot_of(pos) + 64 <= v_cache.len()` for `pos < n`.
#[inline(always)]
pub(super) unsafe fn fold_head<R: VReg, const C: usize>(
    probs: &[f32],
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    out: &mut [f32],
) {
    assert!(out.len() >= HEAD_DIM);
    // Functions, not closures calling closures: those were left out of line, without the
    // caller's target features, and every intrinsic in them became a call.
    for c0 in (0..HEAD_DIM).step_by(C * R::WIDTH) {
        let mut x = [[R::zero(); C]; LANES];
        for (l, x) in x.iter_mut().enumerate() {
            *x = folded_lanes::<R, C>(probs, v_cache, slot_of, l, c0);
        }
        // `reduce16`'s tree: t3[i] = x[i + 8] + x[i], t6[i] = t3[i + 4] + t3[i].
        for i in 0..8 {
            x[i] = add(x[i + 8], x[i]);
        }
        for i in 0..4 {
            x[i] = add(x[i + 4], x[i]);
        }
        let sum = add(add(x[0], x[2]), add(x[1], x[3]));
        for (k, s) in sum.iter().enumerate() {
            s.store(out.as_mut_ptr().add(c0 + k * R::WIDTH));
        }
    }
}

/// `fold_lanes`' `x_l = (a_l + a_{l+32}) + (a_{l+16} + a_{l+48})` of lane sums `a`
/// (`lane_sum`), `l < 16`.
///
/// # Safety
/// As `fold_head`.
#[inline(always)]
unsafe fn folded_lanes<R: VReg, const C: usize>(
    probs: &[f32],
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    l: usize,
    c0: usize,
) -> [R; C] {
    let a = |lane: usize| lane_sum::<R, C>(probs, v_cache, slot_of, lane, c0);
    let x0 = add(a(l), a(l + 2 * LANES));
    add(x0, add(a(l + LANES), a(l + 3 * LANES)))
}

/// `a + b`, register by register.
///
/// # Safety
/// `R`'s CPU features.
#[inline(always)]
unsafe fn add<R: VReg, const C: usize>(mut a: [R; C], b: [R; C]) -> [R; C] {
    for (a, b) in a.iter_mut().zip(b) {
        *a = R::add(*a, b);
    }
    a
}

/// Lane `lane`'s sum over dimensions `c0..c0 + C · WIDTH`: positions `lane, lane + 64, …
/// < probs.len()`, a mul then FMAs; +0 when no position reaches the lane.
///
/// # Safety
/// As `fold_head`.
#[inline(always)]
unsafe fn lane_sum<R: VReg, const C: usize>(
    probs: &[f32],
    v_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    lane: usize,
    c0: usize,
) -> [R; C] {
    let n = probs.len();
    if lane >= n {
        return [R::zero(); C];
    }
    let row = |pos: usize| {
        let at = slot_of(pos) + c0;
        v_cache[at..at + C * R::WIDTH].as_ptr()
    };
    let (v, p) = (row(lane), R::splat(probs[lane]));
    let mut sum = [R::zero(); C];
    for (k, s) in sum.iter_mut().enumerate() {
        *s = R::mul(R::widen(v.add(k * R::WIDTH)), p);
    }
    for pos in (lane + F16_STEP..n).step_by(F16_STEP) {
        let (v, p) = (row(pos), R::splat(probs[pos]));
        for (k, s) in sum.iter_mut().enumerate() {
            *s = R::fma(R::widen(v.add(k * R::WIDTH)), p, *s);
        }
    }
    sum
}
