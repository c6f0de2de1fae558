//! The mixture-of-experts FFN on the GPU, the twin of `model::moe::MoeBlock::forward`:
//! router GEMM → top-k softmax (kernels/moe_topk_softmax.cu) → the (token, rank) pairs
//! grouped by expert → each expert's rows gathered and run as three cuBLAS GEMMs over
//! exactly its rows (a grouped GEMM as a loop over the experts that got tokens) → the
//! weighted sum back in token order (kernels/moe_permute.cu's unpermute), ranks added in
//! order as on the CPU.
//!
//! The grouping is computed on the host from the routed ids (one small device→host copy
//! per MoE layer): the loop over experts needs each expert's row count on the host to
//! size its GEMM anyway, and the host's `MoeAlign` is the CPU op itself. The shared
//! expert (Qwen2-MoE) joins the weighted sum as one more "rank" whose rows sit after the
//! routed ones and whose weight is llama.cpp's sigmoid of its gate, so one unpermute adds
//! everything.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView};
use half::f16;

use super::gemm::Gemm;
use super::mlp::{self, MlpScratch};
use super::weights::DeviceMoe;
use super::DriverResult;
use crate::backend::BackendError;
use crate::model::moe::sigmoid_as_ggml;
use crate::ops::cuda::dense::DenseKernels;
use crate::ops::cuda::moe::MoeKernels;
use crate::ops::moe::MoeAlign;

/// Device and host buffers of the MoE layers, for the largest step.
pub struct MoeBuffers {
    /// `[T, E]`
    logits: CudaSlice<f32>,
    /// `[T, k]` each
    ids: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    /// `[T·k]` the token each expert-ordered slot reads.
    slot_tokens: CudaSlice<u32>,
    /// `[T·k, hidden]` the gathered inputs, f32 then f16.
    rows: CudaSlice<f32>,
    rows16: CudaSlice<f16>,
    /// `[max(T·k, T), max_ffn]`
    gate: CudaSlice<f32>,
    up: CudaSlice<f32>,
    act: CudaSlice<f16>,
    /// `[T·k + T, hidden]` expert outputs in slot order, then the shared expert's.
    ys: CudaSlice<f32>,
    /// `[T]` the shared expert's gate logit.
    shared_gate: CudaSlice<f32>,
    /// `[T, k + 1]` the weighted sum's weights and slots (routed ranks, then shared).
    mix_weights: CudaSlice<f32>,
    mix_slots: CudaSlice<i32>,
    /// `[T, hidden]` the block's output.
    pub out: CudaSlice<f32>,
    host: HostRouting,
}

#[derive(Default)]
struct HostRouting {
    ids: Vec<i32>,
    weights: Vec<f32>,
    shared_gate: Vec<f32>,
    align: MoeAlign,
    slot_tokens: Vec<u32>,
    mix_weights: Vec<f32>,
    mix_slots: Vec<i32>,
}

/// The largest MoE shapes of a model: experts, top-k, widest expert.
#[derive(Debug, Clone, Copy)]
pub struct MoeShape {
    pub n_expert: usize,
    pub top_k: usize,
    pub max_ffn: usize,
}

impl MoeBuffers {
    pub fn new(
        stream: &Arc<CudaStream>,
        max_tokens: usize,
        hidden: usize,
        shape: MoeShape,
    ) -> DriverResult<Self> {
        let (t, e, k) = (max_tokens, shape.n_expert, shape.top_k);
        let pairs = t * k;
        let ffn_rows = pairs.max(t);
        Ok(Self {
            logits: stream.alloc_zeros(t * e)?,
            ids: stream.alloc_zeros(pairs)?,
            weights: stream.alloc_zeros(pairs)?,
            slot_tokens: stream.alloc_zeros(pairs)?,
            rows: stream.alloc_zeros(pairs * hidden)?,
            rows16: stream.alloc_zeros(pairs * hidden)?,
            gate: stream.alloc_zeros(ffn_rows * shape.max_ffn)?,
            up: stream.alloc_zeros(ffn_rows * shape.max_ffn)?,
            act: stream.alloc_zeros(ffn_rows * shape.max_ffn)?,
            ys: stream.alloc_zeros((pairs + t) * hidden)?,
            shared_gate: stream.alloc_zeros(t)?,
            mix_weights: stream.alloc_zeros(t * (k + 1))?,
            mix_slots: stream.alloc_zeros(t * (k + 1))?,
            out: stream.alloc_zeros(t * hidden)?,
            host: HostRouting::default(),
        })
    }
}

/// The kernels and GEMM handle one MoE forward uses.
pub struct MoeOps<'a> {
    pub stream: &'a Arc<CudaStream>,
    pub dense: &'a DenseKernels,
    pub moe: &'a MoeKernels,
    pub gemm: &'a Gemm,
}

/// `b.out[..t·h] = moe(xn)` for the normed FFN input `xn: [t, h]` (f16).
pub fn forward(
    ops: &MoeOps<'_>,
    moe: &DeviceMoe,
    xn: &CudaView<'_, f16>,
    (t, h): (usize, usize),
    b: &mut MoeBuffers,
) -> Result<(), BackendError> {
    let (e, k) = (moe.experts.len(), moe.top_k);
    let (pairs, stream) = (t * k, ops.stream);
    // 1. Route. logits: [t, E] → ids, weights: [t, k]
    ops.gemm
        .linear(&moe.router, xn, t, &mut b.logits.slice_mut(..t * e))?;
    ops.moe.launch_topk_softmax(
        &b.logits,
        (t, e, k),
        moe.renormalize,
        &mut b.ids,
        &mut b.weights,
    )?;
    if let Some((_, gate)) = &moe.shared {
        ops.gemm
            .linear(gate, xn, t, &mut b.shared_gate.slice_mut(..t))?;
    }
    // 2. Group the pairs by expert on the host (the CPU op itself).
    let host = &mut b.host;
    host.ids.resize(pairs, 0);
    host.weights.resize(pairs, 0.0);
    stream.memcpy_dtoh(&b.ids.slice(..pairs), &mut host.ids[..])?;
    stream.memcpy_dtoh(&b.weights.slice(..pairs), &mut host.weights[..])?;
    host.shared_gate.resize(t, 0.0);
    if moe.shared.is_some() {
        stream.memcpy_dtoh(&b.shared_gate.slice(..t), &mut host.shared_gate[..])?;
    }
    stream.synchronize()?;
    let ids: Vec<u32> = host.ids.iter().map(|&i| i as u32).collect();
    host.align.compute(&ids, e, 1);
    host.slot_tokens.clear();
    host.slot_tokens
        .extend(host.align.sorted.iter().map(|&pair| pair / k as u32));
    // 3. Gather each slot's input row. rows16: [t·k, h]
    stream.memcpy_htod(&host.slot_tokens, &mut b.slot_tokens.slice_mut(..pairs))?;
    ops.dense.embed(
        xn,
        &b.slot_tokens.slice(..pairs),
        h,
        &mut b.rows.slice_mut(..pairs * h),
    )?;
    ops.dense.cast_f16(
        &b.rows.slice(..pairs * h),
        &mut b.rows16.slice_mut(..pairs * h),
    )?;
    // 4. Each expert once over its rows: ys[slots of e] = expert_e(rows16[slots of e]).
    for (ex, expert) in moe.experts.iter().enumerate() {
        let range = host.align.rows(ex);
        if range.is_empty() {
            continue;
        }
        moe.expert_tokens[ex].fetch_add(range.len() as u64, Ordering::Relaxed);
        let input = b.rows16.slice(range.start * h..range.end * h);
        let mut ys = b.ys.slice_mut(range.start * h..range.end * h);
        let mut scratch = MlpScratch {
            gate: &mut b.gate,
            up: &mut b.up,
            act: &mut b.act,
        };
        mlp::forward(
            ops.dense,
            ops.gemm,
            expert,
            &input,
            range.len(),
            &mut scratch,
            &mut ys,
        )?;
    }
    // 5. The shared expert over all rows, after the routed slots.
    let mut ranks = k;
    if let Some((shared, _)) = &moe.shared {
        let mut ys = b.ys.slice_mut(pairs * h..(pairs + t) * h);
        let mut scratch = MlpScratch {
            gate: &mut b.gate,
            up: &mut b.up,
            act: &mut b.act,
        };
        mlp::forward(ops.dense, ops.gemm, shared, xn, t, &mut scratch, &mut ys)?;
        ranks += 1;
    }
    // 6. out[t] = Σ_r w[t, r] · ys[slot[t, r]], ranks in order (the shared one last).
    mix_table(host, (t, k), moe.shared.is_some());
    let n = t * ranks;
    stream.memcpy_htod(&host.mix_weights, &mut b.mix_weights.slice_mut(..n))?;
    stream.memcpy_htod(&host.mix_slots, &mut b.mix_slots.slice_mut(..n))?;
    ops.moe.launch_unpermute(
        &b.ys,
        &b.mix_slots,
        &b.mix_weights,
        (t, h, ranks),
        &mut b.out,
    )?;
    Ok(())
}

/// The weighted sum's `[t, ranks]` weights and `ys` slots: each token's k routed pairs
/// in rank order, then (with a shared expert) its shared row at `t·k + token` with
/// llama.cpp's sigmoid of its gate.
fn mix_table(host: &mut HostRouting, (t, k): (usize, usize), shared: bool) {
    host.mix_weights.clear();
    host.mix_slots.clear();
    for token in 0..t {
        for rank in 0..k {
            let pair = token * k + rank;
            host.mix_weights.push(host.weights[pair]);
            host.mix_slots.push(host.align.inv[pair] as i32);
        }
        if shared {
            host.mix_weights
                .push(sigmoid_as_ggml(host.shared_gate[token]));
            host.mix_slots.push((t * k + token) as i32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_expert_is_the_last_rank_of_each_token() {
        let mut host = HostRouting {
            weights: vec![0.7, 0.3, 0.6, 0.4],
            shared_gate: vec![0.0, 2.0],
            ..HostRouting::default()
        };
        host.align.compute(&[1, 0, 0, 1], 2, 1);
        mix_table(&mut host, (2, 2), true);
        // Pairs (t0r0→e1, t0r1→e0, t1r0→e0, t1r1→e1): e0's slots 0,1, e1's 2,3.
        assert_eq!(host.mix_slots, [2, 0, 4, 1, 3, 5]);
        assert_eq!(host.mix_weights[..2], [0.7, 0.3]);
        assert_eq!(host.mix_weights[2], 0.5);
        assert_eq!(host.mix_weights[5], sigmoid_as_ggml(2.0));
        mix_table(&mut host, (2, 2), false);
        assert_eq!(host.mix_slots, [2, 0, 1, 3]);
    }
}
