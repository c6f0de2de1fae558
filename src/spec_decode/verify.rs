//! Verification of a draft: which draft tokens a request accepts, and the token it emits
//! after them, from the logits the one forward pass computed at each scheduled position.
//!
//! Row `j` (`0..=d`) holds the logits after the request's last token and the first `j`
//! draft tokens. At each row the request's ordinary sampler (the caller's `sample`: the
//! same processors, temperature, top-k/top-p/min-p and random stream as without
//! speculation, over the history extended by the tokens accepted so far) picks the
//! token `x_j`. Draft token `t_j` is accepted iff `x_j == t_j`; the first mismatch is
//! emitted instead and ends the step; when all `d` are accepted, row `d`'s token is the
//! bonus.
//!
//! Why this is rejection sampling. For a deterministic (point-mass) draft `q = δ(t)`,
//! speculative sampling accepts `t` with probability `min(1, p(t)/q(t)) = p(t)` and on
//! rejection samples from `norm(max(0, p − q))`, which is `p` with `t` removed and
//! renormalised. Drawing `x ~ p` and accepting iff `x = t` does exactly that: acceptance
//! has probability `p(t)`, and given rejection `x` is distributed as `p(· | x ≠ t)`. Coupled
//! this way, the emitted token at every position is the very token the sampler would
//! have drawn there without speculation, from the same random number (one draw per
//! emitted token, as always): greedy output is identical, and so is seeded sampled
//! output; unseeded output is identically distributed. The test of the distribution is
//! `engine::sampler::spec_tests`.

use crate::request::{SampledToken, TokenId};

/// Verifies `drafts` against `rows` (`[d + 1]` logits rows of one request, row `j` after
/// `j` draft tokens). `sample(row, accepted)` samples row `row` given the tokens accepted
/// before it. Returns the emitted tokens: the accepted draft tokens, then one more (the
/// first rejection's replacement or the bonus token); at least one, at most `d + 1`.
/// Rows beyond `drafts.len() + 1` are ignored; with fewer rows, only those are verified.
pub fn verify<'r>(
    rows: impl IntoIterator<Item = &'r mut [f32]>,
    drafts: &[TokenId],
    mut sample: impl FnMut(&mut [f32], &[SampledToken]) -> SampledToken,
) -> Vec<SampledToken> {
    let mut emitted: Vec<SampledToken> = Vec::with_capacity(drafts.len() + 1);
    for (j, row) in rows.into_iter().enumerate().take(drafts.len() + 1) {
        let token = sample(row, &emitted);
        let accepted = drafts.get(j) == Some(&token.token_id);
        emitted.push(token);
        if !accepted {
            break;
        }
    }
    emitted
}

/// How many of `emitted` are accepted draft tokens (all but the last).
pub fn num_accepted(emitted: &[SampledToken]) -> usize {
    emitted.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argmax_sampler(row: &mut [f32], _: &[SampledToken]) -> SampledToken {
        let (id, _) = row
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            });
        SampledToken {
            token_id: id as TokenId,
            logprobs: None,
        }
    }

    fn one_hot_rows(ids: &[usize]) -> Vec<Vec<f32>> {
        ids.iter()
            .map(|&i| {
                let mut row = vec![0.0; 8];
                row[i] = 1.0;
                row
            })
            .collect()
    }

    fn ids(tokens: &[SampledToken]) -> Vec<TokenId> {
        tokens.iter().map(|t| t.token_id).collect()
    }

    #[test]
    fn accepts_the_matching_prefix_then_emits_one_more() {
        let mut rows = one_hot_rows(&[3, 4, 6, 1]);
        let out = verify(
            rows.iter_mut().map(Vec::as_mut_slice),
            &[3, 4, 5],
            argmax_sampler,
        );
        assert_eq!(
            ids(&out),
            [3, 4, 6],
            "third draft rejected, replaced by the model's"
        );
        assert_eq!(num_accepted(&out), 2);
    }

    #[test]
    fn all_accepted_gives_the_bonus_token() {
        let mut rows = one_hot_rows(&[3, 4, 5, 7]);
        let out = verify(
            rows.iter_mut().map(Vec::as_mut_slice),
            &[3, 4, 5],
            argmax_sampler,
        );
        assert_eq!(ids(&out), [3, 4, 5, 7]);
        assert_eq!(num_accepted(&out), 3);
    }

    #[test]
    fn first_rejected_and_no_draft_emit_one() {
        let mut rows = one_hot_rows(&[2, 4]);
        let out = verify(rows.iter_mut().map(Vec::as_mut_slice), &[3], argmax_sampler);
        assert_eq!(ids(&out), [2]);
        let mut rows = one_hot_rows(&[6]);
        let out = verify(rows.iter_mut().map(Vec::as_mut_slice), &[], argmax_sampler);
        assert_eq!(ids(&out), [6]);
    }

    #[test]
    fn each_row_sees_the_tokens_accepted_before_it() {
        let mut rows = one_hot_rows(&[1, 2, 3]);
        let mut seen = Vec::new();
        verify(
            rows.iter_mut().map(Vec::as_mut_slice),
            &[1, 2],
            |row, accepted| {
                seen.push(ids(accepted));
                argmax_sampler(row, accepted)
            },
        );
        assert_eq!(seen, [vec![], vec![1], vec![1, 2]]);
    }
}
