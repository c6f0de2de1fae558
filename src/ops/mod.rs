//! CPU kernels. Each op here is plain Rust over `&[f32]` rows (shapes in comments) and is
//! the oracle for its CUDA twin in `kernels/`. Ops never allocate per call beyond
//! thread-local scratch that is reused across steps.

pub mod attention;
pub mod norm;
pub mod q4_1;
pub mod quant;
pub mod rope;

/// `gate[i] = silu(gate[i]) * up[i]` (SwiGLU), in place over `[tokens, ffn]` rows.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
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
        let mut g = vec![-2.0, 0.0, 1.5];
        silu_mul(&mut g, &[1.0, 3.0, 2.0]);
        let silu = |x: f32| x / (1.0 + (-x).exp());
        assert_eq!(g, vec![silu(-2.0), 0.0, silu(1.5) * 2.0]);
    }

    #[test]
    fn bias_is_added_to_every_row() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        add_bias(&mut x, &[10.0, 20.0]);
        assert_eq!(x, vec![11.0, 22.0, 13.0, 24.0]);
    }
}
