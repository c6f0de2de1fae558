//! Mixture-of-experts routing on the CPU, in four steps, each the oracle for its CUDA twin
//! in `kernels/` (`moe_topk_softmax.cu`, `moe_align.cu`):
//!
//! 1. `topk_softmax`: router logits `[T, E]` → softmax → top-k → (optionally) renormalize,
//!    giving each token's experts `ids [T, k]` and weights `[T, k]`, rank 0 the largest.
//! 2. `MoeAlign::compute`: group the `T·k` (token, rank) pairs by expert — counts, prefix
//!    sums padded to a GEMM block size, the pairs sorted by expert, and the inverse map.
//! 3. `permute`: gather each pair's input row into expert order.
//! 4. `unpermute_weighted`: each token's output is the weighted sum of its k expert rows.
//!
//! Invariants: everything is a pure function of each token's own router logits, so a
//! token's experts and weights never depend on the rest of the batch. Ties in top-k go to
//! the lower expert id (what llama.cpp's `std::sort` gives for ≤ 16 experts, where it is
//! an insertion sort); NaN probabilities rank below every number. Within one expert, pairs
//! are in ascending flat index (`token * k + rank`) order. The weighted sum adds ranks in
//! order `((y0·w0 + y1·w1) + y2·w2) …`, as llama.cpp's `build_moe_ffn` does, never in the
//! order experts happened to run.
//!
//! The softmax is ggml's `soft_max_f32` arithmetic: full 16-element chunks use ggml's
//! vectorized `expf` with an AVX-512-order chunk sum, the leftover elements libm `expf`,
//! all summed in f64; then one f32 scale by `1/sum`. Renormalization is ggml's
//! `sum_rows` (f64 sum), clamp to 2^-14, then a division.

use super::ggml_math::{self, LANES};

/// Smallest renormalization divisor (llama.cpp clamps the top-k weight sum to the smallest
/// normal f16 so a row of zero weights does not divide by zero).
pub const MIN_WEIGHT_SUM: f32 = 6.103_515_6e-5;

/// Routes every token: `logits: [T, E]` → `ids: [T, k]` (expert ids, rank order) and
/// `weights: [T, k]` (their probabilities, renormalized to sum to 1 when `renormalize`).
pub fn topk_softmax(
    logits: &[f32],
    n_expert: usize,
    k: usize,
    renormalize: bool,
    ids: &mut [u32],
    weights: &mut [f32],
) {
    assert!(k >= 1 && k <= n_expert, "top-k: need 1 <= k <= n_expert");
    assert_eq!(logits.len() % n_expert, 0, "top-k: logits must be [T, E]");
    let t = logits.len() / n_expert;
    assert!(
        ids.len() == t * k && weights.len() == t * k,
        "top-k: outputs must be [T, k]"
    );
    let mut probs = vec![0f32; n_expert];
    for ((row, ids), weights) in logits
        .chunks_exact(n_expert)
        .zip(ids.chunks_exact_mut(k))
        .zip(weights.chunks_exact_mut(k))
    {
        softmax(row, &mut probs);
        select_top_k(&probs, ids);
        for (w, &id) in weights.iter_mut().zip(ids.iter()) {
            *w = probs[id as usize];
        }
        if renormalize {
            let sum: f64 = weights.iter().map(|&w| w as f64).sum();
            let sum = (sum as f32).max(MIN_WEIGHT_SUM);
            for w in weights.iter_mut() {
                *w /= sum;
            }
        }
    }
}

/// ggml's `soft_max_f32` of one row (no mask, scale 1): `out = exp(x - max) / Σ`.
pub fn softmax(x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::ops::cpu_features::avx2() {
        // SAFETY: the chosen level includes FMA.
        return unsafe { softmax_fma(x, out) };
    }
    softmax_body(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn softmax_fma(x: &[f32], out: &mut [f32]) {
    softmax_body(x, out)
}

#[inline(always)]
fn softmax_body(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    // ggml_vec_max_f32: `max = MAX(max, x)`, the C macro (a NaN element becomes the max).
    let max = x
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if m > v { m } else { v });
    let full = x.len() - x.len() % LANES;
    let mut sum = 0f64;
    for (xs, ys) in x[..full]
        .chunks_exact(LANES)
        .zip(out[..full].chunks_exact_mut(LANES))
    {
        let mut lanes = [0f32; LANES];
        for ((lane, y), &v) in lanes.iter_mut().zip(ys.iter_mut()).zip(xs) {
            *lane = ggml_math::expf(v - max);
            *y = *lane;
        }
        sum += ggml_math::reduce16(&lanes) as f64;
    }
    for (y, &v) in out[full..].iter_mut().zip(&x[full..]) {
        *y = (v - max).exp();
        sum += *y as f64;
    }
    let inv = (1.0 / sum) as f32;
    for y in out.iter_mut() {
        *y *= inv;
    }
}

/// The `ids.len()` largest entries of `probs`, largest first; ties → lower index, NaN last.
pub fn select_top_k(probs: &[f32], ids: &mut [u32]) {
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    for r in 0..ids.len() {
        let mut best: Option<usize> = None;
        for (e, &p) in probs.iter().enumerate() {
            if ids[..r].contains(&(e as u32)) {
                continue;
            }
            if best.is_none_or(|b| key(p) > key(probs[b])) {
                best = Some(e);
            }
        }
        // `ids.len() <= probs.len()` (checked by the caller), so a candidate remains.
        ids[r] = best.unwrap_or(0) as u32;
    }
}

/// The step's (token, rank) pairs grouped by expert. Buffers are reused across calls.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MoeAlign {
    /// `[E]` pairs routed to each expert.
    pub counts: Vec<u32>,
    /// `[E + 1]` prefix sums of the counts rounded up to the block size: expert `e` owns
    /// `sorted[offsets[e]..offsets[e + 1]]`, its pairs first, then padding.
    pub offsets: Vec<u32>,
    /// `[offsets[E]]` flat pair indices (`token * k + rank`), ascending within each expert;
    /// padding slots hold `T * k`.
    pub sorted: Vec<u32>,
    /// `[T * k]` position of each pair in `sorted`.
    pub inv: Vec<u32>,
    /// `[offsets[E] / block]` the expert that owns each block of `sorted`.
    pub block_expert: Vec<u32>,
}

impl MoeAlign {
    /// Groups `ids: [T * k]` (each `< n_expert`) by expert, padding each group to `block`.
    pub fn compute(&mut self, ids: &[u32], n_expert: usize, block: usize) {
        assert!(block >= 1, "align: block size must be >= 1");
        let pairs = ids.len();
        self.counts.clear();
        self.counts.resize(n_expert, 0);
        for &e in ids {
            self.counts[e as usize] += 1;
        }
        self.offsets.clear();
        self.offsets.push(0);
        let mut total = 0u32;
        for &c in &self.counts {
            total += (c as usize).div_ceil(block) as u32 * block as u32;
            self.offsets.push(total);
        }
        self.sorted.clear();
        self.sorted.resize(total as usize, pairs as u32);
        self.inv.clear();
        self.inv.resize(pairs, 0);
        // A stable counting sort: each expert's cursor starts at its offset.
        let mut cursor: Vec<u32> = self.offsets[..n_expert].to_vec();
        for (i, &e) in ids.iter().enumerate() {
            let pos = cursor[e as usize];
            self.sorted[pos as usize] = i as u32;
            self.inv[i] = pos;
            cursor[e as usize] += 1;
        }
        self.block_expert.clear();
        for (e, w) in self.offsets.windows(2).enumerate() {
            let blocks = (w[1] - w[0]) as usize / block;
            self.block_expert
                .extend(std::iter::repeat_n(e as u32, blocks));
        }
    }

    /// Rows of `sorted` that belong to expert `e` (without its padding).
    pub fn rows(&self, e: usize) -> std::ops::Range<usize> {
        let start = self.offsets[e] as usize;
        start..start + self.counts[e] as usize
    }
}

/// `out[i] = x[sorted[i] / k]` for each slot of `sorted` (`[P]`), zeros for padding.
/// `x: [T, h]`, `out: [P, h]`.
pub fn permute(x: &[f32], h: usize, k: usize, sorted: &[u32], out: &mut [f32]) {
    let t = x.len() / h;
    assert_eq!(out.len(), sorted.len() * h, "permute: out must be [P, h]");
    for (dst, &pair) in out.chunks_exact_mut(h).zip(sorted) {
        let token = pair as usize / k;
        if token < t {
            dst.copy_from_slice(&x[token * h..(token + 1) * h]);
        } else {
            dst.fill(0.0);
        }
    }
}

/// `out[t] = Σ_r weights[t, r] · ys[inv[t·k + r]]`, ranks added in order.
/// `ys: [P, h]` expert outputs in sorted order, `inv, weights: [T, k]`, `out: [T, h]`.
pub fn unpermute_weighted(
    ys: &[f32],
    inv: &[u32],
    weights: &[f32],
    k: usize,
    h: usize,
    out: &mut [f32],
) {
    assert_eq!(inv.len(), weights.len());
    assert_eq!(
        out.len() * k,
        inv.len() * h,
        "unpermute: out must be [T, h]"
    );
    for ((dst, pos), w) in out
        .chunks_exact_mut(h)
        .zip(inv.chunks_exact(k))
        .zip(weights.chunks_exact(k))
    {
        let row = |r: usize| &ys[pos[r] as usize * h..(pos[r] as usize + 1) * h];
        for (o, &y) in dst.iter_mut().zip(row(0)) {
            *o = y * w[0];
        }
        for (r, &wr) in w.iter().enumerate().skip(1) {
            for (o, &y) in dst.iter_mut().zip(row(r)) {
                *o += y * wr;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn softmax_sums_to_one_and_orders_like_its_input() {
        for n in [1, 8, 16, 60, 64] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7).collect();
            let mut p = vec![0.0; n];
            softmax(&x, &mut p);
            let sum: f32 = p.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "n={n}: sum {sum}");
            for i in 0..n {
                let want = (x[i] as f64).exp() / x.iter().map(|&v| (v as f64).exp()).sum::<f64>();
                assert!((p[i] as f64 - want).abs() < 1e-6, "n={n} i={i}");
            }
        }
    }

    #[test]
    fn top_k_breaks_ties_by_lower_id_and_ranks_nan_last() {
        let mut ids = [0u32; 3];
        select_top_k(&[0.1, 0.3, 0.3, f32::NAN, 0.3], &mut ids);
        assert_eq!(ids, [1, 2, 4]);
        select_top_k(&[f32::NAN, 0.0, f32::NAN], &mut ids);
        assert_eq!(ids, [1, 0, 2]);
    }

    #[test]
    fn renormalized_weights_sum_to_one_and_plain_ones_are_probabilities() {
        let logits = [1.0, 3.0, 2.0, 0.5, -1.0, 4.0, 4.0, 0.0];
        let (mut ids, mut w) = ([0u32; 4], [0f32; 4]);
        topk_softmax(&logits, 4, 2, true, &mut ids, &mut w);
        assert_eq!(ids, [1, 2, 1, 2]); // token 1: a tie between experts 1 and 2
        assert!((w[0] + w[1] - 1.0).abs() < 1e-6 && w[0] > w[1]);
        assert_eq!(w[2], w[3]);
        topk_softmax(&logits, 4, 2, false, &mut ids, &mut w);
        let e = |v: f32| v.exp();
        let p1 = e(3.0) / (e(1.0) + e(3.0) + e(2.0) + e(0.5));
        assert!((w[0] - p1).abs() < 1e-6);
    }

    #[test]
    fn align_groups_stably_with_padding_and_inverse() {
        // T = 3, k = 2; expert 1 gets nothing.
        let ids = [2u32, 0, 0, 3, 2, 0];
        let mut a = MoeAlign::default();
        a.compute(&ids, 4, 4);
        assert_eq!(a.counts, [3, 0, 2, 1]);
        assert_eq!(a.offsets, [0, 4, 4, 8, 12]);
        let pad = 6;
        assert_eq!(a.sorted, [1, 2, 5, pad, 0, 4, pad, pad, 3, pad, pad, pad]);
        assert_eq!(a.block_expert, [0, 2, 3]);
        for (i, &p) in a.inv.iter().enumerate() {
            assert_eq!(a.sorted[p as usize], i as u32);
        }
        assert_eq!(a.rows(2), 4..6);
        a.compute(&ids, 4, 1);
        assert_eq!(a.offsets, [0, 3, 3, 5, 6]);
        assert_eq!(a.sorted, [1, 2, 5, 0, 4, 3]);
    }

    #[test]
    fn permute_then_unpermute_is_the_weighted_sum_per_token() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (t, h, e, k) = (5, 3, 4, 2);
        let x: Vec<f32> = (0..t * h).map(|_| rng.random_range(-1.0..1.0)).collect();
        let logits: Vec<f32> = (0..t * e).map(|_| rng.random_range(-2.0..2.0)).collect();
        let (mut ids, mut w) = (vec![0; t * k], vec![0.0; t * k]);
        topk_softmax(&logits, e, k, true, &mut ids, &mut w);
        let mut a = MoeAlign::default();
        a.compute(&ids, e, 2);
        let mut rows = vec![0.0; a.sorted.len() * h];
        permute(&x, h, k, &a.sorted, &mut rows);
        // "Expert" e scales its rows by (e + 1).
        for ex in 0..e {
            for v in &mut rows[a.rows(ex).start * h..a.rows(ex).end * h] {
                *v *= (ex + 1) as f32;
            }
        }
        let mut out = vec![0.0; t * h];
        unpermute_weighted(&rows, &a.inv, &w, k, h, &mut out);
        for tok in 0..t {
            for c in 0..h {
                let want: f32 = (0..k)
                    .map(|r| x[tok * h + c] * (ids[tok * k + r] + 1) as f32 * w[tok * k + r])
                    .sum();
                assert!((out[tok * h + c] - want).abs() < 1e-6);
            }
        }
    }
}
