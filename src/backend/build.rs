//! Building the backend `--device` names, with its KV cache sized: on the CPU from
//! `--kv-cache-memory` (or `--num-kv-blocks`), on a GPU from `--gpu-memory-utilization`
//! and the device memory left after the weights.

use super::cpu::{CpuBackend, StepLimits};
use super::{BackendError, Device, ExecutionBackend};
use crate::config::EngineConfig;
use crate::model::kv_storage::KvStorage;
use crate::model::transformer::Transformer;

/// A backend and the number of KV blocks its cache holds.
pub struct Built {
    pub backend: Box<dyn ExecutionBackend>,
    pub num_blocks: usize,
}

/// Builds the backend for `cfg.device` over `model`; `max_logit_rows` is the most rows
/// one step samples from (the scheduler's figure).
pub fn build(
    model: Transformer,
    cfg: &EngineConfig,
    max_logit_rows: usize,
) -> Result<Built, BackendError> {
    let geo = model.kv_geometry(cfg.block_size);
    cfg.kv_cache_dtype
        .check(geo)
        .map_err(BackendError::Unsupported)?;
    match cfg.device {
        Device::Cpu => {
            let bytes_per_block =
                KvStorage::bytes_per_block(model.cfg.n_layers, geo, cfg.kv_cache_dtype);
            let num_blocks = cfg.num_blocks(bytes_per_block);
            tracing::info!(
                kv_cache_dtype = %cfg.kv_cache_dtype,
                num_kv_blocks = num_blocks,
                bytes_per_block,
                "KV cache sized"
            );
            let limits = StepLimits {
                num_blocks,
                block_size: cfg.block_size,
                max_tokens: cfg.max_num_batched_tokens,
                max_logit_rows,
            };
            let backend = CpuBackend::new(model, limits, cfg.kv_cache_dtype);
            Ok(Built {
                backend: Box::new(backend),
                num_blocks,
            })
        }
        Device::Cuda(ordinal) => cuda(model, cfg, ordinal, max_logit_rows),
    }
}

#[cfg(feature = "cuda")]
fn cuda(
    model: Transformer,
    cfg: &EngineConfig,
    ordinal: usize,
    max_logit_rows: usize,
) -> Result<Built, BackendError> {
    let backend = super::cuda::CudaBackend::new(model, cfg, ordinal, max_logit_rows)?;
    let num_blocks = backend.num_blocks();
    Ok(Built {
        backend: Box::new(backend),
        num_blocks,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(
    _model: Transformer,
    _cfg: &EngineConfig,
    ordinal: usize,
    _max_logit_rows: usize,
) -> Result<Built, BackendError> {
    Err(BackendError::Unsupported(format!(
        "--device cuda:{ordinal}: this build has no CUDA support; build with \
         `cargo build --release --features cuda`"
    )))
}
