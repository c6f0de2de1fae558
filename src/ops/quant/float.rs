//! Float weights (F32, F16) as ggml multiplies them: the activations rounded as ggml's
//! `vec_dot` sees them, each weight row widened to f32 once per tile, then dotted in
//! `ggml_vec_dot_f32` / `ggml_vec_dot_f16` order (`ggml_math`). `matmul_float_here` is
//! the same arithmetic on the calling thread, for small matrices (LoRA's rank-r factors)
//! where the pool's tiles cost more than the products.

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
                let mut buf = cell.borrow_mut();
                let w_row = W::row_f32(&w[col * k..(col + 1) * k], &mut buf);
                float_dots::<W>(w_row, xq, rows, k, out);
            })
        })
    })
}

/// `y[m, n] = x[m, k] · Wᵀ` on the calling thread: per element exactly `matmul_float`'s
/// arithmetic (the activations rounded as `W::dot` sees them, the weight row widened, one
/// `W::dot`), without the pool, the tiles or a copy of F32 weight rows.
pub(super) fn matmul_float_here<W: FloatWeight>(
    w: &[W],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) {
    HERE_SCRATCH.with(|cell| {
        let scratch = &mut *cell.borrow_mut();
        // The body is a function of its own, not this closure: closures do not inherit
        // target features, and `mul_add` outside an FMA function is a libm call.
        #[cfg(target_arch = "x86_64")]
        if crate::ops::cpu_features::avx2() {
            // SAFETY: the chosen level includes FMA.
            return unsafe { matmul_float_here_fma(w, n, k, x, m, y, scratch) };
        }
        matmul_float_here_body(w, n, k, x, m, y, scratch)
    })
}

/// `matmul_float_here`'s rounded activations `[m, k]` and widened weights.
type HereScratch = (Vec<f32>, Vec<f32>);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn matmul_float_here_fma<W: FloatWeight>(
    w: &[W],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    scratch: &mut HereScratch,
) {
    matmul_float_here_body(w, n, k, x, m, y, scratch)
}

#[inline(always)]
fn matmul_float_here_body<W: FloatWeight>(
    w: &[W],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    (rounded, buf): &mut HereScratch,
) {
    let xq: &[f32] = if W::ROUNDS_ACTIVATIONS {
        rounded.resize(m * k, 0.0);
        for (src, dst) in x.chunks_exact(k).zip(rounded.chunks_exact_mut(k)) {
            W::round_activations(src, dst);
        }
        rounded
    } else {
        x
    };
    if k < ggml_math::F16_STEP {
        // Rows shorter than one 64-lane step: `W::dot` is ggml's sequential leftover
        // loop, one dependent add per element. Computed for many weight rows at once
        // (lane j = row j, the same adds in the same order) over `W` transposed.
        buf.resize(k * n, 0.0);
        for (col, row) in w.chunks_exact(k).enumerate() {
            for (t, &v) in row.iter().enumerate() {
                buf[t * n + col] = v.to_f32();
            }
        }
        for (x_row, y_row) in xq.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
            short_dots::<W::Leftover>(buf, x_row, y_row);
        }
        return;
    }
    for col in 0..n {
        let w_row = W::row_f32(&w[col * k..(col + 1) * k], buf);
        for (i, x_row) in xq.chunks_exact(k).enumerate() {
            y[i * n + col] = W::dot(w_row, x_row);
        }
    }
}

/// Lanes of `short_dots` kept in registers at once.
const SHORT_LANES: usize = 64;

/// `out[j] = dot(w_j, x)` for rows shorter than one 64-lane step, given transposed
/// (`wt[t * out.len() + j]` is element `t` of row `j`): the dot's leftover loop (`sum +=
/// w · x`, the product rounded to f32, the sum kept in `S`) in each lane.
#[inline(always)]
fn short_dots<S: LeftoverSum>(wt: &[f32], x: &[f32], out: &mut [f32]) {
    let n = out.len();
    for (c, out) in out.chunks_mut(SHORT_LANES).enumerate() {
        let mut acc = [S::default(); SHORT_LANES];
        let acc = &mut acc[..out.len()];
        for (t, &xv) in x.iter().enumerate() {
            let w = &wt[t * n + c * SHORT_LANES..][..acc.len()];
            for (a, &wv) in acc.iter_mut().zip(w) {
                *a += S::from(wv * xv);
            }
        }
        for (o, &a) in out.iter_mut().zip(acc.iter()) {
            *o = a.to_f32();
        }
    }
}

/// The sum type of a ggml dot's leftover loop.
pub(super) trait LeftoverSum: Copy + Default + std::ops::AddAssign + From<f32> {
    fn to_f32(self) -> f32;
}

impl LeftoverSum for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl LeftoverSum for f64 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
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
    static HERE_SCRATCH: RefCell<HereScratch> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// F32 or F16 weight elements.
pub(super) trait FloatWeight: Copy + Send + Sync {
    /// The weight row as f32: F32 rows as they are, others widened into `buf`.
    fn row_f32<'a>(src: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32];
    fn to_f32(self) -> f32;
    /// Whether `round_activations` changes values (else it is a copy).
    const ROUNDS_ACTIVATIONS: bool;
    /// What `dot`'s leftover loop (past the 64-lane steps) accumulates in.
    type Leftover: LeftoverSum;
    /// The activations as the dot product sees them.
    fn round_activations(src: &[f32], dst: &mut [f32]);
    fn dot(w: &[f32], x: &[f32]) -> f32;
}

impl FloatWeight for f32 {
    const ROUNDS_ACTIVATIONS: bool = false;
    /// `dot_f32`'s leftovers: `sum += w · x` in f32, the product rounded first.
    type Leftover = f32;
    fn row_f32<'a>(src: &'a [f32], _buf: &'a mut Vec<f32>) -> &'a [f32] {
        src
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
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
    const ROUNDS_ACTIVATIONS: bool = true;
    /// `dot_f16`'s leftovers: each f32 product added in f64.
    type Leftover = f64;
    fn row_f32<'a>(src: &'a [f16], buf: &'a mut Vec<f32>) -> &'a [f32] {
        buf.resize(src.len(), 0.0);
        src.convert_to_f32_slice(buf);
        buf
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
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
