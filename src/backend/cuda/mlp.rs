//! The SwiGLU MLP on the device, `y = down(silu(gate(x)) · up(x))`: the dense layers'
//! feed-forward, each MoE expert's and Qwen2-MoE's shared expert.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use half::f16;

use super::gemm::Gemm;
use super::weights::DeviceMlp;
use crate::backend::BackendError;
use crate::ops::cuda::dense::DenseKernels;

/// Buffers of at least `[n, ffn]` for the gate and up projections and their product.
pub struct MlpScratch<'a> {
    pub gate: &'a mut CudaSlice<f32>,
    pub up: &'a mut CudaSlice<f32>,
    pub act: &'a mut CudaSlice<f16>,
}

/// `y[n, h] = down(silu(gate(x)) · up(x))` for `x: [n, h]`.
pub fn forward(
    kernels: &DenseKernels,
    gemm: &Gemm,
    m: &DeviceMlp,
    x: &CudaView<'_, f16>,
    n: usize,
    s: &mut MlpScratch<'_>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<(), BackendError> {
    let ffn = m.gate.rows;
    gemm.linear(&m.gate, x, n, &mut s.gate.slice_mut(..n * ffn))?;
    gemm.linear(&m.up, x, n, &mut s.up.slice_mut(..n * ffn))?;
    kernels.silu_mul(
        &s.gate.slice(..n * ffn),
        &s.up.slice(..n * ffn),
        ffn,
        &mut s.act.slice_mut(..n * ffn),
    )?;
    gemm.linear(&m.down, &s.act.slice(..n * ffn), n, y)?;
    Ok(())
}
