//! The device buffers of one step, allocated once for the largest step
//! (`max_num_batched_tokens` rows, `max_logit_rows` sampled rows) and reused, and the
//! upload of a step's inputs (token ids, positions, slots, per-row attention metadata,
//! block tables) into them.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::f16;

use super::DriverResult;
use crate::model::config::ModelConfig;
use crate::model::transformer::ForwardBatch;
use crate::ops::attention::row_meta;
use crate::ops::cuda::attention::attention_scratch_len;

/// Sizes the buffers are made for.
#[derive(Debug, Clone, Copy)]
pub struct BufferSizes {
    pub max_tokens: usize,
    pub max_logit_rows: usize,
    /// Longest context a query row attends over (the max model length).
    pub max_ctx: usize,
}

pub struct StepBuffers {
    pub sizes: BufferSizes,
    /// `[T]` each
    pub ids: CudaSlice<u32>,
    pub positions: CudaSlice<u32>,
    pub slots: CudaSlice<u32>,
    /// Keys visible to each query row, and where its sequence's table starts.
    pub row_ctx: CudaSlice<u32>,
    pub row_table: CudaSlice<u32>,
    /// The step's concatenated block tables (grown when a step needs more).
    pub block_tables: CudaSlice<u32>,
    /// `[S]` rows that get logits.
    pub logit_rows: CudaSlice<u32>,
    /// Residual stream `[T, hidden]`, and a projection output of the same shape.
    pub x: CudaSlice<f32>,
    pub proj: CudaSlice<f32>,
    /// Normed rows, the GEMM input `[T, hidden]`.
    pub xn: CudaSlice<f16>,
    /// `[T, q_dim]`, `[T, kv_dim]`, `[T, kv_dim]`
    pub q: CudaSlice<f32>,
    pub k: CudaSlice<f32>,
    pub v: CudaSlice<f32>,
    /// Attention output, the O projection's input `[T, q_dim]`.
    pub attn: CudaSlice<f16>,
    /// `[T, ffn]` each; `act` = silu(gate)·up, the down projection's input.
    pub gate: CudaSlice<f32>,
    pub up: CudaSlice<f32>,
    pub act: CudaSlice<f16>,
    /// Final-normed rows `[S, hidden]` and their logits `[S, vocab]`.
    pub head_in: CudaSlice<f16>,
    pub logits: CudaSlice<f32>,
    /// Split-K partials of the attention kernel.
    pub attn_scratch: CudaSlice<f32>,
    /// Host copies: the logits handed to the sampler, and the row metadata being built.
    pub host_logits: Vec<f32>,
    host_ctx: Vec<u32>,
    host_table: Vec<u32>,
}

impl StepBuffers {
    pub fn new(
        stream: &Arc<CudaStream>,
        cfg: &ModelConfig,
        sizes: BufferSizes,
    ) -> DriverResult<Self> {
        let (t, s) = (sizes.max_tokens, sizes.max_logit_rows);
        // Small steps split the keys most (decode), so the largest scratch can be any T.
        let scratch = (1..=t)
            .map(|rows| attention_scratch_len(rows, cfg.n_heads, cfg.head_dim, sizes.max_ctx))
            .max()
            .unwrap_or(0);
        Ok(Self {
            sizes,
            ids: stream.alloc_zeros(t)?,
            positions: stream.alloc_zeros(t)?,
            slots: stream.alloc_zeros(t)?,
            row_ctx: stream.alloc_zeros(t)?,
            row_table: stream.alloc_zeros(t)?,
            block_tables: stream.alloc_zeros(t.max(1))?,
            logit_rows: stream.alloc_zeros(s.max(1))?,
            x: stream.alloc_zeros(t * cfg.hidden)?,
            proj: stream.alloc_zeros(t * cfg.hidden)?,
            xn: stream.alloc_zeros(t * cfg.hidden)?,
            q: stream.alloc_zeros(t * cfg.q_dim())?,
            k: stream.alloc_zeros(t * cfg.kv_dim())?,
            v: stream.alloc_zeros(t * cfg.kv_dim())?,
            attn: stream.alloc_zeros(t * cfg.q_dim())?,
            gate: stream.alloc_zeros(t * cfg.ffn)?,
            up: stream.alloc_zeros(t * cfg.ffn)?,
            act: stream.alloc_zeros(t * cfg.ffn)?,
            head_in: stream.alloc_zeros(s * cfg.hidden)?,
            logits: stream.alloc_zeros(s * cfg.vocab)?,
            attn_scratch: stream.alloc_zeros(scratch.max(1))?,
            host_logits: vec![0.0; s * cfg.vocab],
            host_ctx: Vec::with_capacity(t),
            host_table: Vec::with_capacity(t),
        })
    }

    /// Copies `batch`'s inputs to the device; returns the longest context of the step.
    pub fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        batch: &ForwardBatch<'_>,
    ) -> DriverResult<usize> {
        let t = batch.token_ids.len();
        stream.memcpy_htod(batch.token_ids, &mut self.ids.slice_mut(..t))?;
        stream.memcpy_htod(batch.positions, &mut self.positions.slice_mut(..t))?;
        stream.memcpy_htod(batch.slots, &mut self.slots.slice_mut(..t))?;
        row_meta(batch.seqs, &mut self.host_ctx, &mut self.host_table);
        stream.memcpy_htod(&self.host_ctx, &mut self.row_ctx.slice_mut(..t))?;
        stream.memcpy_htod(&self.host_table, &mut self.row_table.slice_mut(..t))?;
        let tables = batch.block_tables.len().max(1);
        if self.block_tables.len() < tables {
            self.block_tables = stream.alloc_zeros(tables.next_power_of_two())?;
        }
        if !batch.block_tables.is_empty() {
            let n = batch.block_tables.len();
            stream.memcpy_htod(batch.block_tables, &mut self.block_tables.slice_mut(..n))?;
        }
        Ok(batch.seqs.iter().map(|s| s.ctx_len).max().unwrap_or(0))
    }

    /// Copies the rows that get logits to the device.
    pub fn upload_logit_rows(
        &mut self,
        stream: &Arc<CudaStream>,
        rows: &[usize],
    ) -> DriverResult<()> {
        let rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        stream.memcpy_htod(&rows, &mut self.logit_rows.slice_mut(..rows.len()))
    }
}
