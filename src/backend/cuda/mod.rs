//! The CUDA backend (feature `cuda`): the whole dense forward pass on one GPU. Weights
//! live on the device in F16 (`weights`), the K/V blocks in device memory (f16, the CPU
//! cache's layout: `[num_blocks, block_size, n_kv_heads, head_dim]` per layer), the
//! step's activations in buffers made once (`buffers`). Projections are cuBLAS GEMMs
//! (`gemm`); everything else is our kernels (`ops::cuda::dense`, each with a CPU twin).
//! Only the sampled rows' logits come back to the host, where the engine's sampler runs.
//!
//! Sizing follows vLLM: `--gpu-memory-utilization` is the share of the device's memory
//! this engine may hold; after the weights and buffers are placed, the KV cache takes
//! what is left of that share (minus `CUBLAS_HEADROOM`). Too little is an error at start,
//! never mid-request.
//!
//! MoE layers run their experts as per-expert cuBLAS GEMMs over exactly the rows routed
//! to each (`moe`), with the routing kernels of `ops::cuda::moe`.
//!
//! Not on this backend yet (refused at start with a message): LoRA adapters,
//! `--kv-cache-dtype q8_0`.

mod buffers;
mod gemm;
mod mlp;
mod moe;
mod weights;

use cudarc::driver::{CudaSlice, CudaStream, DriverError};
use half::f16;
use std::sync::Arc;

use super::{BackendError, Device, ExecutionBackend};
use crate::config::EngineConfig;
use crate::model::config::ModelConfig;
use crate::model::kv_storage::KvCacheDtype;
use crate::model::transformer::{ForwardBatch, Transformer};
use crate::ops::attention::KvGeometry;
use crate::ops::cuda::attention::AttnMeta;
use crate::ops::cuda::dense::DenseKernels;
use crate::ops::cuda::moe::MoeKernels;
use crate::ops::cuda::{CudaDevice, CudaError};
use crate::ops::rope::RopeStyle;
use buffers::{BufferSizes, StepBuffers};
use gemm::Gemm;
use mlp::MlpScratch;
use moe::{MoeBuffers, MoeOps, MoeShape};
use weights::{DeviceFfn, DeviceLayer, DeviceWeights};

type DriverResult<T> = Result<T, DriverError>;

/// Device memory kept out of the KV cache for cuBLAS's workspace and the allocator.
const CUBLAS_HEADROOM: usize = 256 << 20;

impl From<DriverError> for BackendError {
    fn from(e: DriverError) -> Self {
        BackendError::Device(format!("CUDA driver error: {e}"))
    }
}

impl From<CudaError> for BackendError {
    fn from(e: CudaError) -> Self {
        BackendError::Device(e.to_string())
    }
}

/// One layer's K and V blocks on the device.
struct LayerCache {
    k: CudaSlice<f16>,
    v: CudaSlice<f16>,
}

pub struct CudaBackend {
    cfg: ModelConfig,
    ordinal: usize,
    stream: Arc<CudaStream>,
    kernels: DenseKernels,
    /// The routing kernels and MoE buffers (MoE models only).
    moe: Option<(MoeKernels, MoeBuffers)>,
    gemm: Gemm,
    weights: DeviceWeights,
    cache: Vec<LayerCache>,
    geo: KvGeometry,
    num_blocks: usize,
    buf: StepBuffers,
}

impl CudaBackend {
    /// Places `model` on CUDA device `ordinal` and sizes its KV cache from `cfg`.
    pub fn new(
        model: Transformer,
        cfg: &EngineConfig,
        ordinal: usize,
        max_logit_rows: usize,
    ) -> Result<Self, BackendError> {
        check_supported(cfg)?;
        let dev = CudaDevice::open(ordinal)?;
        let stream = dev.stream.clone();
        let ctx = stream.context().clone();
        let (free_at_start, total) = ctx.mem_get_info()?;
        let kernels = DenseKernels::load(&dev)?;
        let gemm = Gemm::new(stream.clone())?;
        let weights = DeviceWeights::upload(&stream, &model.weights(), |_, _| {})
            .map_err(|e| out_of_memory("the weights", e))?;
        let sizes = BufferSizes {
            max_tokens: cfg.max_num_batched_tokens,
            max_logit_rows,
            max_ctx: model.max_positions(),
        };
        let buf = StepBuffers::new(&stream, &model.cfg, sizes)
            .map_err(|e| out_of_memory("the step buffers", e))?;
        let moe = match moe_shape(&weights) {
            Some(shape) => {
                let buffers = MoeBuffers::new(&stream, sizes.max_tokens, model.cfg.hidden, shape)
                    .map_err(|e| out_of_memory("the MoE buffers", e))?;
                Some((MoeKernels::load(&dev)?, buffers))
            }
            None => None,
        };
        stream.synchronize()?;
        let (free, _) = ctx.mem_get_info()?;
        let geo = model.kv_geometry(cfg.block_size);
        let block_bytes = 2 * geo.block_size * geo.token_stride() * 2 * model.cfg.n_layers;
        let num_blocks = kv_blocks(cfg, total, free, block_bytes)?;
        tracing::info!(
            device = %Device::Cuda(ordinal),
            total_mib = total >> 20,
            used_by_weights_and_buffers_mib = (free_at_start - free) >> 20,
            num_kv_blocks = num_blocks,
            bytes_per_block = block_bytes,
            "GPU memory placed"
        );
        let cache = (0..model.cfg.n_layers)
            .map(|_| {
                let len = num_blocks * geo.block_size * geo.token_stride();
                Ok(LayerCache {
                    k: stream.alloc_zeros(len)?,
                    v: stream.alloc_zeros(len)?,
                })
            })
            .collect::<DriverResult<Vec<_>>>()
            .map_err(|e| out_of_memory("the KV cache", e))?;
        Ok(Self {
            cfg: model.cfg.clone(),
            ordinal,
            stream,
            kernels,
            moe,
            gemm,
            weights,
            cache,
            geo,
            num_blocks,
            buf,
        })
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// One decoder layer over the step's `t` rows: `x += attn(norm(x))`, then
    /// `x += mlp(norm(x))`.
    fn layer(&mut self, i: usize, t: usize, max_ctx: usize) -> Result<(), BackendError> {
        let (h, qd, kvd) = (self.cfg.hidden, self.cfg.q_dim(), self.cfg.kv_dim());
        let (k, g) = (&self.kernels, &self.gemm);
        let layer: &DeviceLayer = &self.weights.layers[i];
        let b = &mut self.buf;
        let eps = self.cfg.rms_eps;

        // Attention: xn = norm(x); q,k,v = xn·W (+ bias); rope; cache; attend; x += o·Wo
        k.rms_norm(
            &b.x.slice(..t * h),
            &layer.attn_norm.slice(..),
            eps,
            &mut b.xn.slice_mut(..t * h),
        )?;
        let xn = b.xn.slice(..t * h);
        g.linear(&layer.q, &xn, t, &mut b.q.slice_mut(..t * qd))?;
        g.linear(&layer.k, &xn, t, &mut b.k.slice_mut(..t * kvd))?;
        g.linear(&layer.v, &xn, t, &mut b.v.slice_mut(..t * kvd))?;
        if let Some([bq, bk, bv]) = &layer.qkv_bias {
            k.add_bias(&mut b.q.slice_mut(..t * qd), &bq.slice(..))?;
            k.add_bias(&mut b.k.slice_mut(..t * kvd), &bk.slice(..))?;
            k.add_bias(&mut b.v.slice_mut(..t * kvd), &bv.slice(..))?;
        }
        let neox = self.cfg.rope_style == RopeStyle::Neox;
        let (hd, rot) = (self.cfg.head_dim, self.cfg.rope_dims);
        let (cos, sin) = (
            self.weights.rope_cos.slice(..),
            self.weights.rope_sin.slice(..),
        );
        let positions = b.positions.slice(..t);
        k.rope(
            &mut b.q.slice_mut(..t * qd),
            self.cfg.n_heads,
            hd,
            rot,
            neox,
            &positions,
            &cos,
            &sin,
        )?;
        k.rope(
            &mut b.k.slice_mut(..t * kvd),
            self.cfg.n_kv_heads,
            hd,
            rot,
            neox,
            &positions,
            &cos,
            &sin,
        )?;
        let cache = &mut self.cache[i];
        k.write_kv(
            &b.k.slice(..t * kvd),
            &b.v.slice(..t * kvd),
            &b.slots.slice(..t),
            kvd,
            &mut cache.k,
            &mut cache.v,
        )?;
        let meta = AttnMeta {
            row_ctx: b.row_ctx.slice(..t),
            row_table: b.row_table.slice(..t),
            block_tables: b.block_tables.slice(..),
            max_ctx,
        };
        k.paged_attention(
            &b.q.slice(..t * qd),
            &cache.k,
            &cache.v,
            self.geo,
            self.cfg.n_heads,
            &meta,
            &mut b.attn_scratch,
            &mut b.attn.slice_mut(..t * qd),
        )?;
        g.linear(
            &layer.out,
            &b.attn.slice(..t * qd),
            t,
            &mut b.proj.slice_mut(..t * h),
        )?;
        k.add_assign(&mut b.x.slice_mut(..t * h), &b.proj.slice(..t * h))?;

        // FFN: x += ffn(norm(x)), a SwiGLU MLP or a mixture of experts
        k.rms_norm(
            &b.x.slice(..t * h),
            &layer.ffn_norm.slice(..),
            eps,
            &mut b.xn.slice_mut(..t * h),
        )?;
        let xn = b.xn.slice(..t * h);
        match &layer.ffn {
            DeviceFfn::Dense(weights) => {
                let mut scratch = MlpScratch {
                    gate: &mut b.gate,
                    up: &mut b.up,
                    act: &mut b.act,
                };
                let mut out = b.proj.slice_mut(..t * h);
                mlp::forward(k, g, weights, &xn, t, &mut scratch, &mut out)?;
                k.add_assign(&mut b.x.slice_mut(..t * h), &b.proj.slice(..t * h))?;
            }
            DeviceFfn::Moe(block) => {
                let Some((moe_kernels, moe_buf)) = &mut self.moe else {
                    unreachable!("MoE buffers are made for every model with MoE layers");
                };
                let ops = MoeOps {
                    stream: &self.stream,
                    dense: k,
                    moe: moe_kernels,
                    gemm: g,
                };
                moe::forward(&ops, block, &xn, (t, h), moe_buf)?;
                k.add_assign(&mut b.x.slice_mut(..t * h), &moe_buf.out.slice(..t * h))?;
            }
        }
        Ok(())
    }

    /// Final norm + LM head for `rows` of the residual stream; logits to the host.
    fn logits(&mut self, rows: &[usize]) -> Result<&mut [f32], BackendError> {
        let (s, h, vocab) = (rows.len(), self.cfg.hidden, self.cfg.vocab);
        if s > self.buf.sizes.max_logit_rows {
            return Err(BackendError::Device(format!(
                "{s} logit rows requested, buffers hold {}",
                self.buf.sizes.max_logit_rows
            )));
        }
        if s == 0 {
            return Ok(&mut self.buf.host_logits[..0]);
        }
        let b = &mut self.buf;
        b.upload_logit_rows(&self.stream, rows)?;
        self.kernels.rms_norm_rows(
            &b.x.slice(..),
            &b.logit_rows.slice(..s),
            &self.weights.out_norm.slice(..),
            self.cfg.rms_eps,
            &mut b.head_in.slice_mut(..s * h),
        )?;
        self.gemm.linear(
            self.weights.head(),
            &b.head_in.slice(..s * h),
            s,
            &mut b.logits.slice_mut(..s * vocab),
        )?;
        let host = &mut b.host_logits[..s * vocab];
        self.stream
            .memcpy_dtoh(&b.logits.slice(..s * vocab), host)?;
        self.stream.synchronize()?;
        Ok(host)
    }
}

impl ExecutionBackend for CudaBackend {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward(&mut self, batch: &ForwardBatch<'_>) -> Result<&mut [f32], BackendError> {
        if batch.lora.is_some() {
            return Err(BackendError::Unsupported(
                "LoRA adapters are served on --device cpu only".into(),
            ));
        }
        let t = batch.token_ids.len();
        if t > self.buf.sizes.max_tokens {
            return Err(BackendError::Device(format!(
                "a step of {t} tokens exceeds the buffers ({})",
                self.buf.sizes.max_tokens
            )));
        }
        // The engine thread is not the one that built the backend: make the context
        // current before cuBLAS (which does not bind it itself) runs.
        self.stream.context().bind_to_thread()?;
        let max_ctx = self.buf.upload(&self.stream, batch)?;
        let h = self.cfg.hidden;
        self.kernels.embed(
            &self.weights.embed.data.slice(..),
            &self.buf.ids.slice(..t),
            h,
            &mut self.buf.x.slice_mut(..t * h),
        )?;
        for i in 0..self.cfg.n_layers {
            self.layer(i, t, max_ctx)?;
        }
        self.logits(batch.logit_rows)
    }

    fn head(&mut self, rows: &[usize]) -> Result<&mut [f32], BackendError> {
        self.stream.context().bind_to_thread()?;
        self.logits(rows)
    }

    fn max_logit_rows(&self) -> usize {
        self.buf.sizes.max_logit_rows
    }

    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
}

/// What this backend cannot run yet, refused before any device memory is touched.
fn check_supported(cfg: &EngineConfig) -> Result<(), BackendError> {
    let unsupported = |what: &str| {
        Err(BackendError::Unsupported(format!(
            "--device cuda does not run {what} yet; use --device cpu"
        )))
    };
    if cfg.kv_cache_dtype != KvCacheDtype::Auto {
        return unsupported("--kv-cache-dtype q8_0");
    }
    Ok(())
}

/// The largest MoE layer's shape (`None` for dense models).
fn moe_shape(weights: &DeviceWeights) -> Option<MoeShape> {
    weights
        .layers
        .iter()
        .filter_map(|l| match &l.ffn {
            DeviceFfn::Moe(m) => Some(MoeShape {
                n_expert: m.experts.len(),
                top_k: m.top_k,
                max_ffn: m.max_ffn(),
            }),
            DeviceFfn::Dense(_) => None,
        })
        .reduce(|a, b| MoeShape {
            n_expert: a.n_expert.max(b.n_expert),
            top_k: a.top_k.max(b.top_k),
            max_ffn: a.max_ffn.max(b.max_ffn),
        })
}

/// KV blocks that fit in `cfg.gpu_memory_utilization` of `total` bytes when `free` bytes
/// are free after the weights and buffers; an explicit `--num-kv-blocks` must fit too.
fn kv_blocks(
    cfg: &EngineConfig,
    total: usize,
    free: usize,
    block_bytes: usize,
) -> Result<usize, BackendError> {
    let others = total as f64 * (1.0 - cfg.gpu_memory_utilization);
    let budget = (free as f64 - others - CUBLAS_HEADROOM as f64).max(0.0) as usize;
    let fit = budget / block_bytes.max(1);
    let blocks = cfg.num_kv_blocks.unwrap_or(fit);
    if blocks == 0 || blocks > fit {
        return Err(BackendError::Device(format!(
            "not enough GPU memory for the KV cache: {} MiB free after the weights, \
             --gpu-memory-utilization {} leaves {} MiB, {} blocks of {} KiB wanted; raise \
             --gpu-memory-utilization or lower --max-num-batched-tokens",
            free >> 20,
            cfg.gpu_memory_utilization,
            budget >> 20,
            blocks.max(1),
            block_bytes >> 10
        )));
    }
    Ok(blocks)
}

fn out_of_memory(what: &str, e: DriverError) -> BackendError {
    BackendError::Device(format!("placing {what} on the GPU failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_q8_0_kv_cache_is_refused_before_the_device_is_touched() {
        let q8 = EngineConfig {
            kv_cache_dtype: KvCacheDtype::Q8_0,
            ..EngineConfig::default()
        };
        let err = check_supported(&q8).unwrap_err().to_string();
        assert!(
            err.contains("--device cuda does not run --kv-cache-dtype q8_0"),
            "{err}"
        );
        assert!(check_supported(&EngineConfig::default()).is_ok());
    }

    #[test]
    fn kv_blocks_take_the_share_left_after_the_weights() {
        let gib = 1usize << 30;
        let cfg = EngineConfig {
            gpu_memory_utilization: 0.5,
            ..EngineConfig::default()
        };
        // 80 GiB card, 70 GiB free after weights; others may hold 40 GiB.
        let blocks = kv_blocks(&cfg, 80 * gib, 70 * gib, 1 << 20).unwrap();
        assert_eq!(blocks, (30 * gib - CUBLAS_HEADROOM) >> 20);
        let err = kv_blocks(&cfg, 80 * gib, 30 * gib, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("not enough GPU memory"), "{err}");
        let explicit = EngineConfig {
            num_kv_blocks: Some(10),
            ..cfg.clone()
        };
        assert_eq!(
            kv_blocks(&explicit, 80 * gib, 70 * gib, 1 << 20).unwrap(),
            10
        );
        let too_many = EngineConfig {
            num_kv_blocks: Some(1 << 40),
            ..cfg
        };
        assert!(kv_blocks(&too_many, 80 * gib, 70 * gib, 1 << 20).is_err());
    }
}
