//! Prefill: TTFT for each prompt length at concurrency 1. Each length sends `repeats`
//! requests with unique prompts (no prefix-cache hits) and a short output.

use serde::{Deserialize, Serialize};

use super::{closed_loop, Target};
use crate::error::BenchError;
use crate::stats::Summary;

#[derive(Debug, Clone)]
pub struct PrefillConfig {
    pub lengths: Vec<usize>,
    pub repeats: usize,
    pub max_tokens: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrefillPoint {
    pub prompt_len: usize,
    pub summary: Summary,
    /// prompt_len / TTFT p50: prompt tokens processed per second.
    pub prefill_tok_per_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrefillResult {
    pub max_tokens: usize,
    pub repeats: usize,
    pub points: Vec<PrefillPoint>,
}

pub fn run(
    target: &Target,
    cfg: &PrefillConfig,
    mut progress: impl FnMut(&PrefillPoint),
) -> Result<PrefillResult, BenchError> {
    if cfg.lengths.is_empty() || cfg.lengths.contains(&0) || cfg.repeats == 0 {
        return Err(BenchError::Arg(format!(
            "--lengths needs lengths >= 1 and --repeats >= 1. Given: {:?}, {}",
            cfg.lengths, cfg.repeats
        )));
    }
    target.warm_up()?;
    let mut points = Vec::with_capacity(cfg.lengths.len());
    for (li, &len) in cfg.lengths.iter().enumerate() {
        let base = cfg.seed.wrapping_add(((li as u64) + 1) << 40);
        let requests = (0..cfg.repeats)
            .map(|i| target.completion(base.wrapping_add(i as u64), len, cfg.max_tokens))
            .collect::<Result<Vec<_>, _>>()?;
        let (records, wall) = closed_loop(target, &requests, 1);
        let summary = Summary::of(&records, wall);
        let prefill_tok_per_s = summary.ttft_ms.map(|d| len as f64 / (d.p50 / 1e3));
        let point = PrefillPoint {
            prompt_len: len,
            summary,
            prefill_tok_per_s,
        };
        progress(&point);
        points.push(point);
    }
    Ok(PrefillResult {
        max_tokens: cfg.max_tokens,
        repeats: cfg.repeats,
        points,
    })
}
