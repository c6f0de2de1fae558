//! RMS normalization, computed as ggml does (sum of squares accumulated in f64) so our
//! activations track llama.cpp's as closely as possible.

use super::pool;

/// `out[t] = x[t] / sqrt(mean(x[t]²) + eps) * weight` for each row `t` of `x: [T, d]`,
/// the rows split over the compute pool when there are many.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    assert_eq!(x.len(), out.len());
    assert_eq!(x.len() % d, 0, "rms_norm: x must be [T, d]");
    pool::for_row_runs(out, d, |first, out| {
        let x = &x[first * d..first * d + out.len()];
        for (row, dst) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let sum: f64 = row.iter().map(|&v| (v * v) as f64).sum();
            let mean = (sum / d as f64) as f32;
            let scale = 1.0 / (mean + eps).sqrt();
            for ((o, &v), &w) in dst.iter_mut().zip(row).zip(weight) {
                *o = v * scale * w;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_each_row_independently() {
        let x = [3.0, 4.0, 0.0, 2.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        let r0 = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r0).abs() < 1e-6);
        assert!((out[1] - 8.0 / r0).abs() < 1e-6);
        assert_eq!(out[2], 0.0);
        assert!((out[3] - 2.0 * 2.0 / 2.0f32.sqrt()).abs() < 1e-6);
    }
}
