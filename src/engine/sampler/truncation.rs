//! The random path: temperature, min_p, top_k, top_p (vLLM v1's order), then one draw
//! by inverse CDF. Also the greedy argmax shared with the greedy path.
//!
//! Invariants:
//! - The row is turned in place into unnormalized probabilities `exp(l/T - max)`, so the
//!   most likely token has probability exactly 1.0 and is never filtered out: every
//!   filter keeps at least one token.
//! - Tokens are ranked by a total order (probability descending, then token id
//!   ascending). top_k and top_p each keep a prefix of that ranking, so together they
//!   reduce to one cutoff token; everything ranked below it gets probability 0.
//! - The draw always scans the row in token-id order, so the same row and the same rng
//!   state give the same token, independent of sort algorithms, threads or batch.
//! - Exactly `top_k` tokens survive top_k (ties at the boundary go to the lower id), so
//!   `top_k = 1` is the greedy token.
//! - Cost: one softmax pass and one scan without top_k/top_p; with them, O(vocab)
//!   expected selection work and a sort of at most 64 tokens, never a full-vocab sort.

use std::cmp::Ordering;

use super::logprobs::rank_value;
use super::rng::SeqRng;
use crate::request::{SamplingParams, TokenId};

/// The nucleus search sorts at most this many tokens.
const NUCLEUS_SORT_LEN: usize = 64;

/// Index of the largest logit, ties to the lowest id; NaN counts as `-inf`.
/// Returns 0 for an empty or all-`-inf` row. `logits: [vocab]`.
///
/// Two passes the compiler vectorizes (a vocabulary of 150k is scanned for every
/// sequence of every step): the largest value over 16 independent lanes, then the first
/// 16-element chunk that holds it, searched element by element.
pub(super) fn argmax(logits: &[f32]) -> TokenId {
    const LANES: usize = 16;
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks.clone() {
        for (m, &logit) in lane_max.iter_mut().zip(chunk) {
            let value = rank_value(logit);
            *m = if value > *m { value } else { *m };
        }
    }
    let best = lane_max
        .into_iter()
        .chain(rest.iter().map(|&l| rank_value(l)))
        .fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    let is_best = |&l: &f32| rank_value(l) == best;
    let first_chunk = chunks
        .clone()
        .position(|chunk| chunk.iter().fold(false, |hit, l| hit | is_best(l)))
        .unwrap_or(logits.len() / LANES);
    let start = first_chunk * LANES;
    let within = logits[start..].iter().position(is_best).unwrap_or(0);
    (start + within) as TokenId
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
    let top_k = (params.top_k > 0 && params.top_k < probs.len()).then_some(params.top_k);
    let top_p = (params.top_p < 1.0).then_some(params.top_p.max(0.0));
    if top_k.is_some() || top_p.is_some() {
        if let Some(cutoff) = find_cutoff(probs, top_k, top_p, candidates) {
            zero_below(probs, cutoff);
        }
    }
    draw(probs, rng)
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

/// Total order of tokens: higher probability first, then lower id.
fn by_prob_desc<'a>(probs: &'a [f32]) -> impl Fn(&TokenId, &TokenId) -> Ordering + 'a {
    move |&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    }
}

/// The lowest-ranked token that survives top_k then top_p (top_p renormalized over the
/// top_k set, as vLLM does). `None` only for an all-zero row.
fn find_cutoff(
    probs: &[f32],
    top_k: Option<usize>,
    top_p: Option<f32>,
    candidates: &mut Vec<TokenId>,
) -> Option<TokenId> {
    let order = by_prob_desc(probs);
    let ids = 0..probs.len() as TokenId;
    candidates.clear();
    let total = if let Some(k) = top_k {
        candidates.extend(ids.filter(|&id| probs[id as usize] > 0.0));
        if candidates.len() > k {
            candidates.select_nth_unstable_by(k - 1, &order);
            candidates.truncate(k);
        }
        let Some(top_p) = top_p else {
            return candidates.iter().copied().max_by(&order);
        };
        let total = mass(probs, candidates);
        let floor = nucleus_floor(total, top_p, candidates.len());
        candidates.retain(|&id| probs[id as usize] >= floor);
        total
    } else {
        let total: f64 = probs.iter().map(|&p| p as f64).sum();
        let floor = nucleus_floor(total, top_p.unwrap_or(1.0), probs.len());
        candidates
            .extend(ids.filter(|&id| probs[id as usize] > 0.0 && probs[id as usize] >= floor));
        total
    };
    nucleus_cutoff(probs, candidates, top_p.unwrap_or(1.0) as f64 * total)
}

/// A probability below which no token can be in the nucleus: tokens under it hold
/// less than `n * floor = (1 - top_p) * total / 2` together, so the tokens at or above
/// it already reach `top_p * total` (the factor 2 absorbs rounding).
fn nucleus_floor(total: f64, top_p: f32, n: usize) -> f32 {
    ((1.0 - top_p as f64) * total / (2.0 * n.max(1) as f64)) as f32
}

fn mass(probs: &[f32], ids: &[TokenId]) -> f64 {
    ids.iter().map(|&id| probs[id as usize] as f64).sum()
}

/// Last token of the shortest ranked prefix of `candidates` whose mass reaches
/// `target` (at least one token). Quickselect on mass: halve the range around its
/// median until at most [`NUCLEUS_SORT_LEN`] tokens remain, then sort those.
fn nucleus_cutoff(probs: &[f32], candidates: &mut [TokenId], target: f64) -> Option<TokenId> {
    let order = by_prob_desc(probs);
    // The cutoff's position is in lo..hi; mass_before = mass of candidates[..lo].
    let (mut lo, mut hi) = (0usize, candidates.len());
    let mut mass_before = 0.0f64;
    while hi - lo > NUCLEUS_SORT_LEN {
        let mid = lo + (hi - lo) / 2;
        candidates[lo..hi].select_nth_unstable_by(mid - lo, &order);
        let upper_mass = mass(probs, &candidates[lo..=mid]);
        if mass_before + upper_mass >= target {
            hi = mid + 1;
        } else {
            mass_before += upper_mass;
            lo = mid + 1;
        }
    }
    let tail = &mut candidates[lo..hi];
    tail.sort_unstable_by(&order);
    let mut cumulative = mass_before;
    for &id in tail.iter() {
        cumulative += probs[id as usize] as f64;
        if cumulative >= target {
            return Some(id);
        }
    }
    // Only through rounding: keep everything.
    tail.last().copied()
}

/// Zeroes every token ranked below `cutoff` (lower probability, or equal and higher id).
fn zero_below(probs: &mut [f32], cutoff: TokenId) {
    let cutoff_prob = probs[cutoff as usize];
    for (id, prob) in probs.iter_mut().enumerate() {
        if *prob < cutoff_prob || (*prob == cutoff_prob && id > cutoff as usize) {
            *prob = 0.0;
        }
    }
}

/// Inverse-CDF draw in token-id order with one uniform number: the first token whose
/// cumulative probability exceeds `u * total`. Zero-probability tokens are never
/// returned unless the whole row is zero (then token 0).
fn draw(probs: &[f32], rng: &mut SeqRng) -> TokenId {
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    let target = rng.next_f64() * total;
    let mut cumulative = 0.0f64;
    let mut last_positive = 0usize;
    for (id, &prob) in probs.iter().enumerate() {
        if prob > 0.0 {
            cumulative += prob as f64;
            last_positive = id;
            if cumulative > target {
                return id as TokenId;
            }
        }
    }
    // Only reachable through rounding (target within an ulp of total) or a zero row.
    last_positive as TokenId
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
    fn argmax_matches_a_plain_scan_on_long_rows() {
        // The first strictly larger value wins, NaN ranks as -inf: the plain definition.
        let plain = |row: &[f32]| {
            let mut best = (0usize, f32::NEG_INFINITY);
            for (id, &l) in row.iter().enumerate() {
                let v = if l.is_nan() { f32::NEG_INFINITY } else { l };
                if v > best.1 {
                    best = (id, v);
                }
            }
            best.0 as TokenId
        };
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let pool = [f32::NAN, f32::NEG_INFINITY, -0.0, 0.0, 1.0, 2.5, 2.5, -3.0];
        for len in [1usize, 15, 16, 17, 31, 33, 100, 1000] {
            for _ in 0..200 {
                let row: Vec<f32> = (0..len).map(|_| pool[next() % pool.len()]).collect();
                assert_eq!(argmax(&row), plain(&row), "{row:?}");
            }
            let all_low = vec![f32::NEG_INFINITY; len];
            assert_eq!(argmax(&all_low), 0);
            let mut one_high = vec![f32::NAN; len];
            let at = next() % len;
            one_high[at] = -1e30;
            assert_eq!(argmax(&one_high), at as TokenId);
        }
    }

    /// Ids left with non-zero probability after top_k/top_p on `probs`.
    fn kept(probs: &[f32], top_k: Option<usize>, top_p: Option<f32>) -> Vec<TokenId> {
        let mut row = probs.to_vec();
        let mut candidates = Vec::new();
        if let Some(cutoff) = find_cutoff(&row, top_k, top_p, &mut candidates) {
            zero_below(&mut row, cutoff);
        }
        (0..row.len() as TokenId)
            .filter(|&id| row[id as usize] > 0.0)
            .collect()
    }

    /// Reference: full sort by (prob desc, id asc), top k, then the shortest prefix
    /// reaching `top_p` of the top-k mass; returned sorted by id.
    fn reference_kept(probs: &[f32], top_k: Option<usize>, top_p: Option<f32>) -> Vec<TokenId> {
        let mut order: Vec<TokenId> = (0..probs.len() as TokenId)
            .filter(|&id| probs[id as usize] > 0.0)
            .collect();
        order.sort_by(by_prob_desc(probs));
        order.truncate(top_k.unwrap_or(usize::MAX));
        let target = top_p.unwrap_or(1.0) as f64 * mass(probs, &order);
        let mut cumulative = 0.0;
        let end = order
            .iter()
            .position(|&id| {
                cumulative += probs[id as usize] as f64;
                cumulative >= target
            })
            .map_or(order.len(), |at| at + 1);
        order.truncate(end);
        order.sort_unstable();
        order
    }

    #[test]
    fn top_p_keeps_shortest_prefix_reaching_mass() {
        // Probabilities 0.2, 0.4, 0.1, 0.3 (unnormalized ×10).
        let probs = [2.0f32, 4.0, 1.0, 3.0];
        assert_eq!(kept(&probs, None, Some(0.65)), vec![1, 3]);
        assert_eq!(kept(&probs, None, Some(0.75)), vec![0, 1, 3]);
        assert_eq!(kept(&probs, None, Some(0.0)), vec![1]);
        // top_p renormalizes over the top_k set: top 2 = {1, 3}, 0.5 of 7 → {1}.
        assert_eq!(kept(&probs, Some(2), Some(0.5)), vec![1]);
        assert_eq!(kept(&probs, Some(2), Some(0.6)), vec![1, 3]);
    }

    #[test]
    fn top_k_keeps_exactly_k_with_ties_to_lower_id() {
        let probs = [0.5f32, 1.0, 0.5, 0.5, 0.1];
        assert_eq!(kept(&probs, Some(2), None), vec![0, 1]);
        assert_eq!(kept(&probs, Some(3), None), vec![0, 1, 2]);
        assert_eq!(kept(&probs, Some(1), None), vec![1]);
    }

    #[test]
    fn nucleus_matches_full_sort_reference_on_large_rows_with_ties() {
        let mut rng = SeqRng::from_seed(17);
        for round in 0..40usize {
            let vocab = 500 + round * 97;
            // Quantized values make many exact ties, including at the cutoff.
            let probs: Vec<f32> = (0..vocab)
                .map(|_| {
                    let u = rng.next_f64();
                    if u < 0.1 {
                        0.0
                    } else {
                        ((u * 20.0).floor() / 20.0).powi(3 + (round % 5) as i32) as f32
                    }
                })
                .collect();
            let top_p = [0.05f32, 0.3, 0.5, 0.9, 0.999][round % 5];
            let top_k = [None, Some(1), Some(37), Some(vocab / 2)][round % 4];
            assert_eq!(
                kept(&probs, top_k, Some(top_p)),
                reference_kept(&probs, top_k, Some(top_p)),
                "round {round}"
            );
            assert_eq!(
                kept(&probs, top_k, None),
                reference_kept(&probs, top_k, None),
                "round {round}"
            );
        }
    }

    #[test]
    fn large_uniform_nucleus_keeps_the_lowest_ids() {
        // 1000 equal tokens except id 999: total 1001, target 500.5 → id 999 and 499 ones.
        let mut probs = vec![1.0f32; 1000];
        probs[999] = 2.0;
        let mut expected: Vec<TokenId> = (0..499).collect();
        expected.push(999);
        assert_eq!(kept(&probs, None, Some(0.5)), expected);
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
            let id = draw(&probs, &mut rng);
            assert!(id == 1 || id == 3, "drew {id}");
        }
    }
}
