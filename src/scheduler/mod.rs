//! Continuous-batching scheduler (vLLM v1 contract): which requests run each step and
//! how many tokens each, over the paged KV cache in `crate::kvcache`.
//!
//! `config` holds the limits and errors, `schedule` the queues and the per-step
//! decision, `update` the application of a step's results (stop checks, aborts),
//! `output` the types exchanged with the runner and the engine.

pub mod config;
pub mod output;
pub mod schedule;
pub mod update;

pub use config::{SchedulerConfig, SchedulerError};
pub use schedule::{Scheduler, SchedulerStats};
pub use update::check_stop;

#[cfg(test)]
mod tests;
