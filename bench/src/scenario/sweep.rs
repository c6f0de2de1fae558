//! Sweep: closed loop at each concurrency level, fixed prompt and output lengths. Level c
//! sends max(c·rounds, min_requests) requests through c workers; every prompt is unique.

use serde::{Deserialize, Serialize};

use super::{closed_loop, Target};
use crate::error::BenchError;
use crate::stats::Summary;
use crate::stream::RequestRecord;

#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub concurrency: Vec<usize>,
    pub prompt_len: usize,
    pub max_tokens: usize,
    pub rounds: usize,
    pub min_requests: usize,
    pub seed: u64,
    /// Keep every request's record in the result (large).
    pub keep_records: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepLevel {
    pub concurrency: usize,
    pub summary: Summary,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<RequestRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepResult {
    pub prompt_len: usize,
    pub max_tokens: usize,
    pub levels: Vec<SweepLevel>,
}

impl SweepLevel {
    /// Single-stream decode rate: output tokens after the first per second of decode,
    /// i.e. 1000 / mean TPOT (ms).
    pub fn decode_tok_per_s(&self) -> Option<f64> {
        self.summary.tpot_ms.map(|d| 1000.0 / d.mean)
    }
}

/// Runs every level in order; `progress` gets each level's figures as it finishes.
pub fn run(
    target: &Target,
    cfg: &SweepConfig,
    mut progress: impl FnMut(&SweepLevel),
) -> Result<SweepResult, BenchError> {
    if cfg.concurrency.is_empty() || cfg.concurrency.contains(&0) {
        return Err(BenchError::Arg(format!(
            "--concurrency needs levels >= 1. Given: {:?}",
            cfg.concurrency
        )));
    }
    target.warm_up()?;
    let mut levels = Vec::with_capacity(cfg.concurrency.len());
    for (li, &c) in cfg.concurrency.iter().enumerate() {
        let n = (c * cfg.rounds).max(cfg.min_requests).max(1);
        let base = cfg.seed.wrapping_add((li as u64) << 32);
        let requests = (0..n)
            .map(|i| target.completion(base.wrapping_add(i as u64), cfg.prompt_len, cfg.max_tokens))
            .collect::<Result<Vec<_>, _>>()?;
        let (records, wall) = closed_loop(target, &requests, c);
        let level = SweepLevel {
            concurrency: c,
            summary: Summary::of(&records, wall),
            records: if cfg.keep_records {
                records
            } else {
                Vec::new()
            },
        };
        progress(&level);
        levels.push(level);
    }
    Ok(SweepResult {
        prompt_len: cfg.prompt_len,
        max_tokens: cfg.max_tokens,
        levels,
    })
}
