//! Prometheus metrics: every metric name is a constant here (dashboards and alerts use
//! only these), one registry per server, and the helpers that record into it.
//!
//! Engine gauges are read from `EngineGauges::snapshot()` at scrape time, so a scrape
//! always shows the engine as of its last step. Counters that the engine keeps as running
//! totals (preemptions, prefix-cache queries and hits) are advanced to the snapshot's
//! value under one lock, so concurrent scrapes never count twice.
//! Names follow vLLM's (`vllm:num_requests_running` → `tessera:num_requests_running`).

use std::sync::Mutex;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::engine::handle::EngineStats;

/// Sequences in the running batch.
pub const NUM_REQUESTS_RUNNING: &str = "tessera:num_requests_running";
/// Sequences waiting to be scheduled (including preempted ones).
pub const NUM_REQUESTS_WAITING: &str = "tessera:num_requests_waiting";
/// KV cache blocks in the pool.
pub const KV_CACHE_BLOCKS_TOTAL: &str = "tessera:kv_cache_blocks_total";
/// KV cache blocks held by requests.
pub const KV_CACHE_BLOCKS_USED: &str = "tessera:kv_cache_blocks_used";
/// Sequences that lost their KV blocks and were recomputed.
pub const NUM_PREEMPTIONS_TOTAL: &str = "tessera:num_preemptions_total";
/// Prompt tokens looked up in the prefix cache.
pub const PREFIX_CACHE_QUERIES_TOTAL: &str = "tessera:prefix_cache_queries_total";
/// Prompt tokens served from the prefix cache.
pub const PREFIX_CACHE_HITS_TOTAL: &str = "tessera:prefix_cache_hits_total";
/// Finished sequences by `finished_reason` (`stop`, `length`, `abort`).
pub const REQUEST_SUCCESS_TOTAL: &str = "tessera:request_success_total";
/// HTTP requests refused before reaching the engine, by `reason` (an error code such as
/// `queue_full`, `shutting_down`, `invalid_api_key`).
pub const REQUESTS_REJECTED_TOTAL: &str = "tessera:requests_rejected_total";

/// The label of [`REQUEST_SUCCESS_TOTAL`].
pub const LABEL_FINISHED_REASON: &str = "finished_reason";
/// The label of [`REQUESTS_REJECTED_TOTAL`].
pub const LABEL_REASON: &str = "reason";

/// One server's metrics.
pub struct Metrics {
    registry: Registry,
    running: IntGauge,
    waiting: IntGauge,
    blocks_total: IntGauge,
    blocks_used: IntGauge,
    /// preemptions, prefix-cache queries, prefix-cache hits (advanced from snapshots).
    engine_totals: Mutex<[IntCounter; 3]>,
    finished: IntCounterVec,
    rejected: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        Ok(Self {
            running: gauge(NUM_REQUESTS_RUNNING, "Sequences in the running batch.")?,
            waiting: gauge(NUM_REQUESTS_WAITING, "Sequences waiting to be scheduled.")?,
            blocks_total: gauge(KV_CACHE_BLOCKS_TOTAL, "KV cache blocks in the pool.")?,
            blocks_used: gauge(KV_CACHE_BLOCKS_USED, "KV cache blocks held by requests.")?,
            engine_totals: Mutex::new([
                counter(NUM_PREEMPTIONS_TOTAL, "Sequences preempted (recomputed).")?,
                counter(
                    PREFIX_CACHE_QUERIES_TOTAL,
                    "Prompt tokens looked up in the prefix cache.",
                )?,
                counter(
                    PREFIX_CACHE_HITS_TOTAL,
                    "Prompt tokens served from the prefix cache.",
                )?,
            ]),
            finished: counter_vec(
                REQUEST_SUCCESS_TOTAL,
                "Finished sequences by finish reason.",
                LABEL_FINISHED_REASON,
            )?,
            rejected: counter_vec(
                REQUESTS_REJECTED_TOTAL,
                "HTTP requests refused before reaching the engine.",
                LABEL_REASON,
            )?,
            registry,
        })
    }

    /// Counts one finished sequence.
    pub fn record_finished(&self, reason: &str) {
        self.finished.with_label_values(&[reason]).inc();
    }

    /// Counts one refused request (`reason`: the error code sent).
    pub fn record_rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every metric, engine gauges as of `stats`.
    pub fn render(&self, stats: &EngineStats) -> Result<String, prometheus::Error> {
        self.running.set(stats.num_running as i64);
        self.waiting.set(stats.num_waiting as i64);
        self.blocks_total.set(stats.kv_blocks_total as i64);
        self.blocks_used.set(stats.kv_blocks_used as i64);
        if let Ok(totals) = self.engine_totals.lock() {
            let targets = [
                stats.num_preemptions,
                stats.prefix_cache_queries,
                stats.prefix_cache_hits,
            ];
            for (counter, target) in totals.iter().zip(targets) {
                counter.inc_by(target.saturating_sub(counter.get()));
            }
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_engine_gauges_and_totals_once() {
        let m = Metrics::new().expect("registry");
        let stats = EngineStats {
            num_running: 3,
            num_waiting: 2,
            kv_blocks_total: 100,
            kv_blocks_used: 40,
            num_preemptions: 5,
            prefix_cache_queries: 64,
            prefix_cache_hits: 32,
        };
        m.record_finished("stop");
        m.record_rejected("queue_full");
        m.render(&stats).expect("render");
        let text = m.render(&stats).expect("render");
        for line in [
            "tessera:num_requests_running 3",
            "tessera:num_requests_waiting 2",
            "tessera:kv_cache_blocks_total 100",
            "tessera:kv_cache_blocks_used 40",
            "tessera:num_preemptions_total 5",
            "tessera:prefix_cache_queries_total 64",
            "tessera:prefix_cache_hits_total 32",
            "tessera:request_success_total{finished_reason=\"stop\"} 1",
            "tessera:requests_rejected_total{reason=\"queue_full\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }
}
