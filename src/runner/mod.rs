//! The model runner: owns the model, its physical K/V memory, the step workspace and its
//! own copy of the scheduled requests (`requests`), and turns one `SchedulerOutput` into
//! one forward pass over all scheduled tokens. It reads nothing of the scheduler but that
//! output (vLLM v1's contract): tokens and block tables arrive in it, whole when a
//! request is admitted and as deltas while it runs. Prompt logprobs come from the same
//! forward: after sampling, `for_each_prompt_row` runs the LM head over the prompt rows
//! of the requests that asked (a few at a time, in the workspace's logits buffer); steps
//! without such rows do no extra work.

pub mod batch;
pub mod requests;

use crate::model::kv_storage::{KvCacheDtype, KvStorage};
use crate::model::lora::LoraStep;
use crate::model::transformer::{ForwardBatch, Transformer};
use crate::model::workspace::Workspace;
use crate::request::RequestId;
use crate::scheduler::output::SchedulerOutput;
use batch::{BatchBuilder, PromptRow};
use requests::RequestStates;

pub struct ModelRunner {
    model: Transformer,
    /// Which rows of the current step use which LoRA adapter.
    lora: LoraStep,
    kv: KvStorage,
    ws: Workspace,
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
    pub fn new(
        model: Transformer,
        num_blocks: usize,
        block_size: usize,
        max_num_batched_tokens: usize,
        max_logit_rows: usize,
        kv_dtype: KvCacheDtype,
    ) -> Self {
        let geo = model.kv_geometry(block_size);
        let kv = KvStorage::new(model.cfg.n_layers, num_blocks, geo, kv_dtype);
        let ws = Workspace::new(&model.cfg, max_num_batched_tokens, max_logit_rows);
        Self {
            model,
            lora: LoraStep::default(),
            kv,
            ws,
            batch: BatchBuilder::default(),
            requests: RequestStates::default(),
            block_size,
        }
    }

    pub fn model(&self) -> &Transformer {
        &self.model
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
    pub fn execute(&mut self, so: &SchedulerOutput) -> StepLogits<'_> {
        self.requests.update(so);
        let vocab = self.model.cfg.vocab;
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
        let logits = self.model.forward(&batch, &mut self.kv, &mut self.ws);
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
        let vocab = self.model.cfg.vocab;
        let per_pass = self.ws.max_logit_rows().max(1);
        for (rows, index) in rows.chunks(per_pass).zip(index.chunks(per_pass)) {
            let logits = self.model.head(index, &mut self.ws);
            for (row, logits) in rows.iter().zip(logits.chunks_exact(vocab)) {
                each(row, logits);
            }
        }
    }
}
