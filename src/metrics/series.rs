//! The metric series behind `Metrics`, grouped by where they are recorded, and their
//! histogram bucket edges (vLLM's, from `vllm/v1/metrics/loggers.py`, so dashboards built
//! for vLLM compare like for like).
//!
//! Invariant: every series is registered in the one registry it was built with, under a
//! name from `metrics.rs`; labelled families whose label values are known up front
//! (finish and failure reasons) are created at zero so they are exported before the
//! first event.

use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

use super::*;
use crate::audit::series::AuditSeries;
use crate::engine::core::StepStats;
use crate::engine::handle::StepObserver;

/// vLLM `vllm:time_to_first_token_seconds` edges.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM `vllm:inter_token_latency_seconds` and `…request_time_per_output_token_seconds`.
pub const TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's e2e, queue, prefill, decode and inference time edges.
pub const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// vLLM `vllm:iteration_tokens_total` edges.
pub const ITERATION_TOKENS_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
/// Engine step wall time (vLLM has no such histogram): 1 ms to 10 s.
pub const STEP_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];
/// Records per conversation-log write: 1 to 1024.
pub const AUDIT_BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Conversation-log write time: 0.1 ms to 10 s.
pub const AUDIT_WRITE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// HTTP time to response head: Prometheus' default edges plus long ones for generation.
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// vLLM's `build_1_2_5_buckets(max)`: 1, 2, 5, 10, 20, 50, … up to `max` (at least `[1]`).
pub fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut edges = Vec::new();
    let mut scale = 1usize;
    'outer: loop {
        for m in [1usize, 2, 5] {
            match m.checked_mul(scale) {
                Some(v) if v <= max.max(1) => edges.push(v as f64),
                _ => break 'outer,
            }
        }
        scale = match scale.checked_mul(10) {
            Some(s) => s,
            None => break,
        };
    }
    edges
}

/// Registers series into one registry.
pub(super) struct Reg<'a>(pub &'a Registry);

impl Reg<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        m: M,
    ) -> Result<M, prometheus::Error> {
        self.0.register(Box::new(m.clone()))?;
        Ok(m)
    }

    pub fn gauge(&self, name: &str, help: &str) -> Result<Gauge, prometheus::Error> {
        self.add(Gauge::new(name, help)?)
    }

    pub fn int_gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.add(IntGauge::new(name, help)?)
    }

    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.add(IntCounter::new(name, help)?)
    }

    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, prometheus::Error> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts)?)
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> Result<HistogramVec, prometheus::Error> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels)?)
    }
}

/// Engine state read from snapshots at scrape time.
pub(super) struct EngineSeries {
    running: IntGauge,
    waiting: IntGauge,
    usage: Gauge,
    blocks_total: IntGauge,
    blocks_used: IntGauge,
    preemptions: IntCounter,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    spec_drafts: IntCounter,
    spec_draft_tokens: IntCounter,
    spec_accepted_tokens: IntCounter,
    experts: IntCounterVec,
}

impl EngineSeries {
    pub fn new(reg: &Reg) -> Result<Self, prometheus::Error> {
        Ok(Self {
            running: reg.int_gauge(NUM_REQUESTS_RUNNING, "Sequences in the running batch.")?,
            waiting: reg.int_gauge(NUM_REQUESTS_WAITING, "Sequences waiting to be scheduled.")?,
            usage: reg.gauge(KV_CACHE_USAGE_PERC, "KV cache usage; 1 means 100 percent.")?,
            blocks_total: reg.int_gauge(KV_CACHE_BLOCKS_TOTAL, "KV cache blocks in the pool.")?,
            blocks_used: reg.int_gauge(KV_CACHE_BLOCKS_USED, "KV cache blocks held.")?,
            preemptions: reg.counter(NUM_PREEMPTIONS_TOTAL, "Sequences preempted (recomputed).")?,
            prefix_queries: reg.counter(
                PREFIX_CACHE_QUERIES_TOTAL,
                "Prompt tokens looked up in the prefix cache.",
            )?,
            prefix_hits: reg.counter(
                PREFIX_CACHE_HITS_TOTAL,
                "Prompt tokens served from the prefix cache.",
            )?,
            spec_drafts: reg.counter(
                SPEC_DECODE_NUM_DRAFTS_TOTAL,
                "Speculative drafts verified (one per request and step with draft tokens).",
            )?,
            spec_draft_tokens: reg.counter(
                SPEC_DECODE_NUM_DRAFT_TOKENS_TOTAL,
                "Speculative draft tokens verified.",
            )?,
            spec_accepted_tokens: reg.counter(
                SPEC_DECODE_NUM_ACCEPTED_TOKENS_TOTAL,
                "Speculative draft tokens accepted.",
            )?,
            experts: reg.counter_vec(
                MOE_EXPERT_TOKENS_TOTAL,
                "Tokens routed to each expert of each MoE layer.",
                &[LABEL_LAYER, LABEL_EXPERT],
            )?,
        })
    }

    pub fn set_gauges(&self, stats: &EngineStats) {
        self.running.set(stats.num_running as i64);
        self.waiting.set(stats.num_waiting as i64);
        self.blocks_total.set(stats.kv_blocks_total as i64);
        self.blocks_used.set(stats.kv_blocks_used as i64);
        let usage = match stats.kv_blocks_total {
            0 => 0.0,
            total => stats.kv_blocks_used as f64 / total as f64,
        };
        self.usage.set(usage);
    }

    /// Advances the counters the engine keeps as running totals to their current values
    /// (the caller holds the totals lock).
    pub fn advance_totals(&self, stats: &EngineStats, experts: Option<&ExpertTokenCounts>) {
        let targets = [
            (&self.preemptions, stats.num_preemptions),
            (&self.prefix_queries, stats.prefix_cache_queries),
            (&self.prefix_hits, stats.prefix_cache_hits),
            (&self.spec_drafts, stats.spec_decode_num_drafts),
            (&self.spec_draft_tokens, stats.spec_decode_num_draft_tokens),
            (
                &self.spec_accepted_tokens,
                stats.spec_decode_num_accepted_tokens,
            ),
        ];
        for (counter, target) in targets {
            counter.inc_by(target.saturating_sub(counter.get()));
        }
        for (layer, expert, tokens) in experts.map(|e| e.snapshot()).unwrap_or_default() {
            let counter = self
                .experts
                .with_label_values(&[layer.to_string(), expert.to_string()]);
            counter.inc_by(tokens.saturating_sub(counter.get()));
        }
    }
}

/// Per-sequence series, recorded on the consumer side.
pub(super) struct RequestSeries {
    pub ttft: Histogram,
    pub itl: Histogram,
    pub tpot: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
    pub prefill: Histogram,
    pub decode: Histogram,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub success: IntCounterVec,
    pub failure: IntCounterVec,
}

impl RequestSeries {
    pub fn new(reg: &Reg) -> Result<Self, prometheus::Error> {
        let lat = |name: &str, help: &str| reg.histogram(name, help, REQUEST_LATENCY_BUCKETS);
        let series = Self {
            ttft: reg.histogram(
                TIME_TO_FIRST_TOKEN_SECONDS,
                "Time to first token in seconds.",
                TTFT_BUCKETS,
            )?,
            itl: reg.histogram(
                INTER_TOKEN_LATENCY_SECONDS,
                "Inter-token latency in seconds.",
                TOKEN_LATENCY_BUCKETS,
            )?,
            tpot: reg.histogram(
                REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS,
                "Mean time per output token of a finished sequence in seconds.",
                TOKEN_LATENCY_BUCKETS,
            )?,
            e2e: lat(
                E2E_REQUEST_LATENCY_SECONDS,
                "End-to-end latency in seconds.",
            )?,
            queue: lat(REQUEST_QUEUE_TIME_SECONDS, "Time waiting to be scheduled.")?,
            prefill: lat(
                REQUEST_PREFILL_TIME_SECONDS,
                "First scheduled to first token.",
            )?,
            decode: lat(REQUEST_DECODE_TIME_SECONDS, "First token to last token.")?,
            prompt_tokens: reg.counter(PROMPT_TOKENS_TOTAL, "Prompt tokens prefilled.")?,
            generation_tokens: reg.counter(GENERATION_TOKENS_TOTAL, "Tokens generated.")?,
            success: reg.counter_vec(
                REQUEST_SUCCESS_TOTAL,
                "Sequences finished normally, by finish reason.",
                &[LABEL_FINISHED_REASON],
            )?,
            failure: reg.counter_vec(
                REQUEST_FAILURE_TOTAL,
                "Generation requests that failed, by reason.",
                &[LABEL_REASON],
            )?,
        };
        for reason in [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::ContentFilter,
        ] {
            series.success.with_label_values(&[reason.as_str()]);
        }
        for reason in FailureReason::ALL {
            series.failure.with_label_values(&[reason.as_str()]);
        }
        Ok(series)
    }
}

/// Token-count histograms, whose buckets depend on the model's context length.
pub(super) struct TokenCountSeries {
    pub prompt: Histogram,
    pub generation: Histogram,
}

impl TokenCountSeries {
    pub fn new(reg: &Reg, max_model_len: usize) -> Result<Self, prometheus::Error> {
        let buckets = buckets_1_2_5(max_model_len);
        Ok(Self {
            prompt: reg.histogram(REQUEST_PROMPT_TOKENS, "Prompt tokens.", &buckets)?,
            generation: reg.histogram(REQUEST_GENERATION_TOKENS, "Generated tokens.", &buckets)?,
        })
    }
}

/// Per-step series, observed on the engine thread (atomics only).
#[derive(Clone)]
pub struct StepSeries {
    iteration_tokens: Histogram,
    duration: Histogram,
}

impl StepSeries {
    pub(super) fn new(reg: &Reg) -> Result<Self, prometheus::Error> {
        Ok(Self {
            iteration_tokens: reg.histogram(
                ITERATION_TOKENS,
                "Tokens run through the model per engine step.",
                ITERATION_TOKENS_BUCKETS,
            )?,
            duration: reg.histogram(
                ENGINE_STEP_DURATION_SECONDS,
                "Engine step wall time in seconds.",
                STEP_DURATION_BUCKETS,
            )?,
        })
    }
}

impl StepObserver for StepSeries {
    fn on_step(&self, stats: &StepStats, duration: Duration) {
        self.iteration_tokens.observe(stats.num_tokens as f64);
        self.duration.observe(duration.as_secs_f64());
    }
}

/// HTTP series by route pattern and status.
pub(super) struct HttpSeries {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
}

impl HttpSeries {
    pub fn new(reg: &Reg) -> Result<Self, prometheus::Error> {
        Ok(Self {
            requests: reg.counter_vec(
                HTTP_REQUESTS_TOTAL,
                "HTTP requests by route and status.",
                &[LABEL_ROUTE, LABEL_STATUS],
            )?,
            duration: reg.histogram_vec(
                HTTP_REQUEST_DURATION_SECONDS,
                "HTTP request to response head in seconds, by route and status.",
                HTTP_DURATION_BUCKETS,
                &[LABEL_ROUTE, LABEL_STATUS],
            )?,
        })
    }
}

impl AuditSeries {
    pub(super) fn new(reg: &Reg) -> Result<Self, prometheus::Error> {
        Ok(Self {
            records: reg.counter(
                AUDIT_RECORDS_TOTAL,
                "Exchanges written to the conversation log.",
            )?,
            lag: reg.gauge(
                AUDIT_WRITE_LAG_SECONDS,
                "Age of the oldest exchange not yet written to the log, in seconds.",
            )?,
            batch: reg.histogram(
                AUDIT_BATCH_RECORDS,
                "Records per conversation-log write (one transaction).",
                AUDIT_BATCH_BUCKETS,
            )?,
            write_seconds: reg.histogram(
                AUDIT_WRITE_DURATION_SECONDS,
                "Wall time of one conversation-log write (one transaction), in seconds.",
                AUDIT_WRITE_BUCKETS,
            )?,
            failures: reg.counter(
                AUDIT_WRITE_FAILURES_TOTAL,
                "Conversation-log writes that failed (each is retried).",
            )?,
            retention_deleted: reg.counter(
                AUDIT_RETENTION_DELETED_TOTAL,
                "Exchanges deleted by the retention job.",
            )?,
            review_queue: reg.int_gauge(
                REVIEW_QUEUE_DEPTH,
                "Exchanges in the human review queue without a verdict.",
            )?,
        })
    }
}
