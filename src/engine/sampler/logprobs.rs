//! Log-probabilities of the RAW logits (vLLM v1 `raw_logprobs`): `log_softmax` of the row
//! before any penalty, bias or temperature.
//!
//! Invariants: the top list holds `min(k, 20, vocab)` entries sorted by logprob
//! descending, ties broken by lower token id (a prompt's full row, for perplexity's KL
//! divergence, holds every token in id order); NaN logits rank below every number and
//! never enter the top list ahead of one. The normalizer is accumulated in f64 in token
//! order, so equal rows give bit-equal logprobs.

use crate::request::{
    PromptLogprob, TokenId, TokenLogprobs, MAX_TOP_LOGPROBS, PROMPT_LOGPROBS_FULL_ROW,
};

/// What is kept of the raw row until the sampled token is known.
#[derive(Debug, Default)]
pub(super) struct RawLogprobs {
    /// `[vocab]`: copy of the raw logits (the caller's row is edited in place after).
    raw_logits: Vec<f32>,
    /// `max + ln(sum(exp(logit - max)))` over the raw row.
    log_normalizer: f64,
    /// The top entries as `(token, raw logit)`, best first.
    top_logits: Vec<(TokenId, f32)>,
}

impl RawLogprobs {
    /// Records the raw row and its top `k` (clamped to [`MAX_TOP_LOGPROBS`]).
    /// `logits: [vocab]`.
    pub(super) fn capture(&mut self, logits: &[f32], k: usize) {
        self.raw_logits.clear();
        self.raw_logits.extend_from_slice(logits);
        self.log_normalizer = log_sum_exp(logits);
        select_top(logits, k.min(MAX_TOP_LOGPROBS), &mut self.top_logits);
    }

    /// The logprobs of the captured row for the sampled `token`.
    pub(super) fn finish(&self, token: TokenId) -> TokenLogprobs {
        let to_logprob = |logit: f32| (logit as f64 - self.log_normalizer) as f32;
        let sampled_logit = self
            .raw_logits
            .get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        TokenLogprobs {
            logprob: to_logprob(sampled_logit),
            top: self
                .top_logits
                .iter()
                .map(|&(id, logit)| (id, to_logprob(logit)))
                .collect(),
        }
    }
}

/// The logprob of prompt token `token` from the raw row `logits: [vocab]` of the
/// position before it, with its rank (1 + the number of other tokens whose logit is at
/// least as high, as vLLM counts) and the top `k` (clamped to [`MAX_TOP_LOGPROBS`]; with
/// [`PROMPT_LOGPROBS_FULL_ROW`] every token's, in id order).
pub fn prompt_logprob(logits: &[f32], token: TokenId, k: usize) -> PromptLogprob {
    let log_normalizer = log_sum_exp(logits);
    let to_logprob = |logit: f32| (logit as f64 - log_normalizer) as f32;
    let token_logit = logits
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |&l| rank_value(l));
    let others_ahead = logits
        .iter()
        .enumerate()
        .filter(|&(id, &l)| id != token as usize && rank_value(l) >= token_logit)
        .count();
    let mut top = Vec::new();
    if k == PROMPT_LOGPROBS_FULL_ROW {
        top.extend((0..).zip(logits.iter().map(|&l| rank_value(l))));
    } else {
        select_top(logits, k.min(MAX_TOP_LOGPROBS), &mut top);
    }
    PromptLogprob {
        logprob: to_logprob(token_logit),
        rank: others_ahead + 1,
        top: top
            .into_iter()
            .map(|(id, logit)| (id, to_logprob(logit)))
            .collect(),
    }
}

/// NaN → `-inf`, so NaNs compare as the smallest value.
pub(super) fn rank_value(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else {
        logit
    }
}

/// `ln(sum(exp(logits)))` computed stably in f64. `-inf` for an empty or all-`-inf`
/// row; `+inf` if any logit is `+inf`.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .map(|&l| rank_value(l))
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max as f64;
    }
    let sum: f64 = logits
        .iter()
        .map(|&l| (rank_value(l) as f64 - max as f64).exp())
        .sum();
    max as f64 + sum.ln()
}

/// Fills `top` with the `k` best `(token, logit)` of `logits: [vocab]`, best first,
/// ties to the lower id. One linear scan with a sorted buffer of at most `k` entries.
fn select_top(logits: &[f32], k: usize, top: &mut Vec<(TokenId, f32)>) {
    top.clear();
    if k == 0 {
        return;
    }
    for (id, &logit) in logits.iter().enumerate() {
        let value = rank_value(logit);
        if top.len() == k && top.last().is_some_and(|&(_, worst)| value <= worst) {
            continue;
        }
        // Entries with an equal value have lower ids (scanned earlier): insert after them.
        let at = top.partition_point(|&(_, kept)| kept >= value);
        top.insert(at, (id as TokenId, value));
        top.truncate(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_log_softmax(logits: &[f32]) -> Vec<f64> {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        logits.iter().map(|&l| l as f64 - max - sum.ln()).collect()
    }

    #[test]
    fn values_match_reference_log_softmax() {
        let logits = [1.5f32, -0.25, 3.0, 0.0, 2.75, -8.0];
        let mut raw = RawLogprobs::default();
        raw.capture(&logits, 6);
        let expected = reference_log_softmax(&logits);
        for (token, &expected_logprob) in expected.iter().enumerate() {
            let got = raw.finish(token as TokenId);
            assert!((got.logprob as f64 - expected_logprob).abs() < 1e-6);
        }
        let top = raw.finish(0).top;
        assert_eq!(top.len(), 6);
        for (id, logprob) in top {
            assert!((logprob as f64 - expected[id as usize]).abs() < 1e-6);
        }
    }

    #[test]
    fn top_list_is_sorted_descending_with_ties_to_lower_id() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NAN, 2.0, 0.5];
        let mut raw = RawLogprobs::default();
        raw.capture(&logits, 5);
        let ids: Vec<TokenId> = raw.finish(0).top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, vec![1, 3, 2, 5, 0]);
    }

    #[test]
    fn k_zero_gives_empty_top_but_sampled_logprob() {
        let logits = [0.0f32, 0.0];
        let mut raw = RawLogprobs::default();
        raw.capture(&logits, 0);
        let got = raw.finish(1);
        assert!(got.top.is_empty());
        assert!((got.logprob - 0.5f32.ln()).abs() < 1e-7);
    }

    #[test]
    fn k_is_clamped_to_twenty_and_to_vocab() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let mut raw = RawLogprobs::default();
        raw.capture(&logits, 100);
        assert_eq!(raw.finish(0).top.len(), MAX_TOP_LOGPROBS);
        raw.capture(&logits[..3], 20);
        assert_eq!(raw.finish(0).top.len(), 3);
    }

    #[test]
    fn prompt_logprob_has_value_rank_and_top() {
        let logits = [1.5f32, -0.25, 3.0, 0.0, 2.75, 3.0];
        let expected = reference_log_softmax(&logits);
        let lp = prompt_logprob(&logits, 4, 2);
        assert!((lp.logprob as f64 - expected[4]).abs() < 1e-6);
        assert_eq!(lp.rank, 3, "two tokens (2 and 5) are ahead of token 4");
        let ids: Vec<TokenId> = lp.top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, vec![2, 5]);
        assert!((lp.top[0].1 as f64 - expected[2]).abs() < 1e-6);
        // A tie counts ahead (vLLM's `>=`), the best token alone ranks 1.
        assert_eq!(prompt_logprob(&logits, 2, 0).rank, 2);
        assert_eq!(prompt_logprob(&[0.0, 5.0], 1, 0).rank, 1);
        assert!(prompt_logprob(&logits, 0, 0).top.is_empty());
        // An id outside the row is -inf, ranked last.
        let outside = prompt_logprob(&logits, 99, 1);
        assert_eq!((outside.logprob, outside.rank), (f32::NEG_INFINITY, 7));
    }

    #[test]
    fn full_row_prompt_logprobs_hold_every_token_in_id_order() {
        let logits = [1.5f32, -0.25, 3.0, f32::NAN, 2.75];
        let expected = reference_log_softmax(&[1.5, -0.25, 3.0, f32::NEG_INFINITY, 2.75]);
        let lp = prompt_logprob(&logits, 4, PROMPT_LOGPROBS_FULL_ROW);
        let ids: Vec<TokenId> = lp.top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
        for &(id, logprob) in &lp.top {
            let want = expected[id as usize];
            assert!(logprob as f64 == want || (logprob as f64 - want).abs() < 1e-6);
        }
        assert_eq!(lp.logprob, lp.top[4].1);
    }

    #[test]
    fn degenerate_rows_do_not_panic() {
        let mut raw = RawLogprobs::default();
        raw.capture(&[f32::NEG_INFINITY, f32::NEG_INFINITY], 2);
        assert_eq!(raw.finish(0).top.len(), 2);
        raw.capture(&[], 2);
        assert!(raw.finish(0).top.is_empty());
    }
}
