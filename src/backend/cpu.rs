//! The CPU backend: the `Transformer` with its weights in host memory (quantized as the
//! file has them), the K/V blocks in `KvStorage` and the step buffers in a `Workspace`.
//! It is the default backend and the oracle every other backend is checked against.

use super::{BackendError, Device, ExecutionBackend};
use crate::model::config::ModelConfig;
use crate::model::kv_storage::{KvCacheDtype, KvStorage};
use crate::model::transformer::{ForwardBatch, Transformer};
use crate::model::workspace::Workspace;

pub struct CpuBackend {
    model: Transformer,
    kv: KvStorage,
    ws: Workspace,
}

/// The sizes a backend's buffers are made for.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    pub num_blocks: usize,
    pub block_size: usize,
    /// Most tokens in one step (`max_num_batched_tokens`).
    pub max_tokens: usize,
    /// Most rows that need logits in one step.
    pub max_logit_rows: usize,
}

impl CpuBackend {
    pub fn new(model: Transformer, limits: StepLimits, kv_dtype: KvCacheDtype) -> Self {
        let geo = model.kv_geometry(limits.block_size);
        let kv = KvStorage::new(model.cfg.n_layers, limits.num_blocks, geo, kv_dtype);
        let ws = Workspace::new(&model.cfg, limits.max_tokens, limits.max_logit_rows);
        Self { model, kv, ws }
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }
}

impl ExecutionBackend for CpuBackend {
    fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }

    fn forward(&mut self, batch: &ForwardBatch<'_>) -> Result<&mut [f32], BackendError> {
        Ok(self.model.forward(batch, &mut self.kv, &mut self.ws))
    }

    fn head(&mut self, rows: &[usize]) -> Result<&mut [f32], BackendError> {
        Ok(self.model.head(rows, &mut self.ws))
    }

    fn max_logit_rows(&self) -> usize {
        self.ws.max_logit_rows()
    }

    fn device(&self) -> Device {
        Device::Cpu
    }
}
