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
pub mod swiglu;

pub use swiglu::{silu_mul, silu_mul_stacked};

/// `x[i] += y[i]` (residual add), split over the compute pool when large.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len());
    pool::for_row_runs(x, 1, |first, xs| add_run(xs, &y[first..first + xs.len()]));
}

/// Adds a bias row `b: [n]` to every row of `x: [m, n]`.
pub fn add_bias(x: &mut [f32], b: &[f32]) {
    pool::for_row_runs(x, b.len(), |_, rows| {
        rows.chunks_exact_mut(b.len())
            .for_each(|row| add_run(row, b))
    });
}

fn add_run(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_is_added_to_every_row() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        add_bias(&mut x, &[10.0, 20.0]);
        assert_eq!(x, vec![11.0, 22.0, 13.0, 24.0]);
    }
}
