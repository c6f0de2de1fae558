//! The rejection sampler of speculative decoding (`spec_decode::verify` over this
//! sampler): over many seeded draws, the emitted tokens follow the target distribution
//! exactly (chi-square, fixed seed, so the outcome is fixed too): a draft token is
//! accepted with probability `p(t)`; on rejection the token is distributed as `p` without
//! `t`, renormalised; after an acceptance the next row is sampled from its own `p`.

use super::*;
use crate::spec_decode::verify::{num_accepted, verify};

const DRAWS: usize = 40_000;

/// The sampler's target distribution for `logits` at temperature `t` with top-k `k`
/// (computed independently: sort, keep `k`, softmax of `l / t`).
fn target(logits: &[f32], temperature: f32, k: usize) -> Vec<f64> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let kept = &order[..k];
    let max = logits[kept[0]] as f64 / temperature as f64;
    let mut p = vec![0.0; logits.len()];
    for &i in kept {
        p[i] = (logits[i] as f64 / temperature as f64 - max).exp();
    }
    let total: f64 = p.iter().sum();
    p.iter().map(|x| x / total).collect()
}

/// Pearson's chi-square of `counts` against probabilities `p` (cells with p = 0 must be
/// empty); the degrees of freedom are the non-empty cells minus one.
fn chi_square(counts: &[usize], p: &[f64]) -> (f64, usize) {
    let n: usize = counts.iter().sum();
    let mut chi2 = 0.0;
    let mut cells = 0;
    for (&c, &q) in counts.iter().zip(p) {
        if q == 0.0 {
            assert_eq!(c, 0, "a token of probability 0 was emitted");
            continue;
        }
        let expected = q * n as f64;
        chi2 += (c as f64 - expected).powi(2) / expected;
        cells += 1;
    }
    (chi2, cells - 1)
}

/// The 0.999 quantile of chi-square for 1..=5 degrees of freedom: a correct sampler
/// exceeds it with probability 1/1000 (and the seed is fixed, so never flakily).
const CHI2_999: [f64; 5] = [10.83, 13.82, 16.27, 18.47, 20.52];

fn assert_follows(counts: &[usize], p: &[f64], what: &str) {
    let (chi2, df) = chi_square(counts, p);
    assert!(
        chi2 < CHI2_999[df - 1],
        "{what}: chi2 {chi2:.2} (df {df}), counts {counts:?} vs {p:?}"
    );
}

#[test]
fn verification_emits_tokens_distributed_as_the_target() {
    let row0 = [1.0f32, 2.2, 0.3, 1.9, -1.0, 2.0];
    let row1 = [0.5f32, -0.5, 1.5, 1.0, 0.9, 0.0];
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 4,
        ..SamplingParams::default()
    };
    let (p0, p1) = (target(&row0, 0.8, 4), target(&row1, 0.8, 4));
    let draft: TokenId = 3; // p0[3] ≈ 0.3: both branches are well populated
    let mut rng = SeqRng::from_seed(20_260_105);
    let mut scratch = SamplerScratch::new();
    let (mut first, mut rejected, mut bonus) = (vec![0; 6], vec![0; 6], vec![0; 6]);
    let mut accepted = 0usize;
    for _ in 0..DRAWS {
        let mut rows = [row0.to_vec(), row1.to_vec()];
        let emitted = verify(
            rows.iter_mut().map(Vec::as_mut_slice),
            &[draft],
            |row, _| sample(row, &params, &[], &[], &[], &mut rng, &mut scratch),
        );
        let head = emitted[0].token_id as usize;
        first[head] += 1;
        match num_accepted(&emitted) {
            1 => {
                accepted += 1;
                assert_eq!(head, draft as usize);
                bonus[emitted[1].token_id as usize] += 1;
            }
            0 => {
                assert_ne!(head, draft as usize, "a rejection emits another token");
                rejected[head] += 1;
            }
            n => panic!("{n} accepted of a 1-token draft"),
        }
    }
    // Acceptance: binomial(DRAWS, p0[draft]) within 4 standard deviations.
    let p_accept = p0[draft as usize];
    let sd = (p_accept * (1.0 - p_accept) / DRAWS as f64).sqrt();
    let rate = accepted as f64 / DRAWS as f64;
    assert!(
        (rate - p_accept).abs() < 4.0 * sd,
        "acceptance {rate} vs p(t) {p_accept}"
    );
    // Rejected branch: p without the draft token, renormalised.
    let mut p_rejected = p0.clone();
    p_rejected[draft as usize] = 0.0;
    let rest: f64 = p_rejected.iter().sum();
    p_rejected.iter_mut().for_each(|q| *q /= rest);
    assert_follows(&rejected, &p_rejected, "rejected branch");
    // Accepted branch: the bonus token comes from the next row's own distribution.
    assert_follows(&bonus, &p1, "bonus after acceptance");
    // Overall the first emitted token is distributed as the target.
    assert_follows(&first, &p0, "first emitted token");
}

#[test]
fn the_chi_square_check_can_fail() {
    // The bound is not vacuous: a rejected branch drawn uniformly from the other
    // surviving tokens, or the draft's mass not removed (p itself), both fail it.
    let p = target(&[1.0, 2.2, 0.3, 1.9, -1.0, 2.0], 0.8, 4);
    let mut p_rejected = p.clone();
    p_rejected[3] = 0.0;
    let rest: f64 = p_rejected.iter().sum();
    p_rejected.iter_mut().for_each(|q| *q /= rest);
    let third = DRAWS / 3;
    let uniform = [third, third, 0, 0, 0, third];
    let (chi2, df) = chi_square(&uniform, &p_rejected);
    assert!(chi2 > CHI2_999[df - 1], "uniform passed: {chi2}");
    let exact: Vec<usize> = p_rejected
        .iter()
        .map(|q| (q * DRAWS as f64) as usize)
        .collect();
    let (chi2, df) = chi_square(&exact, &p);
    assert!(
        chi2 > CHI2_999[df - 1],
        "draft's mass not removed, passed: {chi2}"
    );
}

#[test]
fn greedy_verification_accepts_exactly_the_argmax_prefix() {
    let params = SamplingParams::greedy(8);
    let mut rng = SeqRng::from_seed(1);
    let mut scratch = SamplerScratch::new();
    let rows = [[0.0f32, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0]];
    for (draft, want) in [
        (vec![1, 0], vec![1, 0, 2]),
        (vec![1, 2], vec![1, 0]),
        (vec![2, 0], vec![1]),
        (vec![], vec![1]),
    ] {
        let mut rows = rows.map(|r| r.to_vec());
        let emitted = verify(rows.iter_mut().map(Vec::as_mut_slice), &draft, |row, _| {
            sample(row, &params, &[], &[], &[], &mut rng, &mut scratch)
        });
        let ids: Vec<TokenId> = emitted.iter().map(|t| t.token_id).collect();
        assert_eq!(ids, want, "draft {draft:?}");
    }
}
