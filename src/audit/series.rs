//! The conversation log's Prometheus series (names and registration in `metrics`): the
//! struct only, so that the log depends on no file of `metrics` (which depends on the
//! engine).

use prometheus::{Gauge, Histogram, IntCounter, IntGauge};

/// The conversation log's series: recorded by its writer thread and retention job, the
/// lag also at scrape time.
#[derive(Clone)]
pub struct AuditSeries {
    pub records: IntCounter,
    pub lag: Gauge,
    pub batch: Histogram,
    pub write_seconds: Histogram,
    pub failures: IntCounter,
    pub retention_deleted: IntCounter,
    pub review_queue: IntGauge,
}
