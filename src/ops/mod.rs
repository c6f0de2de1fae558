//! CPU kernels. Each op here is plain Rust over `&[f32]` rows (shapes in comments). The
//! MoE routing ops (`moe`: top-k softmax, align, permute) and the dense layer's ops
//! (embedding, `norm`, `rope`, `silu_mul`, the adds, `attention`'s `write_kv` and
//! `paged_attention`) also have CUDA kernels in `kernels/` (feature `cuda`, wrappers in
//! `cuda`), for which these are the test oracle (tests/moe_cuda.rs, tests/cuda_ops.rs).
//! Ops never allocate per call beyond thread-local scratch that is reused across steps.

pub mod act_quant;
pub mod attention;
pub mod cpu_features;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod ggml_math;
pub mod moe;
pub mod norm;
pub mod pool;
pub mod qdot;
pub mod quant;
pub mod rope;

/// `gate[i] = silu(gate[i]) * up[i]` (SwiGLU) over each `[width]` row of `[tokens, width]`,
/// as `ggml_vec_swiglu_f32`: 16-lane chunks use ggml's vectorized exp, the rest libm.
pub fn silu_mul(gate: &mut [f32], up: &[f32], width: usize) {
    assert_eq!(gate.len(), up.len());
    #[cfg(target_arch = "x86_64")]
    if cpu_features::avx2() {
        // SAFETY: the chosen level includes FMA.
        return unsafe { silu_mul_fma(gate, up, width) };
    }
    silu_mul_body(gate, up, width)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn silu_mul_fma(gate: &mut [f32], up: &[f32], width: usize) {
    silu_mul_body(gate, up, width)
}

#[inline(always)]
fn silu_mul_body(gate: &mut [f32], up: &[f32], width: usize) {
    let full = width - width % ggml_math::LANES;
    for (g_row, u_row) in gate.chunks_exact_mut(width).zip(up.chunks_exact(width)) {
        for (g, u) in g_row[..full].iter_mut().zip(&u_row[..full]) {
            *g = ggml_math::silu(*g) * u;
        }
        for (g, u) in g_row[full..].iter_mut().zip(&u_row[full..]) {
            *g = ggml_math::silu_tail(*g) * u;
        }
    }
}

/// `x[i] += y[i]` (residual add).
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len());
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds a bias row `b: [n]` to every row of `x: [m, n]`.
pub fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        add_assign(row, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn bias_is_added_to_every_row() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        add_bias(&mut x, &[10.0, 20.0]);
        assert_eq!(x, vec![11.0, 22.0, 13.0, 24.0]);
    }
}
