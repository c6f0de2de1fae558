//! Prometheus metrics: every metric name is a constant here (the Grafana dashboard and
//! alerts use only these), one registry per server, and the helpers that record into it.
//!
//! Where each value comes from:
//! - engine gauges and running totals (requests running/waiting, KV blocks, preemptions,
//!   prefix-cache queries/hits, speculative drafts/draft tokens/accepted tokens) are read from `EngineGauges::snapshot()` at scrape time;
//!   totals are advanced to the snapshot's value under one lock, so concurrent scrapes
//!   never count twice; MoE routed-token counters likewise from `ExpertTokenCounts`;
//! - per-step histograms (tokens per step, step duration) are observed on the engine
//!   thread through [`StepSeries`] (lock-free atomics, once per step, never per token);
//! - per-request series (TTFT, inter-token latency, phases, token counts, outcomes) are
//!   observed on the consumer side from `TokenEvent`s, off the engine thread;
//! - HTTP series by route pattern and status in the server's middleware.
//!
//! Invariants: every series carries the `model_name` label (a registry-wide label); each
//! successfully finished sequence is observed exactly once in every request histogram, so
//! their `_count`s equal `tessera_request_success_total` summed over reasons. With
//! [`MetricsCompat::Vllm`] the vLLM names are rendered as copies of the same families
//! (see `metrics/compat.rs`), so the two can never disagree.

mod compat;
mod series;

pub use crate::audit::series::AuditSeries;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus::{Encoder, Gauge, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::engine::handle::EngineStats;
use crate::engine::stream::TokenEvent;
use crate::model::moe::ExpertTokenCounts;
use crate::request::FinishReason;
pub use compat::{MetricsCompat, VLLM_NAMES};
use series::{EngineSeries, HttpSeries, Reg, RequestSeries, TokenCountSeries};
pub use series::{StepSeries, HTTP_DURATION_BUCKETS, STEP_DURATION_BUCKETS};

// ---- histograms --------------------------------------------------------------------
/// Arrival → first token produced, per sequence.
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "tessera_time_to_first_token_seconds";
/// Between two consecutive tokens of a sequence, per token after the first.
pub const INTER_TOKEN_LATENCY_SECONDS: &str = "tessera_inter_token_latency_seconds";
/// Decode time / (generated tokens - 1), per finished sequence with ≥ 2 tokens.
pub const REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS: &str =
    "tessera_request_time_per_output_token_seconds";
/// Arrival → finish, per finished sequence.
pub const E2E_REQUEST_LATENCY_SECONDS: &str = "tessera_e2e_request_latency_seconds";
/// Arrival → first scheduled (waiting), per finished sequence.
pub const REQUEST_QUEUE_TIME_SECONDS: &str = "tessera_request_queue_time_seconds";
/// First scheduled → first token, per finished sequence.
pub const REQUEST_PREFILL_TIME_SECONDS: &str = "tessera_request_prefill_time_seconds";
/// First token → last token, per finished sequence.
pub const REQUEST_DECODE_TIME_SECONDS: &str = "tessera_request_decode_time_seconds";
/// Prompt tokens, per finished sequence.
pub const REQUEST_PROMPT_TOKENS: &str = "tessera_request_prompt_tokens";
/// Generated tokens, per finished sequence.
pub const REQUEST_GENERATION_TOKENS: &str = "tessera_request_generation_tokens";
/// Tokens run through the model in one engine step.
pub const ITERATION_TOKENS: &str = "tessera_iteration_tokens";
/// Wall time of one engine step (schedule → execute → sample → update → emit).
pub const ENGINE_STEP_DURATION_SECONDS: &str = "tessera_engine_step_duration_seconds";
/// HTTP request → response head, by `route` and `status`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "tessera_http_request_duration_seconds";

// ---- gauges ------------------------------------------------------------------------
/// Sequences in the running batch.
pub const NUM_REQUESTS_RUNNING: &str = "tessera_num_requests_running";
/// Sequences waiting to be scheduled (including preempted ones).
pub const NUM_REQUESTS_WAITING: &str = "tessera_num_requests_waiting";
/// KV cache blocks in use / blocks in the pool (0-1).
pub const KV_CACHE_USAGE_PERC: &str = "tessera_kv_cache_usage_perc";
/// KV cache blocks in the pool.
pub const KV_CACHE_BLOCKS_TOTAL: &str = "tessera_kv_cache_blocks_total";
/// KV cache blocks held by requests.
pub const KV_CACHE_BLOCKS_USED: &str = "tessera_kv_cache_blocks_used";
/// Seconds the model took to load (set once ready).
pub const MODEL_LOAD_SECONDS: &str = "tessera_model_load_seconds";
/// Always 1; the labels say what runs (`version`, `model`, `dtype`, `backend`).
pub const BUILD_INFO: &str = "tessera_build_info";

// ---- counters ----------------------------------------------------------------------
/// Prompt tokens of sequences that got their first token.
pub const PROMPT_TOKENS_TOTAL: &str = "tessera_prompt_tokens_total";
/// Generated tokens delivered.
pub const GENERATION_TOKENS_TOTAL: &str = "tessera_generation_tokens_total";
/// Prompt tokens looked up in the prefix cache.
pub const PREFIX_CACHE_QUERIES_TOTAL: &str = "tessera_prefix_cache_queries_total";
/// Prompt tokens served from the prefix cache.
pub const PREFIX_CACHE_HITS_TOTAL: &str = "tessera_prefix_cache_hits_total";
/// Sequences that lost their KV blocks and were recomputed.
pub const NUM_PREEMPTIONS_TOTAL: &str = "tessera_num_preemptions_total";
/// Speculative decoding (`--speculative-ngram`): drafts verified (one per request and
/// step that scheduled draft tokens).
pub const SPEC_DECODE_NUM_DRAFTS_TOTAL: &str = "tessera_spec_decode_num_drafts_total";
/// Speculative decoding: draft tokens verified.
pub const SPEC_DECODE_NUM_DRAFT_TOKENS_TOTAL: &str = "tessera_spec_decode_num_draft_tokens_total";
/// Speculative decoding: draft tokens accepted (acceptance rate = this / draft tokens).
pub const SPEC_DECODE_NUM_ACCEPTED_TOKENS_TOTAL: &str =
    "tessera_spec_decode_num_accepted_tokens_total";
/// Sequences finished normally, by `finished_reason` (`stop`, `length`, `content_filter`).
pub const REQUEST_SUCCESS_TOTAL: &str = "tessera_request_success_total";
/// Generation requests that failed, by `reason` (see [`FailureReason`]).
pub const REQUEST_FAILURE_TOTAL: &str = "tessera_request_failure_total";
/// HTTP requests by `route` (the matched pattern) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "tessera_http_requests_total";
/// Tokens routed to each expert of each MoE layer, by `layer` and `expert`.
pub const MOE_EXPERT_TOKENS_TOTAL: &str = "tessera_moe_expert_tokens_total";
/// Moderation rule matches, by `stage` (input, output), `category` (the policy's) and
/// `action` (block, mask, flag).
pub const MODERATION_HITS_TOTAL: &str = "tessera_moderation_hits_total";

// ---- the conversation log and the review queue ---------------------------------------
/// Exchanges written to the conversation log (committed).
pub const AUDIT_RECORDS_TOTAL: &str = "tessera_audit_records_total";
/// Age of the oldest exchange not yet written to the log (0 when none waits).
pub const AUDIT_WRITE_LAG_SECONDS: &str = "tessera_audit_write_lag_seconds";
/// Records per log write (one transaction), per batch.
pub const AUDIT_BATCH_RECORDS: &str = "tessera_audit_batch_records";
/// Wall time of one log write (one transaction), per batch.
pub const AUDIT_WRITE_DURATION_SECONDS: &str = "tessera_audit_write_duration_seconds";
/// Log writes that failed (each is retried).
pub const AUDIT_WRITE_FAILURES_TOTAL: &str = "tessera_audit_write_failures_total";
/// Exchanges deleted by the retention job (older than --audit-retention-days).
pub const AUDIT_RETENTION_DELETED_TOTAL: &str = "tessera_audit_retention_deleted_total";
/// Exchanges in the human review queue without a verdict.
pub const REVIEW_QUEUE_DEPTH: &str = "tessera_review_queue_depth";

/// Every metric family tessera exports (the dashboard test checks queries against it).
pub const ALL_NAMES: &[&str] = &[
    TIME_TO_FIRST_TOKEN_SECONDS,
    INTER_TOKEN_LATENCY_SECONDS,
    REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS,
    E2E_REQUEST_LATENCY_SECONDS,
    REQUEST_QUEUE_TIME_SECONDS,
    REQUEST_PREFILL_TIME_SECONDS,
    REQUEST_DECODE_TIME_SECONDS,
    REQUEST_PROMPT_TOKENS,
    REQUEST_GENERATION_TOKENS,
    ITERATION_TOKENS,
    ENGINE_STEP_DURATION_SECONDS,
    HTTP_REQUEST_DURATION_SECONDS,
    NUM_REQUESTS_RUNNING,
    NUM_REQUESTS_WAITING,
    KV_CACHE_USAGE_PERC,
    KV_CACHE_BLOCKS_TOTAL,
    KV_CACHE_BLOCKS_USED,
    MODEL_LOAD_SECONDS,
    BUILD_INFO,
    PROMPT_TOKENS_TOTAL,
    GENERATION_TOKENS_TOTAL,
    PREFIX_CACHE_QUERIES_TOTAL,
    PREFIX_CACHE_HITS_TOTAL,
    NUM_PREEMPTIONS_TOTAL,
    SPEC_DECODE_NUM_DRAFTS_TOTAL,
    SPEC_DECODE_NUM_DRAFT_TOKENS_TOTAL,
    SPEC_DECODE_NUM_ACCEPTED_TOKENS_TOTAL,
    REQUEST_SUCCESS_TOTAL,
    REQUEST_FAILURE_TOTAL,
    HTTP_REQUESTS_TOTAL,
    MOE_EXPERT_TOKENS_TOTAL,
    MODERATION_HITS_TOTAL,
    AUDIT_RECORDS_TOTAL,
    AUDIT_WRITE_LAG_SECONDS,
    AUDIT_BATCH_RECORDS,
    AUDIT_WRITE_DURATION_SECONDS,
    AUDIT_WRITE_FAILURES_TOTAL,
    AUDIT_RETENTION_DELETED_TOTAL,
    REVIEW_QUEUE_DEPTH,
];

// ---- labels ------------------------------------------------------------------------
/// On every series: the served model name.
pub const LABEL_MODEL_NAME: &str = "model_name";
/// Of [`REQUEST_SUCCESS_TOTAL`].
pub const LABEL_FINISHED_REASON: &str = "finished_reason";
/// Of [`REQUEST_FAILURE_TOTAL`].
pub const LABEL_REASON: &str = "reason";
/// Of the HTTP series: the matched route pattern (`/v1/models/{model}`), or `unmatched`.
pub const LABEL_ROUTE: &str = "route";
/// Of the HTTP series: the response status code.
pub const LABEL_STATUS: &str = "status";
/// Of [`MOE_EXPERT_TOKENS_TOTAL`].
pub const LABEL_LAYER: &str = "layer";
pub const LABEL_EXPERT: &str = "expert";
/// Of [`MODERATION_HITS_TOTAL`].
pub const LABEL_STAGE: &str = "stage";
pub const LABEL_CATEGORY: &str = "category";
pub const LABEL_ACTION: &str = "action";
/// Of [`BUILD_INFO`].
pub const LABEL_VERSION: &str = "version";
pub const LABEL_MODEL: &str = "model";
pub const LABEL_DTYPE: &str = "dtype";
pub const LABEL_BACKEND: &str = "backend";

/// The `route` of requests no route matched.
pub const ROUTE_UNMATCHED: &str = "unmatched";

/// Content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Why a generation request failed (label values of [`REQUEST_FAILURE_TOTAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Refused as invalid (any 4xx but 429: bad field, unknown model, too long, no key).
    Validation,
    /// Refused because the server was at capacity (429).
    Rejected429,
    /// The client went away before its response was complete.
    AbortedClient,
    /// The engine failed (5xx other than 503).
    EngineError,
    /// The model was loading or the server shutting down (503).
    Unavailable,
}

impl FailureReason {
    pub const ALL: [FailureReason; 5] = [
        FailureReason::Validation,
        FailureReason::Rejected429,
        FailureReason::AbortedClient,
        FailureReason::EngineError,
        FailureReason::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Validation => "validation",
            FailureReason::Rejected429 => "rejected_429",
            FailureReason::AbortedClient => "aborted_client",
            FailureReason::EngineError => "engine_error",
            FailureReason::Unavailable => "unavailable",
        }
    }

    /// The reason an error response with `status` (≥ 400) stands for.
    pub fn from_status(status: u16) -> Self {
        match status {
            429 => FailureReason::Rejected429,
            503 => FailureReason::Unavailable,
            500.. => FailureReason::EngineError,
            _ => FailureReason::Validation,
        }
    }
}

/// What the loaded model is, for the series set once the engine is ready.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The model file's name (`model` of [`BUILD_INFO`]).
    pub model: String,
    /// Weight type holding most parameters, e.g. `Q4_1`.
    pub dtype: String,
    /// Where the forward pass runs (`cpu`).
    pub backend: String,
    pub max_model_len: usize,
    /// Seconds the model took to load, when this process loaded it.
    pub load_seconds: Option<f64>,
}

/// One server's metrics.
pub struct Metrics {
    registry: Registry,
    compat: MetricsCompat,
    engine: EngineSeries,
    /// Running totals advanced from snapshots (one lock so scrapes never count twice).
    totals: Mutex<()>,
    request: RequestSeries,
    token_counts: OnceLock<TokenCountSeries>,
    step: StepSeries,
    http: HttpSeries,
    build_info: IntGaugeVec,
    load_seconds: Gauge,
    moderation_hits: IntCounterVec,
    audit: AuditSeries,
}

impl Metrics {
    /// Metrics of a server for `model_name` (the `model_name` label of every series).
    pub fn new(model_name: &str, compat: MetricsCompat) -> Result<Self, prometheus::Error> {
        let labels = HashMap::from([(LABEL_MODEL_NAME.to_string(), model_name.to_string())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let reg = Reg(&registry);
        let build_info = IntGaugeVec::new(
            Opts::new(
                BUILD_INFO,
                "Always 1; labels: version, model, dtype, backend.",
            ),
            &[LABEL_VERSION, LABEL_MODEL, LABEL_DTYPE, LABEL_BACKEND],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        Ok(Self {
            compat,
            engine: EngineSeries::new(&reg)?,
            totals: Mutex::new(()),
            request: RequestSeries::new(&reg)?,
            token_counts: OnceLock::new(),
            step: StepSeries::new(&reg)?,
            http: HttpSeries::new(&reg)?,
            build_info,
            load_seconds: reg.gauge(MODEL_LOAD_SECONDS, "Seconds the model took to load.")?,
            moderation_hits: reg.counter_vec(
                MODERATION_HITS_TOTAL,
                "Moderation rule matches, by stage, category and action.",
                &[LABEL_STAGE, LABEL_CATEGORY, LABEL_ACTION],
            )?,
            audit: AuditSeries::new(&reg)?,
            registry,
        })
    }

    /// Sets the series that depend on the loaded model: build info, load time and the
    /// token-count histograms (1-2-5 buckets up to `max_model_len`, as vLLM). Only the
    /// first call registers; later calls are ignored.
    pub fn set_model(&self, info: &ModelInfo) -> Result<(), prometheus::Error> {
        if self.token_counts.get().is_some() {
            return Ok(());
        }
        let series = TokenCountSeries::new(&Reg(&self.registry), info.max_model_len)?;
        if self.token_counts.set(series).is_err() {
            return Ok(());
        }
        self.build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &info.model,
                &info.dtype,
                &info.backend,
            ])
            .set(1);
        if let Some(seconds) = info.load_seconds {
            self.load_seconds.set(seconds);
        }
        Ok(())
    }

    /// The per-step series, for the engine thread's step observer.
    pub fn step_series(&self) -> StepSeries {
        self.step.clone()
    }

    /// Records one token event of a sequence (consumer side): TTFT with the first token,
    /// inter-token latency after, token counters, and on a normal finish its success and
    /// request histograms.
    pub fn observe_event(&self, ev: &TokenEvent) {
        let r = &self.request;
        if let Some(ttft) = ev.timing.time_to_first_token {
            r.ttft.observe(ttft.as_secs_f64());
            r.prompt_tokens.inc_by(ev.usage.prompt_tokens as u64);
        }
        if let Some(itl) = ev.timing.inter_token_latency {
            r.itl.observe(itl.as_secs_f64());
        }
        r.generation_tokens.inc_by(ev.token_ids.len() as u64);
        let (Some(reason), Some(t)) = (ev.finish_reason, ev.timing.request.as_ref()) else {
            return;
        };
        if reason == FinishReason::Abort {
            return;
        }
        r.success.with_label_values(&[reason.as_str()]).inc();
        r.e2e.observe(t.e2e.as_secs_f64());
        r.queue.observe(t.queue.as_secs_f64());
        r.prefill.observe(t.prefill.as_secs_f64());
        r.decode.observe(t.decode.as_secs_f64());
        if let Some(tpot) = t.time_per_output_token {
            r.tpot.observe(tpot.as_secs_f64());
        }
        if let Some(counts) = self.token_counts.get() {
            counts.prompt.observe(ev.usage.prompt_tokens as f64);
            counts.generation.observe(ev.usage.completion_tokens as f64);
        }
    }

    /// The moderation hit counter (labels: stage, category, action), for the policy's
    /// hit sink.
    pub fn moderation_hits(&self) -> IntCounterVec {
        self.moderation_hits.clone()
    }

    /// The conversation log's series, for its writer and retention job.
    pub fn audit(&self) -> AuditSeries {
        self.audit.clone()
    }

    /// Counts one failed generation request.
    pub fn record_failure(&self, reason: FailureReason) {
        self.request
            .failure
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Counts one HTTP request answered with `status` on `route` after `elapsed`.
    pub fn record_http(&self, route: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [route, status.as_str()];
        self.http.requests.with_label_values(&labels).inc();
        self.http
            .duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric, engine gauges as of `stats`, MoE
    /// routing counters as of `experts`.
    pub fn render(
        &self,
        stats: &EngineStats,
        experts: Option<&ExpertTokenCounts>,
    ) -> Result<String, prometheus::Error> {
        self.engine.set_gauges(stats);
        if let Ok(_guard) = self.totals.lock() {
            self.engine.advance_totals(stats, experts);
        }
        let mut families = self.registry.gather();
        compat::append(self.compat, &mut families);
        let mut buf = Vec::new();
        TextEncoder::new().encode(&families, &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
