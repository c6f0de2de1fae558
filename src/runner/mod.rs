//! The model runner: owns the model, its physical KV cache and the step workspace, and
//! turns one `SchedulerOutput` into one forward pass over all scheduled tokens.

pub mod batch;

use crate::engine::request::RequestId;
use crate::model::kv_storage::KvStorage;
use crate::model::transformer::Transformer;
use crate::model::workspace::Workspace;
use crate::scheduler::output::SchedulerOutput;
use crate::scheduler::Scheduler;
use batch::BatchBuilder;

pub struct ModelRunner {
    model: Transformer,
    kv: KvStorage,
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
        let kv = KvStorage::new(model.cfg.n_layers, num_blocks, geo);
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
}
