//! Percentiles and per-run figures. Percentiles interpolate linearly between closest
//! ranks (numpy's default): p(q) of sorted x[0..n) is x at fractional index q·(n−1).
//! Throughputs count successful requests only, over the run's wall time.

use serde::{Deserialize, Serialize};

use crate::stream::RequestRecord;

/// Linear-interpolated percentile of an ascending slice; `q` in [0, 1]. None when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// A distribution's summary, in the unit it was built with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    /// Summarizes the finite values, each multiplied by `scale`; None when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>, scale: f64) -> Option<Dist> {
        let mut v: Vec<f64> = values
            .into_iter()
            .filter(|x| x.is_finite())
            .map(|x| x * scale)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let p = |q| percentile(&v, q).unwrap_or(f64::NAN);
        Some(Dist {
            n: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: p(0.5),
            p90: p(0.9),
            p99: p(0.99),
            max: v[v.len() - 1],
        })
    }
}

/// The figures of one run (one concurrency level, one rate, one dialog turn …).
/// Latencies in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub requests: usize,
    pub succeeded: usize,
    pub success_rate: f64,
    pub duration_s: f64,
    pub req_per_s: f64,
    pub output_tok_per_s: f64,
    /// (prompt + output tokens) per second.
    pub total_tok_per_s: f64,
    pub output_tokens: usize,
    pub prompt_tokens: usize,
    pub mean_output_tokens: f64,
    pub ttft_ms: Option<Dist>,
    pub itl_ms: Option<Dist>,
    pub tpot_ms: Option<Dist>,
    pub e2e_ms: Option<Dist>,
    /// The first failure seen, to tell what went wrong.
    pub first_error: Option<String>,
}

impl Summary {
    /// Figures of `records` completed within `duration_s` of wall time.
    pub fn of(records: &[RequestRecord], duration_s: f64) -> Summary {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
        let output_tokens: usize = ok.iter().map(|r| r.output_tokens).sum();
        let prompt_tokens: usize = ok.iter().map(|r| r.prompt_tokens.unwrap_or(0)).sum();
        let per_s = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        Summary {
            requests: records.len(),
            succeeded: ok.len(),
            success_rate: if records.is_empty() {
                0.0
            } else {
                ok.len() as f64 / records.len() as f64
            },
            duration_s,
            req_per_s: per_s(ok.len() as f64),
            output_tok_per_s: per_s(output_tokens as f64),
            total_tok_per_s: per_s((output_tokens + prompt_tokens) as f64),
            output_tokens,
            prompt_tokens,
            mean_output_tokens: if ok.is_empty() {
                0.0
            } else {
                output_tokens as f64 / ok.len() as f64
            },
            ttft_ms: Dist::of(ok.iter().filter_map(|r| r.ttft_s), 1e3),
            itl_ms: Dist::of(ok.iter().flat_map(|r| r.itl_s.iter().copied()), 1e3),
            tpot_ms: Dist::of(ok.iter().filter_map(|r| r.tpot_s()), 1e3),
            e2e_ms: Dist::of(ok.iter().map(|r| r.e2e_s), 1e3),
            first_error: records.iter().find_map(|r| r.error.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(4.0));
        assert_eq!(percentile(&v, 0.5), Some(2.5));
        // numpy.percentile([1,2,3,4], 90) = 3.7
        assert!((percentile(&v, 0.9).unwrap() - 3.7).abs() < 1e-12);
        assert_eq!(percentile(&[5.0], 0.99), Some(5.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&v, 1.5), None);
    }

    #[test]
    fn dist_sorts_scales_and_skips_non_finite() {
        let d = Dist::of([0.003, 0.001, f64::NAN, 0.002], 1e3).unwrap();
        assert_eq!(d.n, 3);
        assert!((d.p50 - 2.0).abs() < 1e-9 && (d.max - 3.0).abs() < 1e-9);
        assert!((d.mean - 2.0).abs() < 1e-9);
        // 100 values 1..=100: p99 at index 98.01 → 99.01
        let d = Dist::of((1..=100).map(f64::from), 1.0).unwrap();
        assert!((d.p99 - 99.01).abs() < 1e-9 && (d.p90 - 90.1).abs() < 1e-9);
        assert!(Dist::of([f64::INFINITY], 1.0).is_none());
    }

    #[test]
    fn summary_counts_successes_only() {
        let good = RequestRecord {
            ttft_s: Some(0.1),
            itl_s: vec![0.01; 9],
            e2e_s: 0.19,
            output_tokens: 10,
            prompt_tokens: Some(20),
            ..RequestRecord::default()
        };
        let bad = RequestRecord {
            error: Some("HTTP 500".into()),
            output_tokens: 99,
            ..RequestRecord::default()
        };
        let s = Summary::of(&[good.clone(), good, bad], 2.0);
        assert_eq!((s.requests, s.succeeded), (3, 2));
        assert!((s.success_rate - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.output_tok_per_s - 10.0).abs() < 1e-12);
        assert!((s.total_tok_per_s - 30.0).abs() < 1e-12);
        assert!((s.req_per_s - 1.0).abs() < 1e-12);
        assert!((s.tpot_ms.unwrap().p50 - 10.0).abs() < 1e-9);
        assert_eq!(s.itl_ms.unwrap().n, 18);
        assert_eq!(s.first_error.as_deref(), Some("HTTP 500"));
    }
}
