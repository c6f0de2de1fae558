//! The model runner: owns an execution backend (the model with its physical K/V memory
//! and step buffers, on the CPU or a GPU; `backend`) and its own copy of the scheduled
//! requests (`requests`), and turns one `SchedulerOutput` into one forward pass over all
//! scheduled tokens. It reads nothing of the scheduler but that
//! output (vLLM v1's contract): tokens and block tables arrive in it, whole when a
//! request is admitted and as deltas while it runs. Prompt logprobs come from the same
//! forward: after sampling, `for_each_prompt_row` runs the LM head over the prompt rows
//! of the requests that asked (a few at a time, in the workspace's logits buffer); steps
//! without such rows do no extra work.

pub mod batch;
pub mod requests;

use crate::backend::ExecutionBackend;
use crate::model::lora::LoraStep;
use crate::model::transformer::ForwardBatch;
use crate::request::RequestId;
use crate::scheduler::output::SchedulerOutput;
use batch::{BatchBuilder, PromptRow};
use requests::RequestStates;

pub struct ModelRunner {
    backend: Box<dyn ExecutionBackend>,
    /// Which rows of the current step use which LoRA adapter.
    lora: LoraStep,
    batch: BatchBuilder,
    requests: RequestStates,
    block_size: usize,
}

/// Logits of one step: row `i` belongs to request `ids[i]`; a request with draft tokens
/// has `1 + draft.len()` adjacent rows (after its last token, then after each draft token).
pub struct StepLogits<'a> {
    pub ids: &'a [RequestId],
    /// `[ids.len(), vocab]`
    pub logits: &'a mut [f32],
    pub vocab: usize,
}

impl ModelRunner {
    /// A runner over `backend`, whose K/V blocks hold `block_size` tokens each.
    pub fn new(backend: Box<dyn ExecutionBackend>, block_size: usize) -> Self {
        Self {
            backend,
            lora: LoraStep::default(),
            batch: BatchBuilder::default(),
            requests: RequestStates::default(),
            block_size,
        }
    }

    pub fn backend(&self) -> &dyn ExecutionBackend {
        self.backend.as_ref()
    }

    /// Number of requests the runner holds.
    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }

    /// Forgets every request (after a failed step, when the engine aborts them all).
    pub fn clear_requests(&mut self) {
        self.requests.clear();
    }

    /// Applies `so` to the runner's requests, then runs one forward over everything
    /// scheduled (none when nothing is); logits only for rows that sample.
    ///
    /// Panics when the backend's device fails mid-step (a driver error, never a request's
    /// input): the engine's step guard then fails the requests in flight with the reason.
    pub fn execute(&mut self, so: &SchedulerOutput) -> StepLogits<'_> {
        self.requests.update(so);
        let vocab = self.backend.config().vocab;
        if so.scheduled.is_empty() {
            return StepLogits {
                ids: &[],
                logits: &mut [],
                vocab,
            };
        }
        self.batch.build(so, &self.requests, self.block_size);
        self.lora.clear();
        for (lora, rows) in self.batch.lora_rows() {
            self.lora.add_rows(&lora.weights, rows.clone());
        }
        let batch = ForwardBatch {
            lora: (!self.lora.is_empty()).then_some(&self.lora),
            ..self.batch.forward_batch()
        };
        let device = self.backend.device();
        let logits = match self.backend.forward(&batch) {
            Ok(logits) => logits,
            Err(err) => panic!("forward pass on {device} failed: {err}"),
        };
        StepLogits {
            ids: self.batch.sample_ids(),
            logits,
            vocab,
        }
    }

    /// Calls `each` with every prompt row of the last `execute` that wants logits and
    /// its logits `[vocab]`, in batch order. Call it after the step's sampling is done:
    /// it reuses the logits buffer `execute` returned.
    pub fn for_each_prompt_row(&mut self, mut each: impl FnMut(&PromptRow, &[f32])) {
        let (rows, index) = self.batch.prompt_rows();
        let vocab = self.backend.config().vocab;
        let per_pass = self.backend.max_logit_rows().max(1);
        let device = self.backend.device();
        for (rows, index) in rows.chunks(per_pass).zip(index.chunks(per_pass)) {
            let logits = match self.backend.head(index) {
                Ok(logits) => logits,
                Err(err) => panic!("LM head on {device} failed: {err}"),
            };
            for (row, logits) in rows.iter().zip(logits.chunks_exact(vocab)) {
                each(row, logits);
            }
        }
    }
}
