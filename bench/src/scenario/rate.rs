//! Rate: open loop. Requests arrive as a seeded Poisson process at `rate` per second for
//! `duration_s`; each is sent at its arrival time whatever the server's state (one thread
//! per in-flight request, at most `max_in_flight`; an arrival that finds the cap reached
//! waits and is counted as late). Figures cover all arrivals, to the last completion.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Target, REQUEST_THREAD_STACK};
use crate::error::BenchError;
use crate::rng::poisson_arrivals;
use crate::stats::Summary;
use crate::stream::{self, RequestRecord};

/// An arrival sent more than this after its scheduled time counts as late.
const LATE_AFTER: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct RateConfig {
    pub rate: f64,
    pub duration_s: f64,
    pub prompt_len: usize,
    pub max_tokens: usize,
    pub max_in_flight: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateResult {
    pub rate: f64,
    pub duration_s: f64,
    pub seed: u64,
    pub prompt_len: usize,
    pub max_tokens: usize,
    pub arrivals: usize,
    /// Arrivals sent > 10 ms after their time (client thread cap or scheduling).
    pub late_arrivals: usize,
    pub max_in_flight_seen: usize,
    pub summary: Summary,
}

pub fn run(target: &Target, cfg: &RateConfig) -> Result<RateResult, BenchError> {
    if !(cfg.rate > 0.0 && cfg.rate.is_finite() && cfg.duration_s > 0.0) || cfg.max_in_flight == 0 {
        return Err(BenchError::Arg(format!(
            "--rate and --duration must be > 0 and --max-in-flight >= 1. Given: {}, {}, {}",
            cfg.rate, cfg.duration_s, cfg.max_in_flight
        )));
    }
    let arrivals = poisson_arrivals(cfg.rate, cfg.duration_s, cfg.seed);
    let requests = (0..arrivals.len())
        .map(|i| {
            target.completion(
                cfg.seed.wrapping_add(1 + i as u64),
                cfg.prompt_len,
                cfg.max_tokens,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    target.warm_up()?;
    let in_flight = AtomicUsize::new(0);
    let max_seen = AtomicUsize::new(0);
    let records: Mutex<Vec<RequestRecord>> = Mutex::new(Vec::with_capacity(requests.len()));
    let mut late = 0;
    let epoch = Instant::now();
    thread::scope(|s| {
        for (req, &at) in requests.iter().zip(&arrivals) {
            let due = epoch + Duration::from_secs_f64(at);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            while in_flight.load(Ordering::Acquire) >= cfg.max_in_flight {
                thread::sleep(Duration::from_millis(1));
            }
            if Instant::now() > due + LATE_AFTER {
                late += 1;
            }
            let now_in_flight = in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            max_seen.fetch_max(now_in_flight, Ordering::Relaxed);
            let (in_flight, records) = (&in_flight, &records);
            let send = move || {
                let rec = stream::run_stream(&target.ep, req, epoch, target.timeout);
                in_flight.fetch_sub(1, Ordering::AcqRel);
                if let Ok(mut all) = records.lock() {
                    all.push(rec);
                }
            };
            let builder = thread::Builder::new().stack_size(REQUEST_THREAD_STACK);
            if let Err(e) = builder.spawn_scoped(s, send) {
                in_flight.fetch_sub(1, Ordering::AcqRel);
                if let Ok(mut all) = records.lock() {
                    all.push(RequestRecord {
                        start_s: at,
                        error: Some(format!("client could not start a thread: {e}")),
                        ..RequestRecord::default()
                    });
                }
            }
        }
    });
    let wall = epoch.elapsed().as_secs_f64();
    let mut records = records.into_inner().unwrap_or_default();
    records.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    Ok(RateResult {
        rate: cfg.rate,
        duration_s: cfg.duration_s,
        seed: cfg.seed,
        prompt_len: cfg.prompt_len,
        max_tokens: cfg.max_tokens,
        arrivals: arrivals.len(),
        late_arrivals: late,
        max_in_flight_seen: max_seen.load(Ordering::Relaxed),
        summary: Summary::of(&records, wall),
    })
}
