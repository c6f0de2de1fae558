//! Logit processors that can change the argmax, applied in vLLM v1's order before
//! temperature: min_tokens, logit_bias, repetition penalty, then frequency/presence.
//!
//! All functions edit one row `logits: [vocab]` in place. Token ids `>= vocab` (in the
//! prompt, the output, the bias list or the stop/EOS lists) are skipped: the server
//! validates ids against the vocabulary, the sampler only refuses to index out of range.
//!
//! Invariant: `TokenCounts` is all zeros between calls (each user clears what it set).

use crate::request::TokenId;

/// Reusable `[vocab]` counter, all zeros between calls.
#[derive(Debug, Default)]
pub(super) struct TokenCounts {
    counts: Vec<u32>,
}

impl TokenCounts {
    /// Makes room for `vocab` ids; grows only, so it allocates on first use per vocab.
    fn ensure_len(&mut self, vocab: usize) {
        if self.counts.len() < vocab {
            self.counts.resize(vocab, 0);
        }
    }
}

/// While fewer than `min_tokens` tokens were generated, EOS ids (unless `ignore_eos`)
/// and `stop_token_ids` get `-inf`, so the sequence cannot end early.
pub(super) fn apply_min_tokens(
    logits: &mut [f32],
    min_tokens: usize,
    num_output_tokens: usize,
    ignore_eos: bool,
    eos_ids: &[TokenId],
    stop_token_ids: &[TokenId],
) {
    if num_output_tokens >= min_tokens {
        return;
    }
    let eos_to_mask: &[TokenId] = if ignore_eos { &[] } else { eos_ids };
    for &token in eos_to_mask.iter().chain(stop_token_ids) {
        if let Some(logit) = logits.get_mut(token as usize) {
            *logit = f32::NEG_INFINITY;
        }
    }
}

/// Adds each `(token, bias)` to that token's logit (`-inf` stays `-inf`).
pub(super) fn apply_logit_bias(logits: &mut [f32], logit_bias: &[(TokenId, f32)]) {
    for &(token, bias) in logit_bias {
        if let Some(logit) = logits.get_mut(token as usize) {
            *logit += bias;
        }
    }
}

/// HF/vLLM repetition penalty over every distinct token of prompt + output: positive
/// logits are divided by `penalty`, negative ones multiplied. No-op unless `penalty` is
/// finite, `> 0` and `!= 1`.
pub(super) fn apply_repetition_penalty(
    logits: &mut [f32],
    penalty: f32,
    prompt_ids: &[TokenId],
    output_ids: &[TokenId],
    seen: &mut TokenCounts,
) {
    if !(penalty.is_finite() && penalty > 0.0) || penalty == 1.0 {
        return;
    }
    seen.ensure_len(logits.len());
    let vocab = logits.len();
    let tokens = || {
        prompt_ids
            .iter()
            .chain(output_ids)
            .map(|&t| t as usize)
            .filter(move |&t| t < vocab)
    };
    for token in tokens() {
        if seen.counts[token] == 0 {
            seen.counts[token] = 1;
            let logit = &mut logits[token];
            *logit = if *logit > 0.0 {
                *logit / penalty
            } else {
                *logit * penalty
            };
        }
    }
    for token in tokens() {
        seen.counts[token] = 0;
    }
}

/// OpenAI presence/frequency penalties over output tokens only:
/// `logit -= presence * (count > 0) + frequency * count`.
pub(super) fn apply_presence_frequency(
    logits: &mut [f32],
    presence_penalty: f32,
    frequency_penalty: f32,
    output_ids: &[TokenId],
    counts: &mut TokenCounts,
) {
    if presence_penalty == 0.0 && frequency_penalty == 0.0 {
        return;
    }
    counts.ensure_len(logits.len());
    let vocab = logits.len();
    let in_vocab = || {
        output_ids
            .iter()
            .map(|&t| t as usize)
            .filter(|&t| t < vocab)
    };
    for token in in_vocab() {
        counts.counts[token] += 1;
    }
    // Second pass: apply once per distinct token, zeroing its count as we go.
    for token in in_vocab() {
        let count = counts.counts[token];
        if count > 0 {
            counts.counts[token] = 0;
            logits[token] -= presence_penalty + frequency_penalty * count as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_tokens_masks_eos_and_stop_ids_until_reached() {
        let mut logits = vec![1.0, 2.0, 3.0, 4.0];
        apply_min_tokens(&mut logits, 2, 1, false, &[3], &[1, 99]);
        assert_eq!(logits, vec![1.0, f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY]);
        let mut reached = vec![1.0, 2.0, 3.0, 4.0];
        apply_min_tokens(&mut reached, 2, 2, false, &[3], &[1]);
        assert_eq!(reached, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn min_tokens_with_ignore_eos_masks_only_stop_ids() {
        let mut logits = vec![1.0, 2.0, 3.0, 4.0];
        apply_min_tokens(&mut logits, 5, 0, true, &[3], &[1]);
        assert_eq!(logits, vec![1.0, f32::NEG_INFINITY, 3.0, 4.0]);
    }

    #[test]
    fn logit_bias_adds_and_skips_out_of_range_ids() {
        let mut logits = vec![0.5, -1.0, 2.0];
        apply_logit_bias(&mut logits, &[(1, 3.0), (7, 100.0), (1, 0.5)]);
        assert_eq!(logits, vec![0.5, 2.5, 2.0]);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_once_per_token() {
        let mut logits = vec![2.0, -2.0, 4.0, 0.0, 8.0];
        let mut seen = TokenCounts::default();
        // Token 0 appears three times, token 1 in prompt and output: penalized once.
        apply_repetition_penalty(&mut logits, 2.0, &[0, 1, 0, 42], &[1, 0, 3], &mut seen);
        assert_eq!(logits, vec![1.0, -4.0, 4.0, 0.0, 8.0]);
        assert!(seen.counts.iter().all(|&c| c == 0), "scratch left dirty");
    }

    #[test]
    fn repetition_penalty_below_one_rewards_repeats() {
        let mut logits = vec![2.0, -2.0];
        let mut seen = TokenCounts::default();
        apply_repetition_penalty(&mut logits, 0.5, &[0, 1], &[], &mut seen);
        assert_eq!(logits, vec![4.0, -1.0]);
    }

    #[test]
    fn repetition_penalty_ignores_invalid_values() {
        let mut seen = TokenCounts::default();
        for penalty in [1.0, 0.0, -2.0, f32::NAN, f32::INFINITY] {
            let mut logits = vec![2.0, -2.0];
            apply_repetition_penalty(&mut logits, penalty, &[0, 1], &[], &mut seen);
            assert_eq!(logits, vec![2.0, -2.0], "penalty {penalty}");
        }
    }

    #[test]
    fn presence_and_frequency_arithmetic_is_exact() {
        let mut logits = vec![1.0, 1.0, 1.0, 1.0];
        let mut counts = TokenCounts::default();
        // Counts: token 0 → 3, token 2 → 1, token 3 → 0; prompt tokens do not count.
        apply_presence_frequency(&mut logits, 0.5, 0.25, &[0, 2, 0, 0, 9], &mut counts);
        assert_eq!(logits, vec![1.0 - 0.5 - 0.75, 1.0, 1.0 - 0.5 - 0.25, 1.0]);
        assert!(counts.counts.iter().all(|&c| c == 0), "scratch left dirty");
    }

    #[test]
    fn negative_presence_and_frequency_encourage_repeats() {
        let mut logits = vec![0.0, 0.0];
        let mut counts = TokenCounts::default();
        apply_presence_frequency(&mut logits, -1.0, -0.5, &[1, 1], &mut counts);
        assert_eq!(logits, vec![0.0, 2.0]);
    }
}
