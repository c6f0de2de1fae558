//! `--metrics-compat vllm`: the same families again under vLLM's names, so dashboards
//! built for vLLM and the Kubernetes Gateway API inference extension (which read
//! `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, …) work unchanged.
//!
//! Invariant: a vLLM family is a renamed copy of a tessera family taken from the same
//! gather, so both always show the same values; nothing extra is recorded on any path.

use prometheus::proto::MetricFamily;

use super::*;

/// Which extra names `/metrics` exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MetricsCompat {
    /// tessera's names only.
    #[default]
    None,
    /// tessera's names plus vLLM's.
    Vllm,
}

impl std::str::FromStr for MetricsCompat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(MetricsCompat::None),
            "vllm" => Ok(MetricsCompat::Vllm),
            other => Err(format!(
                "--metrics-compat must be `vllm` or `none`. Given: `{other}`"
            )),
        }
    }
}

/// `(tessera name, vLLM name)`: each tessera family exported again under the vLLM name
/// (vLLM v1 names; the deprecated `gpu_cache_usage_perc` and `time_per_output_token`
/// too, which older dashboards and gateways still read).
pub const VLLM_NAMES: &[(&str, &str)] = &[
    (NUM_REQUESTS_RUNNING, "vllm:num_requests_running"),
    (NUM_REQUESTS_WAITING, "vllm:num_requests_waiting"),
    (KV_CACHE_USAGE_PERC, "vllm:kv_cache_usage_perc"),
    (KV_CACHE_USAGE_PERC, "vllm:gpu_cache_usage_perc"),
    (
        PREFIX_CACHE_QUERIES_TOTAL,
        "vllm:prefix_cache_queries_total",
    ),
    (PREFIX_CACHE_HITS_TOTAL, "vllm:prefix_cache_hits_total"),
    (NUM_PREEMPTIONS_TOTAL, "vllm:num_preemptions_total"),
    (
        SPEC_DECODE_NUM_DRAFTS_TOTAL,
        "vllm:spec_decode_num_drafts_total",
    ),
    (
        SPEC_DECODE_NUM_DRAFT_TOKENS_TOTAL,
        "vllm:spec_decode_num_draft_tokens_total",
    ),
    (
        SPEC_DECODE_NUM_ACCEPTED_TOKENS_TOTAL,
        "vllm:spec_decode_num_accepted_tokens_total",
    ),
    (PROMPT_TOKENS_TOTAL, "vllm:prompt_tokens_total"),
    (GENERATION_TOKENS_TOTAL, "vllm:generation_tokens_total"),
    (REQUEST_SUCCESS_TOTAL, "vllm:request_success_total"),
    (REQUEST_PROMPT_TOKENS, "vllm:request_prompt_tokens"),
    (REQUEST_GENERATION_TOKENS, "vllm:request_generation_tokens"),
    (ITERATION_TOKENS, "vllm:iteration_tokens_total"),
    (
        TIME_TO_FIRST_TOKEN_SECONDS,
        "vllm:time_to_first_token_seconds",
    ),
    (
        INTER_TOKEN_LATENCY_SECONDS,
        "vllm:inter_token_latency_seconds",
    ),
    (
        INTER_TOKEN_LATENCY_SECONDS,
        "vllm:time_per_output_token_seconds",
    ),
    (
        REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS,
        "vllm:request_time_per_output_token_seconds",
    ),
    (
        E2E_REQUEST_LATENCY_SECONDS,
        "vllm:e2e_request_latency_seconds",
    ),
    (
        REQUEST_QUEUE_TIME_SECONDS,
        "vllm:request_queue_time_seconds",
    ),
    (
        REQUEST_PREFILL_TIME_SECONDS,
        "vllm:request_prefill_time_seconds",
    ),
    (
        REQUEST_DECODE_TIME_SECONDS,
        "vllm:request_decode_time_seconds",
    ),
];

/// Appends the vLLM copies of `families` when `compat` asks for them.
pub(super) fn append(compat: MetricsCompat, families: &mut Vec<MetricFamily>) {
    if compat != MetricsCompat::Vllm {
        return;
    }
    let copies: Vec<MetricFamily> = VLLM_NAMES
        .iter()
        .filter_map(|&(ours, theirs)| {
            let family = families.iter().find(|f| f.name() == ours)?;
            let mut copy = family.clone();
            copy.set_name(theirs.to_string());
            Some(copy)
        })
        .collect();
    families.extend(copies);
}
