//! KL divergence against saved base log-probabilities, llama-perplexity's
//! `--kl-divergence`: for every scored position, the base row (a `logits_file::Record`)
//! against ours — KL(base ‖ ours) summed over the tokens the base gives more than e^-16,
//! the scored token's NLL under both (so PPL(Q), PPL(base) and their ratio), Δp (our
//! probability of the scored token minus the base's) and whether both rank the same token
//! first (the first of equal bests, in id order, as llama-perplexity picks it).

use super::logits_file::Record;

/// Sums over the scored positions (llama-perplexity's `kl_divergence_result`).
#[derive(Debug, Clone, Default)]
pub struct KlSums {
    nll: f64,
    nll2: f64,
    nll_base: f64,
    nll_base2: f64,
    nll_nll_base: f64,
    kld: f64,
    kld2: f64,
    p_diff: f64,
    p_diff2: f64,
    p_diff4: f64,
    same_top: usize,
    count: usize,
    /// Per position, for the percentiles.
    kld_values: Vec<f32>,
    p_diff_values: Vec<f32>,
}

impl KlSums {
    /// Scores one position: `ours: [n_vocab]` our log-probabilities, `base` the saved row,
    /// `token` the token that followed.
    pub fn add(&mut self, ours: &[f32], base: &Record, token: usize) {
        let nll = -ours[token];
        let nll_base = -base.log_prob(token);
        self.nll += f64::from(nll);
        self.nll2 += f64::from(nll * nll);
        self.nll_base += f64::from(nll_base);
        self.nll_base2 += f64::from(nll_base * nll_base);
        self.nll_nll_base += f64::from(nll * nll_base);
        let mut kld = 0f64;
        let (mut best_base, mut top_base) = (f32::NEG_INFINITY, 0);
        for (i, &lp) in ours.iter().enumerate() {
            let lp_base = base.log_prob(i);
            if i == 0 || lp_base > best_base {
                (best_base, top_base) = (lp_base, i);
            }
            if lp_base > -16.0 {
                kld += f64::from(lp_base.exp() * (lp_base - lp));
            }
        }
        self.kld += kld;
        self.kld2 += kld * kld;
        self.count += 1;
        self.same_top += usize::from(first_best(ours) == top_base);
        let p_diff = (-nll).exp() - (-nll_base).exp();
        self.p_diff += f64::from(p_diff);
        let p_diff2 = f64::from(p_diff) * f64::from(p_diff);
        self.p_diff2 += p_diff2;
        self.p_diff4 += p_diff2 * p_diff2;
        self.kld_values.push(kld as f32);
        self.p_diff_values.push(p_diff);
    }

    /// The figures so far.
    pub fn summary(&self) -> KlDivergence {
        let log_ppl = mean_and_uncertainty(self.nll, self.nll2, self.count);
        let log_ppl_base = mean_and_uncertainty(self.nll_base, self.nll_base2, self.count);
        let cov = covariance(self.nll, self.nll_base, self.nll_nll_base, self.count);
        let ratio = log_ppl.0 - log_ppl_base.0;
        let ratio_unc = (log_ppl.1.powi(2) + log_ppl_base.1.powi(2) - 2.0 * cov).sqrt();
        let p_diff_mse = mean_and_uncertainty(self.p_diff2, self.p_diff4, self.count);
        let p_diff_rms = p_diff_mse.0.sqrt();
        let same_top = self.same_top as f64 / self.count.max(1) as f64;
        let same_top_unc = match self.count > 1 {
            true => (same_top * (1.0 - same_top) / (self.count - 1) as f64).sqrt(),
            false => 0.0,
        };
        let mut kld_values = self.kld_values.clone();
        kld_values.sort_by(f32::total_cmp);
        KlDivergence {
            count: self.count,
            ppl: (log_ppl.0.exp(), log_ppl.0.exp() * log_ppl.1),
            ppl_base: (log_ppl_base.0.exp(), log_ppl_base.0.exp() * log_ppl_base.1),
            log_ppl_ratio: (ratio, ratio_unc),
            kld: mean_and_uncertainty(self.kld, self.kld2, self.count),
            kld_sorted: kld_values,
            p_diff: mean_and_uncertainty(self.p_diff, self.p_diff2, self.count),
            p_diff_rms: (p_diff_rms, 0.5 / p_diff_rms * p_diff_mse.1),
            same_top: (same_top, same_top_unc),
        }
    }
}

/// llama-perplexity's KL-divergence figures: `(value, uncertainty)` pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct KlDivergence {
    /// Scored positions.
    pub count: usize,
    pub ppl: (f64, f64),
    pub ppl_base: (f64, f64),
    /// `ln(PPL(Q) / PPL(base))`.
    pub log_ppl_ratio: (f64, f64),
    /// Mean KL(base ‖ ours) per position, in nats.
    pub kld: (f64, f64),
    /// Every position's KL divergence, ascending (for percentiles).
    pub kld_sorted: Vec<f32>,
    /// Mean Δp of the scored token (ours − base).
    pub p_diff: (f64, f64),
    pub p_diff_rms: (f64, f64),
    /// Fraction of positions whose most likely token is the same.
    pub same_top: (f64, f64),
}

impl KlDivergence {
    /// The KL divergence at `fraction` (0..=1) of the positions, interpolated linearly
    /// as llama-perplexity does.
    pub fn kld_percentile(&self, fraction: f32) -> f32 {
        let v = &self.kld_sorted;
        match v.len() {
            0 => 0.0,
            _ if fraction <= 0.0 => v[0],
            n if fraction >= 1.0 => v[n - 1],
            n => {
                let p = fraction * (n - 1) as f32;
                let i = p as usize;
                let f = p - i as f32;
                (1.0 - f) * v[i] + f * v[(i + 1).min(n - 1)]
            }
        }
    }

    /// The report llama-perplexity prints after the chunks.
    pub fn report(&self) -> String {
        let pct = |(v, u): (f64, f64)| format!("{:6.3} ± {:5.3} %", 100.0 * v, 100.0 * u);
        let mut s = String::new();
        s += "====== Perplexity statistics ======\n";
        s += &format!(
            "Mean PPL(Q)                   : {:10.6} ± {:10.6}\n",
            self.ppl.0, self.ppl.1
        );
        s += &format!(
            "Mean PPL(base)                : {:10.6} ± {:10.6}\n",
            self.ppl_base.0, self.ppl_base.1
        );
        let (r, ru) = self.log_ppl_ratio;
        s += &format!("Mean ln(PPL(Q)/PPL(base))     : {r:10.6} ± {ru:10.6}\n");
        s += &format!(
            "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}\n",
            r.exp(),
            r.exp() * ru
        );
        s += "\n====== KL divergence statistics ======\n";
        s += &format!("Mean    KLD: {:10.6} ± {:10.6}\n", self.kld.0, self.kld.1);
        for (label, f) in [
            ("Maximum KLD", 1.0),
            ("99.9%   KLD", 0.999),
            ("99.0%   KLD", 0.99),
            ("95.0%   KLD", 0.95),
            ("Median  KLD", 0.5),
            (" 5.0%   KLD", 0.05),
            ("Minimum KLD", 0.0),
        ] {
            s += &format!("{label}: {:10.6}\n", self.kld_percentile(f));
        }
        s += "\n====== Token probability statistics ======\n";
        s += &format!("Mean    Δp: {}\n", pct(self.p_diff));
        s += &format!("RMS Δp    : {}\n", pct(self.p_diff_rms));
        s += &format!("Same top p: {}\n", pct(self.same_top));
        s
    }
}

/// The first token with the row's highest log-probability.
fn first_best(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate().skip(1) {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Mean and its standard error (0 below 11 samples, as llama-perplexity).
fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let mean = sum / count as f64;
    let var = sum2 / count as f64 - mean * mean;
    let unc = match var > 0.0 && count > 10 {
        true => (var / (count - 1) as f64).sqrt(),
        false => 0.0,
    };
    (mean, unc)
}

fn covariance(sum_a: f64, sum_b: f64, sum_ab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    (sum_ab / n - (sum_a / n) * (sum_b / n)) / (n - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_softmax(logits: &[f32]) -> Vec<f32> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        logits
            .iter()
            .map(|&l| (f64::from(l - max) - sum.ln()) as f32)
            .collect()
    }

    #[test]
    fn a_row_against_itself_has_no_divergence() {
        let row = log_softmax(&[2.0, 0.5, -1.0, 3.0, 0.0]);
        let mut sums = KlSums::default();
        for token in 0..5 {
            sums.add(&row, &Record::quantize(&row), token);
        }
        let s = sums.summary();
        // Only the stored rows' rounding (half a step of 16/65535 nats) is left.
        assert!(s.kld.0.abs() < 1e-4, "{}", s.kld.0);
        assert_eq!(s.same_top.0, 1.0);
        assert!((s.ppl.0 / s.ppl_base.0 - 1.0).abs() < 1e-4);
        assert!(s.p_diff_rms.0 < 1e-4);
    }

    #[test]
    fn divergence_matches_the_definition_and_top_disagreement_counts() {
        let base = log_softmax(&[1.0, 0.0, -1.0]);
        let ours = log_softmax(&[0.0, 1.0, -1.0]);
        let mut sums = KlSums::default();
        sums.add(&ours, &Record::quantize(&base), 0);
        let want: f64 = base
            .iter()
            .zip(&ours)
            .map(|(&b, &o)| f64::from(b).exp() * f64::from(b - o))
            .sum();
        let s = sums.summary();
        assert!((s.kld.0 - want).abs() < 1e-4, "{} vs {want}", s.kld.0);
        assert_eq!(s.same_top.0, 0.0);
        let p_diff = f64::from(ours[0].exp() - base[0].exp());
        assert!((s.p_diff.0 - p_diff).abs() < 1e-4);
        assert_eq!(s.kld_percentile(0.5), s.kld_sorted[0]);
    }

    #[test]
    fn ties_pick_the_first_best_as_llama_perplexity() {
        assert_eq!(first_best(&[0.5, 1.0, 1.0, -2.0]), 1);
        assert_eq!(first_best(&[3.0]), 0);
    }
}
