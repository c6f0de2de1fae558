//! The n-gram (prompt-lookup) drafter: proposes the tokens that followed the most recent
//! earlier occurrence of a request's last `n` tokens. Model-free and deterministic: the
//! draft depends only on the request's own tokens and the limits given.
//!
//! Cost: for each `n` tried, one backwards scan over the tokens comparing `n`-token
//! windows, O(len · n) at worst and usually far less (the first token rarely matches).

use super::SpecDecodeConfig;
use crate::request::{token_at, TokenId};

/// Up to `max_tokens` draft tokens for a sequence of `prompt` then `output`: for `n` from
/// `prompt_lookup_max` down to `prompt_lookup_min`, the first (most recent) earlier
/// occurrence of the last `n` tokens wins and the tokens after it are proposed (never
/// past the sequence's end). Empty when nothing matches or `max_tokens` is 0.
pub fn propose(
    prompt: &[TokenId],
    output: &[TokenId],
    cfg: &SpecDecodeConfig,
    max_tokens: usize,
) -> Vec<TokenId> {
    let len = prompt.len() + output.len();
    let at = |pos: usize| token_at(prompt, output, pos);
    if max_tokens == 0 || len < 2 {
        return Vec::new();
    }
    let longest = cfg.prompt_lookup_max.min(len - 1);
    for n in (cfg.prompt_lookup_min.max(1)..=longest).rev() {
        let suffix = len - n;
        // Candidate starts, most recent first; the match must end before the suffix's end
        // so at least one token follows it.
        let found = (0..suffix)
            .rev()
            .find(|&start| (0..n).all(|j| at(start + j) == at(suffix + j)));
        if let Some(start) = found {
            let from = start + n;
            let to = (from + max_tokens).min(len);
            return (from..to).map(at).collect();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: usize, max: usize) -> SpecDecodeConfig {
        SpecDecodeConfig {
            num_speculative_tokens: 8,
            prompt_lookup_min: min,
            prompt_lookup_max: max,
        }
    }

    #[test]
    fn proposes_what_followed_the_most_recent_match() {
        // ... 1 2 [3 4 5] ... 1 2 [6 7] ... 1 2 -> the latest "1 2" is followed by 6 7.
        let prompt = [1, 2, 3, 4, 5, 9, 1, 2, 6, 7, 8];
        let output = [1, 2];
        assert_eq!(propose(&prompt, &output, &cfg(1, 2), 3), [6, 7, 8]);
        // Capped by max_tokens.
        assert_eq!(propose(&prompt, &output, &cfg(1, 2), 1), [6]);
        assert!(propose(&prompt, &output, &cfg(1, 2), 0).is_empty());
    }

    #[test]
    fn longer_ngrams_win_over_more_recent_short_ones() {
        // Last 3 tokens "5 1 2" occur early (followed by 3); "1 2" alone occurs later
        // (followed by 7).
        let tokens = [5, 1, 2, 3, 0, 1, 2, 7, 0, 5, 1, 2];
        assert_eq!(propose(&tokens, &[], &cfg(2, 3), 2), [3, 0]);
        assert_eq!(propose(&tokens, &[], &cfg(2, 2), 2), [7, 0]);
    }

    #[test]
    fn nothing_below_the_minimum_and_never_past_the_end() {
        let tokens = [1, 2, 3, 4, 5, 6];
        assert!(
            propose(&tokens, &[], &cfg(1, 3), 4).is_empty(),
            "no repeats"
        );
        // "4" repeats once; its match ends right before the suffix: one token follows.
        let tokens = [4, 4];
        assert_eq!(propose(&tokens, &[], &cfg(1, 3), 4), [4]);
        let tokens = [7, 8, 7];
        assert!(
            propose(&tokens, &[], &cfg(2, 2), 4).is_empty(),
            "needs a 2-gram"
        );
        assert_eq!(propose(&tokens, &[], &cfg(1, 2), 4), [8, 7]);
        assert!(propose(&[3], &[], &cfg(1, 1), 4).is_empty());
    }

    #[test]
    fn prompt_and_output_are_one_sequence() {
        // The match spans the prompt/output boundary.
        let prompt = [10, 11, 12, 13, 10];
        let output = [11];
        assert_eq!(propose(&prompt, &output, &cfg(2, 2), 4), [12, 13, 10, 11]);
    }
}
