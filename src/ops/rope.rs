//! Rotary position embedding with both layouts:
//! - `Interleaved`: rotates adjacent pairs `(x[2i], x[2i+1])` (ggml mode 0; GGUF `llama`,
//!   whose Q/K weights were permuted at conversion so this matches HF's rotate_half);
//! - `Neox`: rotates `(x[i], x[i + d/2])` (ggml NEOX mode; `qwen2`).
//!
//! The cos/sin table is built the way ggml builds its cache (θ multiplied by
//! `base^(-2/d)` step by step in f32) and the rotation uses the same fused multiply-adds,
//! so positions rotate bit for bit like llama.cpp's.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Interleaved,
    Neox,
}

/// Precomputed rotation for positions `0..max_positions`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    style: RopeStyle,
    /// Rotated dimensions per head (≤ head_dim).
    rot_dims: usize,
    /// `[max_positions, rot_dims / 2]`
    cos: Vec<f32>,
    /// `[max_positions, rot_dims / 2]`
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(base: f32, rot_dims: usize, max_positions: usize, style: RopeStyle) -> Self {
        let half = rot_dims / 2;
        let theta_scale = base.powf(-2.0 / rot_dims as f32);
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            let mut theta = pos as f32;
            for _ in 0..half {
                cos.push(theta.cos());
                sin.push(theta.sin());
                theta *= theta_scale;
            }
        }
        Self {
            style,
            rot_dims,
            cos,
            sin,
        }
    }

    /// The tables `(cos, sin)`, each `[max_positions, rot_dims / 2]` (for the GPU kernels).
    pub fn cos_sin(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// Rotated dimensions per head (≤ head_dim).
    pub fn rot_dims(&self) -> usize {
        self.rot_dims
    }

    pub fn max_positions(&self) -> usize {
        self.cos.len() / (self.rot_dims / 2).max(1)
    }

    /// Rotates every head of every row of `x: [T, n_heads * head_dim]` in place; row `t`
    /// is at position `positions[t]` (must be < `max_positions`). The rows are split over
    /// the compute pool when there are many.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, positions: &[u32]) {
        if positions.is_empty() {
            return;
        }
        let row_len = x.len() / positions.len();
        crate::ops::pool::for_row_runs(x, row_len, |first, rows| {
            self.apply_rows(rows, row_len, head_dim, &positions[first..])
        });
    }

    fn apply_rows(&self, x: &mut [f32], row_len: usize, head_dim: usize, positions: &[u32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::ops::cpu_features::avx2() {
            // SAFETY: the chosen level includes FMA.
            return unsafe { self.apply_rows_fma(x, row_len, head_dim, positions) };
        }
        self.apply_rows_body(x, row_len, head_dim, positions)
    }

    /// `apply_rows` with the multiply-adds as FMA instructions (same bits as the `fmaf`
    /// calls they replace: both round once).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma")]
    unsafe fn apply_rows_fma(
        &self,
        x: &mut [f32],
        row_len: usize,
        head_dim: usize,
        positions: &[u32],
    ) {
        self.apply_rows_body(x, row_len, head_dim, positions)
    }

    #[inline(always)]
    fn apply_rows_body(&self, x: &mut [f32], row_len: usize, head_dim: usize, positions: &[u32]) {
        let half = self.rot_dims / 2;
        for (row, &pos) in x.chunks_exact_mut(row_len).zip(positions) {
            let at = pos as usize * half;
            let (cos, sin) = (&self.cos[at..at + half], &self.sin[at..at + half]);
            for head in row.chunks_exact_mut(head_dim) {
                self.rotate(head, cos, sin);
            }
        }
    }

    /// The rotation with the fused multiply-adds GCC emits for ggml's `rotate_pairs`
    /// (`x0·cos − x1·sin` and `x0·sin + x1·cos`, the `x0` product fused).
    #[inline(always)]
    fn rotate(&self, head: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.rot_dims / 2;
        for i in 0..half {
            let (c, s) = (cos[i], sin[i]);
            match self.style {
                RopeStyle::Interleaved => {
                    let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = c.mul_add(x0, -(s * x1));
                    head[2 * i + 1] = x0.mul_add(s, x1 * c);
                }
                RopeStyle::Neox => {
                    let (x0, x1) = (head[i], head[i + half]);
                    head[i] = x0.mul_add(c, -(x1 * s));
                    head[i + half] = x0.mul_add(s, x1 * c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            let table = RopeTable::new(10000.0, 8, 16, style);
            let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.7).collect();
            let mut x = orig.clone();
            table.apply(&mut x, 8, &[0, 5]);
            assert_eq!(&x[..8], &orig[..8], "{style:?}");
            let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
            assert!((norm(&x[8..]) - norm(&orig[8..])).abs() < 1e-5);
            assert_ne!(&x[8..], &orig[8..]);
        }
    }

    #[test]
    fn layouts_pair_different_elements() {
        let inter = RopeTable::new(10000.0, 4, 4, RopeStyle::Interleaved);
        let neox = RopeTable::new(10000.0, 4, 4, RopeStyle::Neox);
        // Only element 0 set: interleaved moves energy into 1, neox into 2.
        let mut a = vec![1.0, 0.0, 0.0, 0.0];
        let mut b = a.clone();
        inter.apply(&mut a, 4, &[1]);
        neox.apply(&mut b, 4, &[1]);
        assert!(a[1] != 0.0 && a[2] == 0.0);
        assert!(b[2] != 0.0 && b[1] == 0.0);
        assert!((a[0] - 1.0f32.cos()).abs() < 1e-6 && (a[1] - 1.0f32.sin()).abs() < 1e-6);
    }
}
