//! The model runner: owns the model, its physical KV cache and the step workspace, and
//! turns one `SchedulerOutput` into one forward pass over all scheduled tokens. Prompt
//! logprobs come from the same forward: after sampling, `for_each_prompt_row` runs the
//! LM head over the prompt rows that asked (a few at a time, in the workspace's logits
//! buffer); steps without such rows do no extra work.

pub mod batch;

use crate::engine::request::RequestId;
use crate::model::kv_cache::KvCache;
use crate::model::transformer::Transformer;
use crate::model::workspace::Workspace;
use crate::scheduler::output::SchedulerOutput;
use crate::scheduler::Scheduler;
use batch::{BatchBuilder, PromptRow};

pub struct ModelRunner {
    model: Transformer,
    kv: KvCache,
    ws: Workspace,
    batch: BatchBuilder,
    block_size: usize,
}

/// Logits of one step: row `i` belongs to request `ids[i]`.
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
        max_num_seqs: usize,
    ) -> Self {
        let geo = model.kv_geometry(block_size);
        let kv = KvCache::new(model.cfg.n_layers, num_blocks, geo);
        let ws = Workspace::new(&model.cfg, max_num_batched_tokens, max_num_seqs);
        Self {
            model,
            kv,
            ws,
            batch: BatchBuilder::default(),
            block_size,
        }
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// One forward over everything scheduled; logits only for rows that sample.
    pub fn execute(&mut self, so: &SchedulerOutput, sched: &Scheduler) -> StepLogits<'_> {
        self.batch.build(so, sched, self.block_size);
        let vocab = self.model.cfg.vocab;
        let logits = self
            .model
            .forward(&self.batch.forward_batch(), &mut self.kv, &mut self.ws);
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
