//! The random path: temperature, min_p, top_k, top_p (vLLM v1's order), then one draw
//! by inverse CDF. Also the greedy argmax shared with the greedy path.
//!
//! Invariants:
//! - The row is turned in place into unnormalized probabilities `exp(l/T - max)`, so the
//!   most likely token has probability exactly 1.0 and is never filtered out: every
//!   filter keeps at least one token.
//! - Candidate order is a total order (probability descending, then token id
//!   ascending), so selections and the draw do not depend on sort stability, thread
//!   count or batch: the same row and the same rng state always give the same token.
//! - With top_k and top_p off, nothing is sorted: one softmax pass and one scan.
//! - Exactly `top_k` tokens survive top_k (ties at the boundary go to the lower id), so
//!   `top_k = 1` is the greedy token.

use std::cmp::Ordering;

use super::logprobs::rank_value;
use super::rng::SeqRng;
use crate::engine::request::{SamplingParams, TokenId};

/// First chunk of candidates sorted by the top_p search; doubles each round.
const TOP_P_FIRST_CHUNK: usize = 64;

/// Index of the largest logit, ties to the lowest id; NaN counts as `-inf`.
/// Returns 0 for an empty or all-`-inf` row. `logits: [vocab]`.
pub(super) fn argmax(logits: &[f32]) -> TokenId {
    let mut best_id = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (id, &logit) in logits.iter().enumerate() {
        let value = rank_value(logit);
        if value > best_value {
            best_id = id;
            best_value = value;
        }
    }
    best_id as TokenId
}

/// Samples one token from the processed row `logits: [vocab]` (temperature > 0). The
/// row is overwritten with unnormalized probabilities; `candidates` is scratch.
pub(super) fn sample_random(
    logits: &mut [f32],
    params: &SamplingParams,
    rng: &mut SeqRng,
    candidates: &mut Vec<TokenId>,
) -> TokenId {
    let temperature = params.temperature;
    let mut max = f32::NEG_INFINITY;
    for logit in logits.iter_mut() {
        *logit = rank_value(*logit) / temperature;
        max = max.max(*logit);
    }
    if !max.is_finite() {
        // No finite logit (all masked) or an infinite one: the distribution is
        // degenerate, fall back to the deterministic choice.
        return argmax(logits);
    }
    for logit in logits.iter_mut() {
        *logit = (*logit - max).exp();
    }
    let probs: &mut [f32] = logits;
    if params.min_p > 0.0 {
        apply_min_p(probs, params.min_p);
    }
    let vocab = probs.len();
    let top_k_on = params.top_k > 0 && params.top_k < vocab;
    let top_p_on = params.top_p < 1.0;
    if !top_k_on && !top_p_on {
        return draw(probs, (0..vocab).map(|id| id as TokenId), rng);
    }
    candidates.clear();
    candidates.extend((0..vocab as TokenId).filter(|&id| probs[id as usize] > 0.0));
    if top_k_on {
        keep_top_k(probs, candidates, params.top_k);
    }
    if top_p_on {
        keep_top_p(probs, candidates, params.top_p);
    } else {
        candidates.sort_unstable();
    }
    draw(probs, candidates.iter().copied(), rng)
}

/// Drops tokens whose probability is below `min_p * max_prob` (max_prob is 1.0 here).
/// `min_p` above 1 is treated as 1, so the most likely token always survives.
fn apply_min_p(probs: &mut [f32], min_p: f32) {
    let threshold = min_p.min(1.0);
    for prob in probs.iter_mut() {
        if *prob < threshold {
            *prob = 0.0;
        }
    }
}

/// Total order of candidates: higher probability first, then lower id.
fn by_prob_desc<'a>(probs: &'a [f32]) -> impl Fn(&TokenId, &TokenId) -> Ordering + 'a {
    move |&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    }
}

/// Keeps the `k` most likely candidates (in unspecified order).
fn keep_top_k(probs: &[f32], candidates: &mut Vec<TokenId>, k: usize) {
    if candidates.len() > k {
        candidates.select_nth_unstable_by(k - 1, by_prob_desc(probs));
        candidates.truncate(k);
    }
}

/// Nucleus filter: sorts candidates by probability (descending) and keeps the shortest
/// prefix whose mass reaches `top_p` of the candidates' total mass (at least one).
/// Sorts only as far as needed: chunks of 64, 128, … selected then sorted.
fn keep_top_p(probs: &[f32], candidates: &mut Vec<TokenId>, top_p: f32) {
    let total: f64 = candidates.iter().map(|&id| probs[id as usize] as f64).sum();
    let target = top_p.max(0.0) as f64 * total;
    let order = by_prob_desc(probs);
    let len = candidates.len();
    let mut sorted = 0usize;
    let mut chunk = TOP_P_FIRST_CHUNK;
    let mut cumulative = 0.0f64;
    while sorted < len {
        let end = (sorted + chunk).min(len);
        if end < len {
            candidates[sorted..].select_nth_unstable_by(end - sorted - 1, &order);
        }
        candidates[sorted..end].sort_unstable_by(&order);
        for position in sorted..end {
            cumulative += probs[candidates[position] as usize] as f64;
            if cumulative >= target {
                candidates.truncate(position + 1);
                return;
            }
        }
        sorted = end;
        chunk *= 2;
    }
}

/// Inverse-CDF draw over `order` with one uniform number: the first token whose
/// cumulative probability exceeds `u * total`. Zero-probability tokens are never
/// returned unless every token has zero probability (then the first in `order`).
fn draw(probs: &[f32], order: impl Iterator<Item = TokenId> + Clone, rng: &mut SeqRng) -> TokenId {
    let total: f64 = order.clone().map(|id| probs[id as usize] as f64).sum();
    let target = rng.next_f64() * total;
    let mut cumulative = 0.0f64;
    let mut last_positive = None;
    let mut first = None;
    for id in order {
        first.get_or_insert(id);
        let prob = probs[id as usize];
        if prob > 0.0 {
            cumulative += prob as f64;
            last_positive = Some(id);
            if cumulative > target {
                return id;
            }
        }
    }
    // Only reachable through rounding (target within an ulp of total) or an all-zero row.
    last_positive.or(first).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_prefers_lowest_id_on_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, -1.0]), 1);
        assert_eq!(argmax(&[-5.0, -4.0, f32::NAN, -4.5]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn top_p_keeps_shortest_prefix_reaching_mass() {
        // Probabilities 0.4, 0.3, 0.2, 0.1 (unnormalized ×10).
        let probs = [2.0f32, 4.0, 1.0, 3.0];
        let mut candidates = vec![0, 1, 2, 3];
        keep_top_p(&probs, &mut candidates, 0.65);
        assert_eq!(candidates, vec![1, 3]);
        let mut candidates = vec![0, 1, 2, 3];
        keep_top_p(&probs, &mut candidates, 0.75);
        assert_eq!(candidates, vec![1, 3, 0]);
        let mut candidates = vec![0, 1, 2, 3];
        keep_top_p(&probs, &mut candidates, 0.0);
        assert_eq!(candidates, vec![1]);
    }

    #[test]
    fn top_p_sorts_across_chunks_on_large_candidate_sets() {
        // 1000 tokens of equal mass except id 999: top_p 0.5 needs ~500 of them, which
        // takes several chunk rounds; the result must be the ids in (prob, id) order.
        let mut probs = vec![1.0f32; 1000];
        probs[999] = 2.0;
        let mut candidates: Vec<TokenId> = (0..1000).rev().collect();
        keep_top_p(&probs, &mut candidates, 0.5);
        // Total 1001; target 500.5: token 999 (2.0) + 499 ones = 501 ≥ 500.5.
        let mut expected = vec![999];
        expected.extend(0..499);
        assert_eq!(candidates, expected);
    }

    #[test]
    fn top_k_keeps_exactly_k_with_ties_to_lower_id() {
        let probs = [0.5f32, 1.0, 0.5, 0.5, 0.1];
        let mut candidates = vec![4, 3, 2, 1, 0];
        keep_top_k(&probs, &mut candidates, 2);
        candidates.sort_unstable();
        assert_eq!(candidates, vec![0, 1]);
    }

    #[test]
    fn min_p_drops_tokens_below_fraction_of_max() {
        let mut probs = [1.0f32, 0.5, 0.09, 0.1];
        apply_min_p(&mut probs, 0.1);
        assert_eq!(probs, [1.0, 0.5, 0.0, 0.1]);
        let mut probs = [1.0f32, 0.99];
        apply_min_p(&mut probs, 5.0);
        assert_eq!(probs, [1.0, 0.0]);
    }

    #[test]
    fn draw_never_returns_zero_probability_tokens() {
        let probs = [0.0f32, 1.0, 0.0, 1.0, 0.0];
        let mut rng = SeqRng::from_seed(11);
        for _ in 0..1000 {
            let id = draw(&probs, 0..5u32, &mut rng);
            assert!(id == 1 || id == 3, "drew {id}");
        }
    }
}
