//! Speculative decoding with a model-free drafter (vLLM's `--speculative-config
//! '{"method": "ngram", ...}'`, llama.cpp's prompt lookup): `--speculative-ngram`.
//!
//! - `ngram`: the drafter. For a request in decode it looks up the most recent earlier
//!   occurrence of its last `n` tokens (prompt + output; `n` from `prompt_lookup_max`
//!   down to `prompt_lookup_min`) and proposes the tokens that followed, up to
//!   `num_speculative_tokens`. The scheduler calls it and schedules the request's last
//!   token plus the draft in one step (`SchedulerOutput::scheduled_spec_decode_tokens`);
//!   the runner computes logits at every one of those positions in the step's one forward.
//! - `verify`: verification of a draft against those logits (rejection sampling for a
//!   point-mass draft, coupled with the ordinary sampler so the emitted tokens are the
//!   ones decoding without speculation would emit).
//!
//! Which requests speculate ([`speculates`]): every unconstrained request. A request under
//! structured output (a grammar / tool-call guide) does not: its mask at a draft position
//! would need the matcher advanced over the draft first. Logprobs need no exception: each
//! emitted token is sampled from its own position's row exactly as without speculation.
//!
//! Invariant (kept by scheduler and engine together): rejected draft tokens leave no
//! state behind. They never enter a request's tokens, `num_computed_tokens` counts only
//! the accepted ones, so their K/V slots are overwritten before they ever count as
//! computed and the prefix cache never hashes a block holding them.

pub mod ngram;
pub mod verify;

use crate::request::SamplingParams;

/// The speculative decoding settings (flag names as vLLM's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecDecodeConfig {
    /// Most draft tokens proposed per request and step (`--num-speculative-tokens`).
    pub num_speculative_tokens: usize,
    /// Shortest n-gram matched (`--prompt-lookup-min`).
    pub prompt_lookup_min: usize,
    /// Longest n-gram matched, tried first (`--prompt-lookup-max`).
    pub prompt_lookup_max: usize,
}

impl Default for SpecDecodeConfig {
    fn default() -> Self {
        Self {
            num_speculative_tokens: 4,
            // 2-grams match often in ordinary prose and their drafts mostly fail (chat:
            // ~14 % accepted, bench/NOTES.md #17), so the default asks for 3 tokens.
            prompt_lookup_min: 3,
            prompt_lookup_max: 5,
        }
    }
}

/// Most draft tokens per request and step the engine accepts as a setting.
pub const MAX_SPECULATIVE_TOKENS: usize = 32;

impl SpecDecodeConfig {
    /// Checks the settings; the message names the flag, the rule and the value given.
    pub fn validate(&self) -> Result<(), String> {
        let k = self.num_speculative_tokens;
        if !(1..=MAX_SPECULATIVE_TOKENS).contains(&k) {
            return Err(format!(
                "--num-speculative-tokens must be in [1, {MAX_SPECULATIVE_TOKENS}]. Given: {k}"
            ));
        }
        if self.prompt_lookup_min == 0 {
            return Err("--prompt-lookup-min must be >= 1. Given: 0".into());
        }
        if self.prompt_lookup_max < self.prompt_lookup_min {
            return Err(format!(
                "--prompt-lookup-max must be >= --prompt-lookup-min ({}). Given: {}",
                self.prompt_lookup_min, self.prompt_lookup_max
            ));
        }
        Ok(())
    }
}

/// Speculation counters since start (vLLM's `spec_decode_num_*` metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecDecodeStats {
    /// Drafts verified: one per request and step that scheduled draft tokens.
    pub num_drafts: u64,
    /// Draft tokens verified.
    pub num_draft_tokens: u64,
    /// Draft tokens accepted (emitted as they were proposed).
    pub num_accepted_tokens: u64,
}

impl SpecDecodeStats {
    /// Counts one verified draft of `num_draft_tokens` of which `num_accepted` held.
    pub fn record(&mut self, num_draft_tokens: usize, num_accepted: usize) {
        self.num_drafts += 1;
        self.num_draft_tokens += num_draft_tokens as u64;
        self.num_accepted_tokens += num_accepted as u64;
    }
}

/// Whether a request with `params` may be given draft tokens: every request but those
/// under structured output (see the module doc).
pub fn speculates(params: &SamplingParams) -> bool {
    params.guide.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_with_the_flag_named() {
        assert_eq!(SpecDecodeConfig::default().validate(), Ok(()));
        let zero = SpecDecodeConfig {
            num_speculative_tokens: 0,
            ..SpecDecodeConfig::default()
        };
        assert!(zero
            .validate()
            .unwrap_err()
            .contains("--num-speculative-tokens must be in [1, 32]. Given: 0"));
        let crossed = SpecDecodeConfig {
            prompt_lookup_min: 5,
            prompt_lookup_max: 3,
            ..SpecDecodeConfig::default()
        };
        let msg = crossed.validate().unwrap_err();
        assert!(
            msg.contains("--prompt-lookup-max") && msg.contains("Given: 3"),
            "{msg}"
        );
        let min0 = SpecDecodeConfig {
            prompt_lookup_min: 0,
            ..SpecDecodeConfig::default()
        };
        assert!(min0.validate().unwrap_err().contains("--prompt-lookup-min"));
    }
}
