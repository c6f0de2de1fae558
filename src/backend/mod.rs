//! The execution backend: the seam below the model runner. The runner owns requests and
//! batch layout (everything the scheduler decided); a backend owns the weights as its
//! device wants them, the physical K/V blocks and the step's activation buffers, and runs
//! one forward pass over a `ForwardBatch`. The CPU backend (`cpu`) is the default and the
//! oracle; the CUDA backend (`cuda`, feature `cuda`) runs the same forward on a GPU.
//!
//! Block ids mean the same on every backend: the scheduler's KV cache manager hands them
//! out, and a backend only maps id → memory. So prefix caching, preemption and sampling
//! are the same code whatever runs the forward.

pub mod build;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;

use crate::model::config::ModelConfig;
use crate::model::transformer::ForwardBatch;

pub use build::{build, Built};
pub use device::Device;

/// Why a backend could not be built or could not run a step. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The model or a setting is not supported on this device (at start only).
    #[error("{0}")]
    Unsupported(String),
    /// The device failed (driver, out of memory at start, kernel launch).
    #[error("{0}")]
    Device(String),
}

/// One forward pass per step over all scheduled tokens, on some device.
pub trait ExecutionBackend: Send {
    /// The model's shape.
    fn config(&self) -> &ModelConfig;

    /// Runs `batch`: writes its K/V into the cache slots it names, and returns the logits
    /// of `batch.logit_rows`, `[logit_rows.len(), vocab]`, in host memory.
    fn forward(&mut self, batch: &ForwardBatch<'_>) -> Result<&mut [f32], BackendError>;

    /// Logits `[rows.len(), vocab]` of further rows of the last `forward` (prompt
    /// logprobs); at most `max_logit_rows` rows per call.
    fn head(&mut self, rows: &[usize]) -> Result<&mut [f32], BackendError>;

    /// Most rows `head` (and `forward`'s `logit_rows`) take at once.
    fn max_logit_rows(&self) -> usize;

    /// Which device runs the forward, for logs and `/v1/models`-style reports.
    fn device(&self) -> Device;
}
