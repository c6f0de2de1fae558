//! Scheduler limits and the error the scheduler reports for a bad config. Requests are
//! not checked here: they arrive validated (`server::validate`), and the scheduler only
//! asserts what it relies on in debug builds (`Scheduler::add_request`).
//!
//! A valid config guarantees that one request alone can always run to `max_model_len`
//! tokens (`num_blocks * block_size >= max_model_len`), so preemption always makes
//! progress: the oldest running request can never be starved of blocks.

use crate::spec_decode::SpecDecodeConfig;

/// Limits of the continuous-batching scheduler (names as vLLM's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most requests in the running set at once.
    pub max_num_seqs: usize,
    /// Token budget of one step (sum of scheduled tokens over all requests).
    pub max_num_batched_tokens: usize,
    /// Longest sequence (prompt + output) a request may reach.
    pub max_model_len: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks in the pool.
    pub num_blocks: usize,
    pub enable_prefix_caching: bool,
    /// Caps one prefill chunk of a request; 0 = off.
    pub long_prefill_token_threshold: usize,
    /// Speculative decoding with the n-gram drafter (`--speculative-ngram`); `None` = off.
    pub speculative: Option<SpecDecodeConfig>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            max_model_len: 2048,
            block_size: 16,
            num_blocks: 1024,
            enable_prefix_caching: true,
            long_prefill_token_threshold: 0,
            speculative: None,
        }
    }
}

/// Why the scheduler refused a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid scheduler config: `{field}` {message}")]
    InvalidConfig {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: String) -> SchedulerError {
    SchedulerError::InvalidConfig { field, message }
}

impl SchedulerConfig {
    /// Logits rows one step may need: one per running request, plus room for one
    /// request's draft tokens when speculating (the scheduler keeps each step within it).
    pub fn max_logit_rows(&self) -> usize {
        self.max_num_seqs + self.speculative.map_or(0, |s| s.num_speculative_tokens)
    }

    /// Checks every limit; the error names the field, the bound and the value given.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let positive = [
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_model_len", self.max_model_len),
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, "must be >= 1. Given: 0".into()));
            }
        }
        if self.num_blocks >= u32::MAX as usize {
            let msg = format!("must be < {}. Given: {}", u32::MAX, self.num_blocks);
            return Err(invalid("num_blocks", msg));
        }
        let capacity = self.num_blocks.saturating_mul(self.block_size);
        if capacity < self.max_model_len {
            let msg = format!(
                "({}) x `block_size` ({}) = {capacity} tokens of KV cache, fewer than \
                 `max_model_len` ({}): one full-length request could never run. Give more \
                 blocks or lower `max_model_len`",
                self.num_blocks, self.block_size, self.max_model_len
            );
            return Err(invalid("num_blocks", msg));
        }
        if let Some(spec) = &self.speculative {
            spec.validate()
                .map_err(|message| invalid("speculative", message))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(SchedulerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_zero_limits_and_small_pools() {
        let zero_seqs = SchedulerConfig {
            max_num_seqs: 0,
            ..SchedulerConfig::default()
        };
        let err = zero_seqs.validate().expect_err("zero seqs");
        assert!(
            err.to_string().contains("`max_num_seqs` must be >= 1"),
            "{err}"
        );

        let small_pool = SchedulerConfig {
            num_blocks: 10,
            block_size: 16,
            max_model_len: 161,
            ..SchedulerConfig::default()
        };
        let err = small_pool.validate().expect_err("160 < 161");
        let msg = err.to_string();
        assert!(msg.contains("160 tokens") && msg.contains("(161)"), "{msg}");

        let exact = SchedulerConfig {
            max_model_len: 160,
            ..small_pool
        };
        assert_eq!(exact.validate(), Ok(()));
    }
}
