//! The Walsh-Hadamard rotation llama.cpp applies around a quantized K/V cache
//! (`llama_kv_cache::attn_rot_k` / `attn_rot_v`, on by default since its PR #21038 unless
//! `LLAMA_ATTN_ROT_DISABLE=1`): an orthonormal rotation spreads outliers over the head so
//! that 8-bit blocks lose less. With `-ctk q8_0 -ctv q8_0` and head_dim a multiple of 64,
//! `llm_graph_context::build_attn` does, per layer and after RoPE:
//!
//! - `q ← H_k q`, `k ← H_k k` (so `q·k` is unchanged up to rounding), each head in chunks
//!   of `n_k` values, `n_k` the largest power of two (≥ 64) dividing head_dim;
//! - `v ← H_v v` in chunks of `n_v = 64`;
//! - attention over the rotated (and then quantized) cache, and `out ← H_v out` (H is its
//!   own inverse), before the output projection.
//!
//! `H x` is computed as ggml's CPU backend does for a `GGML_HINT_SRC0_IS_HADAMARD` matmul
//! (`ggml_compute_forward_fwht`): every value is scaled by `1/sqrt(n)` first, then the
//! in-place butterflies `(u, v) → (u + v, u − v)` at strides 1, 2, 4, … n/2. Its SIMD passes
//! compute `u − v` as `fma(v, −1, u)`, which rounds the same, so this one loop is exact
//! for every kernel level.

/// Chunk lengths of the rotations of one model's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvRotation {
    /// Rotation length of Q and K rows (`attn_inp_k_rot`).
    pub k: usize,
    /// Rotation length of V rows and of the attention output (`attn_inp_v_rot`).
    pub v: usize,
}

/// The smallest rotation llama.cpp uses; head_dim must be a multiple of it.
const MIN_ROTATION: usize = 64;

impl KvRotation {
    /// The rotation of a quantized cache for `head_dim`, or `None` where llama.cpp keeps
    /// the rows as they are (head_dim not a multiple of 64).
    pub fn for_head_dim(head_dim: usize) -> Option<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(MIN_ROTATION) {
            return None;
        }
        // Largest power of two dividing head_dim (≥ 64 since 64 divides it).
        let k = 1 << head_dim.trailing_zeros();
        Some(Self { k, v: MIN_ROTATION })
    }
}

/// `x ← H_n x` for every consecutive chunk of `n` values of `x` (`n` a power of two,
/// `x.len()` a multiple of `n`).
pub fn rotate(x: &mut [f32], n: usize) {
    assert!(
        n.is_power_of_two(),
        "rotation length {n} is not a power of two"
    );
    assert!(
        x.len().is_multiple_of(n),
        "{} values do not split into rotations of {n}",
        x.len()
    );
    let scale = 1.0 / (n as f32).sqrt();
    for chunk in x.chunks_exact_mut(n) {
        for a in chunk.iter_mut() {
            *a *= scale;
        }
        let mut len = 1;
        while len < n {
            for pair in chunk.chunks_exact_mut(2 * len) {
                let (lo, hi) = pair.split_at_mut(len);
                for (u, v) in lo.iter_mut().zip(hi.iter_mut()) {
                    let (a, b) = (*u, *v);
                    *u = a + b;
                    *v = a - b;
                }
            }
            len *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `ggml_gen_hadamard`: the Sylvester matrix scaled by `1/sqrt(n)`, `[n, n]`.
    fn hadamard_matrix(n: usize) -> Vec<f64> {
        let mut h = vec![0.0; n * n];
        h[0] = 1.0 / (n as f64).sqrt();
        let mut s = 1;
        while s < n {
            for i in 0..s {
                for j in 0..s {
                    let val = h[i * n + j];
                    h[(i + s) * n + j] = val;
                    h[i * n + j + s] = val;
                    h[(i + s) * n + j + s] = -val;
                }
            }
            s *= 2;
        }
        h
    }

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
            })
            .collect()
    }

    #[test]
    fn rotation_lengths_follow_llama_cpp() {
        assert_eq!(KvRotation::for_head_dim(32), None);
        assert_eq!(KvRotation::for_head_dim(96), None);
        assert_eq!(
            KvRotation::for_head_dim(64),
            Some(KvRotation { k: 64, v: 64 })
        );
        assert_eq!(
            KvRotation::for_head_dim(128),
            Some(KvRotation { k: 128, v: 64 })
        );
        assert_eq!(
            KvRotation::for_head_dim(192),
            Some(KvRotation { k: 64, v: 64 })
        );
        assert_eq!(
            KvRotation::for_head_dim(256),
            Some(KvRotation { k: 256, v: 64 })
        );
    }

    #[test]
    fn rotate_is_the_hadamard_matrix_times_each_chunk() {
        for n in [64, 128] {
            let h = hadamard_matrix(n);
            let x = seeded(3 * n, n as u64);
            let mut got = x.clone();
            rotate(&mut got, n);
            for (c, chunk) in x.chunks_exact(n).enumerate() {
                for i in 0..n {
                    let want: f64 = (0..n).map(|j| h[i * n + j] * chunk[j] as f64).sum();
                    let g = got[c * n + i] as f64;
                    assert!(
                        (g - want).abs() < 1e-5,
                        "n {n} chunk {c} row {i}: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn rotating_twice_gives_the_input_back() {
        // H·H = I; with n = 64 the scale 1/8 is exact, so only the sums round.
        let x = seeded(256, 7);
        let mut y = x.clone();
        rotate(&mut y, 64);
        assert_ne!(y, x);
        rotate(&mut y, 64);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
