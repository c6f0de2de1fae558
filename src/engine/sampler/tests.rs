//! Behaviour tests of `sample` as the engine calls it: one row, one request.

use super::*;
use crate::request::TokenLogprobs;

const EOS: TokenId = 3;

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        ..SamplingParams::default()
    }
}

/// Deterministic pseudo-random logits in [-5, 5).
fn random_logits(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = SeqRng::from_seed(seed);
    (0..vocab)
        .map(|_| (rng.next_f64() * 10.0 - 5.0) as f32)
        .collect()
}

/// Samples once from a copy of `logits` with no history.
fn sample_once(logits: &[f32], params: &SamplingParams, rng: &mut SeqRng) -> SampledToken {
    let mut row = logits.to_vec();
    sample(
        &mut row,
        params,
        &[],
        &[],
        &[EOS],
        rng,
        &mut SamplerScratch::new(),
    )
}

/// How often each token is drawn in `draws` samples from `logits`.
fn histogram(logits: &[f32], params: &SamplingParams, seed: u64, draws: usize) -> Vec<usize> {
    let mut rng = SeqRng::from_seed(seed);
    let mut scratch = SamplerScratch::new();
    let mut counts = vec![0usize; logits.len()];
    let mut row = Vec::new();
    for _ in 0..draws {
        row.clear();
        row.extend_from_slice(logits);
        let token = sample(&mut row, params, &[], &[], &[EOS], &mut rng, &mut scratch);
        counts[token.token_id as usize] += 1;
    }
    counts
}

fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
    let scaled: Vec<f64> = logits
        .iter()
        .map(|&l| l as f64 / temperature as f64)
        .collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scaled.iter().map(|&l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| e / sum).collect()
}

#[test]
fn greedy_is_argmax_with_ties_to_lowest_id_and_does_not_draw() {
    let mut rng = SeqRng::from_seed(5);
    let untouched = rng.clone();
    let greedy = SamplingParams::greedy(4);
    assert_eq!(
        sample_once(&[0.1, 2.0, -1.0, 2.0], &greedy, &mut rng).token_id,
        1
    );
    assert_eq!(sample_once(&[7.0, 7.0, 7.0], &greedy, &mut rng).token_id, 0);
    assert_eq!(
        sample_once(&[-3.0, -2.5, -2.5001], &greedy, &mut rng).token_id,
        1
    );
    for seed in 0..20 {
        let logits = random_logits(1000, seed);
        let expected = logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 {
                    (i, l)
                } else {
                    best
                }
            })
            .0;
        assert_eq!(
            sample_once(&logits, &greedy, &mut rng).token_id as usize,
            expected
        );
    }
    assert_eq!(
        sample_once(&[1.0, 2.0], &params(1e-6), &mut rng).token_id,
        1
    );
    assert_eq!(
        sample_once(&[1.0, 2.0], &params(f32::NAN), &mut rng).token_id,
        1
    );
    assert_eq!(rng, untouched, "greedy sampling advanced the rng");
}

#[test]
fn temperature_one_matches_softmax_chi_square() {
    let logits = [1.0f32, 0.0, -0.5, 0.7];
    let draws = 20_000;
    let counts = histogram(&logits, &params(1.0), 1234, draws);
    let expected = softmax(&logits, 1.0);
    let chi_square: f64 = counts
        .iter()
        .zip(&expected)
        .map(|(&observed, &p)| {
            let e = p * draws as f64;
            (observed as f64 - e).powi(2) / e
        })
        .sum();
    // 3 degrees of freedom: P(chi² > 16.27) = 0.001.
    assert!(chi_square < 16.27, "chi² {chi_square}, counts {counts:?}");
}

#[test]
fn temperature_sharpens_and_flattens_the_distribution() {
    let logits = [1.0f32, 0.0, -0.5, 0.7];
    let draws = 20_000;
    let top_share = |temperature: f32| {
        histogram(&logits, &params(temperature), 99, draws)[0] as f64 / draws as f64
    };
    let (cold, warm, hot) = (top_share(0.25), top_share(1.0), top_share(4.0));
    for (share, temperature) in [(cold, 0.25), (warm, 1.0), (hot, 4.0)] {
        let expected = softmax(&logits, temperature)[0];
        assert!(
            (share - expected).abs() < 0.02,
            "T={temperature}: {share} vs {expected}"
        );
    }
    assert!(cold > warm + 0.1 && warm > hot + 0.1, "{cold} {warm} {hot}");
}

#[test]
fn top_k_one_and_tiny_top_p_are_greedy() {
    let mut rng = SeqRng::from_seed(8);
    let greedy = SamplingParams::greedy(1);
    for seed in 0..30 {
        let logits = random_logits(2000, seed);
        let expected = sample_once(&logits, &greedy, &mut rng).token_id;
        let top_k_one = SamplingParams {
            top_k: 1,
            ..params(1.5)
        };
        let tiny_top_p = SamplingParams {
            top_p: 1e-6,
            ..params(1.5)
        };
        assert_eq!(
            sample_once(&logits, &top_k_one, &mut rng).token_id,
            expected
        );
        assert_eq!(
            sample_once(&logits, &tiny_top_p, &mut rng).token_id,
            expected
        );
    }
}

#[test]
fn top_k_draws_only_the_k_best_in_proportion() {
    let logits = [0.0f32, 2.0, 1.0, 1.5, -1.0];
    let top_k = SamplingParams {
        top_k: 2,
        ..params(1.0)
    };
    let counts = histogram(&logits, &top_k, 21, 10_000);
    assert_eq!(counts[0] + counts[2] + counts[4], 0, "{counts:?}");
    // Renormalized over {1, 3}: p(1) = 1 / (1 + e^-0.5) ≈ 0.622.
    let share = counts[1] as f64 / 10_000.0;
    assert!((share - 0.622).abs() < 0.02, "{share}");
}

/// Reference nucleus: full sort by (prob desc, id asc), smallest prefix reaching top_p.
fn reference_nucleus(logits: &[f32], temperature: f32, top_p: f64) -> Vec<usize> {
    let probs = softmax(logits, temperature);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let mut cumulative = 0.0;
    let mut kept = Vec::new();
    for id in order {
        kept.push(id);
        cumulative += probs[id];
        if cumulative >= top_p {
            break;
        }
    }
    kept
}

#[test]
fn top_p_draws_only_from_the_nucleus_on_a_large_vocab() {
    let logits = random_logits(50_000, 77);
    // Small enough that the nucleus is a few hundred tokens (several chunk rounds).
    let nucleus = reference_nucleus(&logits, 0.3, 0.5);
    assert!(nucleus.len() > 100, "nucleus of {}", nucleus.len());
    let mut in_nucleus = vec![false; logits.len()];
    nucleus.iter().for_each(|&id| in_nucleus[id] = true);
    let top_p = SamplingParams {
        top_p: 0.5,
        ..params(0.3)
    };
    let counts = histogram(&logits, &top_p, 5, 2000);
    let outside: usize = (0..logits.len())
        .filter(|&id| !in_nucleus[id])
        .map(|id| counts[id])
        .sum();
    assert_eq!(outside, 0);
    let distinct = counts.iter().filter(|&&c| c > 0).count();
    assert!(
        distinct > nucleus.len() / 4,
        "only {distinct} distinct tokens drawn"
    );
}

#[test]
fn min_p_drops_unlikely_tokens() {
    // Probabilities ∝ 1, e^-1 ≈ 0.37, e^-3 ≈ 0.05: min_p 0.1 drops token 2 only.
    let logits = [0.0f32, -1.0, -3.0];
    let min_p = SamplingParams {
        min_p: 0.1,
        ..params(1.0)
    };
    let counts = histogram(&logits, &min_p, 4, 5000);
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");
    let unfiltered = histogram(&logits, &params(1.0), 4, 5000);
    assert!(unfiltered[2] > 0, "{unfiltered:?}");
}

#[test]
fn repetition_penalty_pushes_repeated_tokens_down() {
    let penalty = SamplingParams {
        repetition_penalty: 2.0,
        ..SamplingParams::greedy(1)
    };
    let mut scratch = SamplerScratch::new();
    let mut rng = SeqRng::from_seed(1);
    // Positive logit, seen in the prompt: 2.0 / 2 = 1.0 < 1.5.
    let mut row = vec![2.0, 1.5];
    assert_eq!(
        sample(&mut row, &penalty, &[0], &[], &[], &mut rng, &mut scratch).token_id,
        1
    );
    // Negative logit, seen in the output: -1.0 * 2 = -2.0 < -1.5.
    let mut row = vec![-1.0, -1.5];
    assert_eq!(
        sample(&mut row, &penalty, &[], &[0], &[], &mut rng, &mut scratch).token_id,
        1
    );
    // Unseen tokens are untouched.
    let mut row = vec![2.0, 1.5];
    assert_eq!(
        sample(&mut row, &penalty, &[1], &[], &[], &mut rng, &mut scratch).token_id,
        0
    );
}

#[test]
fn presence_and_frequency_decide_greedy_exactly_at_the_margin() {
    let mut scratch = SamplerScratch::new();
    let mut rng = SeqRng::from_seed(1);
    let with = |presence, frequency| SamplingParams {
        presence_penalty: presence,
        frequency_penalty: frequency,
        ..SamplingParams::greedy(1)
    };
    let mut pick = |params: &SamplingParams, output: &[TokenId]| {
        let mut row = vec![1.0, 0.3];
        sample(
            &mut row,
            params,
            &[0, 0, 0],
            output,
            &[],
            &mut rng,
            &mut scratch,
        )
        .token_id
    };
    // 1.0 - 0.25 - 2 * 0.25 = 0.25 < 0.3.
    assert_eq!(pick(&with(0.25, 0.25), &[0, 0]), 1);
    // 1.0 - 0.25 - 2 * 0.125 = 0.5 > 0.3.
    assert_eq!(pick(&with(0.25, 0.125), &[0, 0]), 0);
    // Prompt occurrences do not count: no output, no penalty.
    assert_eq!(pick(&with(5.0, 5.0), &[]), 0);
}

#[test]
fn logit_bias_forces_a_token() {
    let logits = random_logits(500, 3);
    let forced = SamplingParams {
        logit_bias: vec![(417, 100.0)],
        ..params(1.0)
    };
    let counts = histogram(&logits, &forced, 8, 200);
    assert_eq!(counts[417], 200);
    let banned = SamplingParams {
        logit_bias: vec![(2, -100.0)],
        ..SamplingParams::greedy(1)
    };
    let mut rng = SeqRng::from_seed(0);
    assert_eq!(sample_once(&[0.0, 1.0, 9.0], &banned, &mut rng).token_id, 1);
}

#[test]
fn min_tokens_suppresses_eos_and_stop_ids_then_allows_them() {
    let logits = [0.0f32, 0.0, 5.0, 9.0]; // EOS (3) best, stop id 2 second.
    let request = SamplingParams {
        min_tokens: 2,
        stop_token_ids: vec![2],
        ..SamplingParams::greedy(8)
    };
    let mut scratch = SamplerScratch::new();
    let mut rng = SeqRng::from_seed(0);
    let mut pick = |params: &SamplingParams, output: &[TokenId]| {
        let mut row = logits.to_vec();
        sample(
            &mut row,
            params,
            &[1],
            output,
            &[EOS],
            &mut rng,
            &mut scratch,
        )
        .token_id
    };
    assert_eq!(pick(&request, &[]), 0);
    assert_eq!(pick(&request, &[0]), 0);
    assert_eq!(pick(&request, &[0, 0]), EOS);
    // ignore_eos: EOS will not stop the sequence, so min_tokens leaves it alone.
    let ignore = SamplingParams {
        ignore_eos: true,
        ..request.clone()
    };
    assert_eq!(pick(&ignore, &[]), EOS);
    let no_stop_ids = SamplingParams {
        stop_token_ids: vec![],
        ..request
    };
    assert_eq!(pick(&no_stop_ids, &[]), 2);
}

/// Generates `len` tokens for one request, feeding each token back as output.
struct Generation {
    params: SamplingParams,
    prompt: Vec<TokenId>,
    output: Vec<TokenId>,
    logprobs: Vec<Option<TokenLogprobs>>,
    rng: SeqRng,
}

impl Generation {
    fn new(params: SamplingParams, prompt_seed: u64) -> Self {
        let rng = SeqRng::new(params.seed);
        let prompt = (0..20)
            .map(|i| ((i * 37 + prompt_seed * 11) % 300) as TokenId)
            .collect();
        Self {
            params,
            prompt,
            output: Vec::new(),
            logprobs: Vec::new(),
            rng,
        }
    }

    /// Fake model: logits depend only on the sequence so far.
    fn step(&mut self, scratch: &mut SamplerScratch) {
        let context = self
            .output
            .iter()
            .fold(7u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64));
        let mut row = random_logits(300, context);
        let token = sample(
            &mut row,
            &self.params,
            &self.prompt,
            &self.output,
            &[EOS],
            &mut self.rng,
            scratch,
        );
        self.output.push(token.token_id);
        self.logprobs.push(token.logprobs);
    }
}

fn seeded(seed: u64) -> SamplingParams {
    SamplingParams {
        seed: Some(seed),
        temperature: 0.9,
        top_p: 0.95,
        repetition_penalty: 1.2,
        frequency_penalty: 0.3,
        logprobs: Some(3),
        ..SamplingParams::default()
    }
}

fn generate_alone(params: SamplingParams, len: usize) -> Generation {
    let mut generation = Generation::new(params, 1);
    let mut scratch = SamplerScratch::new();
    (0..len).for_each(|_| generation.step(&mut scratch));
    generation
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let first = generate_alone(seeded(42), 40);
    let again = generate_alone(seeded(42), 40);
    let other = generate_alone(seeded(43), 40);
    assert_eq!(first.output, again.output);
    assert_eq!(first.logprobs, again.logprobs);
    assert_ne!(first.output, other.output);
}

#[test]
fn interleaved_requests_sample_as_if_alone() {
    let alone_a = generate_alone(seeded(1), 30);
    let params_b = SamplingParams {
        top_k: 5,
        logprobs: Some(20),
        top_p: 1.0,
        ..seeded(2)
    };
    let alone_b = generate_alone(params_b.clone(), 30);
    // Same two requests sharing one scratch, in an irregular interleaving.
    let mut a = Generation::new(seeded(1), 1);
    let mut b = Generation::new(params_b, 1);
    let mut shared = SamplerScratch::new();
    for step in 0..60 {
        let a_first = step % 3 != 0;
        if a_first && a.output.len() < 30 {
            a.step(&mut shared);
        }
        if b.output.len() < 30 {
            b.step(&mut shared);
        }
        if !a_first && a.output.len() < 30 {
            a.step(&mut shared);
        }
    }
    assert_eq!(a.output, alone_a.output);
    assert_eq!(b.output, alone_b.output);
    assert_eq!(a.logprobs, alone_a.logprobs);
    assert_eq!(b.logprobs, alone_b.logprobs);
}

#[test]
fn logprobs_are_raw_log_softmax_with_sorted_top_list() {
    let logits = random_logits(1000, 12);
    let expected = softmax(&logits, 1.0);
    for k in [0usize, 1, 5, 20] {
        let request = SamplingParams {
            logprobs: Some(k),
            temperature: 0.7,
            ..SamplingParams::default()
        };
        let mut rng = SeqRng::from_seed(k as u64);
        let token = sample_once(&logits, &request, &mut rng);
        let logprobs = token.logprobs.expect("logprobs requested");
        let sampled_expected = expected[token.token_id as usize].ln();
        assert!((logprobs.logprob as f64 - sampled_expected).abs() < 1e-5);
        assert_eq!(logprobs.top.len(), k);
        for pair in logprobs.top.windows(2) {
            assert!(pair[0].1 >= pair[1].1, "not sorted: {pair:?}");
        }
        let mut by_prob: Vec<usize> = (0..logits.len()).collect();
        by_prob.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]).then(a.cmp(&b)));
        for (rank, &(id, logprob)) in logprobs.top.iter().enumerate() {
            assert_eq!(id as usize, by_prob[rank]);
            assert!((logprob as f64 - expected[id as usize].ln()).abs() < 1e-5);
        }
    }
    let none = sample_once(&logits, &params(1.0), &mut SeqRng::from_seed(0));
    assert_eq!(none.logprobs, None);
}

#[test]
fn sampled_logprob_is_reported_even_outside_top_k_and_before_bias() {
    let logits = [3.0f32, 2.0, 1.0, 0.0];
    let request = SamplingParams {
        logprobs: Some(1),
        logit_bias: vec![(2, 50.0)],
        ..SamplingParams::greedy(1)
    };
    let token = sample_once(&logits, &request, &mut SeqRng::from_seed(0));
    assert_eq!(token.token_id, 2);
    let logprobs = token.logprobs.expect("logprobs requested");
    let raw = softmax(&logits, 1.0);
    assert!((logprobs.logprob as f64 - raw[2].ln()).abs() < 1e-6);
    assert_eq!(logprobs.top.len(), 1);
    assert_eq!(logprobs.top[0].0, 0);
}

#[test]
fn unseeded_requests_use_entropy_and_still_sample_validly() {
    let sampled: Vec<TokenId> = (0..8)
        .map(|_| {
            generate_alone(
                SamplingParams {
                    seed: None,
                    ..seeded(0)
                },
                10,
            )
            .output[9]
        })
        .collect();
    assert!(sampled.iter().all(|&t| t < 300));
    assert!(
        sampled.windows(2).any(|w| w[0] != w[1]),
        "8 entropy-seeded runs agreed: {sampled:?}"
    );
}

#[test]
fn degenerate_rows_do_not_panic() {
    let mut rng = SeqRng::from_seed(0);
    let hot = params(1.0);
    assert_eq!(sample_once(&[], &hot, &mut rng).token_id, 0);
    assert_eq!(
        sample_once(&[f32::NEG_INFINITY; 3], &hot, &mut rng).token_id,
        0
    );
    assert_eq!(
        sample_once(&[f32::NAN, 1.0, f32::NAN], &hot, &mut rng).token_id,
        1
    );
    assert_eq!(
        sample_once(&[0.0, f32::INFINITY], &hot, &mut rng).token_id,
        1
    );
    let all = SamplingParams {
        logprobs: Some(20),
        top_k: 10,
        top_p: 0.5,
        ..hot
    };
    assert_eq!(sample_once(&[], &all, &mut rng).token_id, 0);
}

/// Tokens of a seeded request under three filter settings (fresh rng each).
fn pinned_run(top_k: usize, top_p: f32) -> Vec<TokenId> {
    let request = SamplingParams {
        seed: Some(2024),
        top_k,
        top_p,
        ..params(1.0)
    };
    let mut rng = SeqRng::new(request.seed);
    (0..8)
        .map(|step| sample_once(&random_logits(1000, step), &request, &mut rng).token_id)
        .collect()
}

#[test]
fn seeded_tokens_are_pinned_across_versions() {
    // Regression pin: the draw order (id order without filters, id order after top_k,
    // probability order after top_p) and the rng are part of the seeded-output contract.
    // If a change here is intended, every seeded completion changes with it.
    let got = [pinned_run(0, 1.0), pinned_run(50, 1.0), pinned_run(0, 0.9)];
    assert_eq!(got, PINNED);
}

const PINNED: [[TokenId; 8]; 3] = [
    [583, 292, 253, 493, 762, 792, 971, 704],
    [618, 277, 253, 510, 761, 705, 950, 711],
    [588, 292, 253, 500, 763, 792, 970, 704],
];
