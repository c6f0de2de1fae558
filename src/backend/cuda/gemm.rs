//! The projections: `y[T, n] = x[T, k] · W[n, k]ᵀ` through cuBLAS `cublasGemmEx` with F16
//! inputs, F32 output and F32 accumulation.
//!
//! cuBLAS is column-major: a row-major `[T, n]` output is a column-major `[n, T]`, so the
//! call computes `Yᵀ = W · xᵀ` with `W` read transposed (its row-major `[n, k]` storage is
//! a column-major `[k, n]`).

use std::ffi::c_int;
use std::sync::Arc;

use cudarc::cublas::{result::gemm_ex, sys, CudaBlas};
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use half::f16;

use super::weights::DeviceMatrix;
use crate::backend::BackendError;

/// A cuBLAS handle bound to the backend's stream.
pub struct Gemm {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
}

impl Gemm {
    /// Starts cuBLAS on `stream`, or says in one line that libcublas is missing.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self, BackendError> {
        // SAFETY: only tries to dlopen the cuBLAS library; no cuBLAS call is made.
        if !unsafe { sys::is_culib_present() } {
            return Err(BackendError::Device(
                "cuBLAS (libcublas.so.12) is not installed or cannot be loaded".into(),
            ));
        }
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| BackendError::Device(format!("cuBLAS cannot start: {e:?}")))?;
        Ok(Self { blas, stream })
    }

    /// `y[t, w.rows] = x[t, w.cols] · wᵀ`.
    pub fn linear(
        &self,
        w: &DeviceMatrix,
        x: &CudaView<'_, f16>,
        t: usize,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), BackendError> {
        linear(&self.blas, &self.stream, w, x, t, y)
    }
}

fn linear(
    blas: &CudaBlas,
    stream: &CudaStream,
    w: &DeviceMatrix,
    x: &CudaView<'_, f16>,
    t: usize,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<(), BackendError> {
    let (n, k) = (w.rows, w.cols);
    if x.len() < t * k || y.len() < t * n {
        return Err(BackendError::Device(format!(
            "GEMM buffers too small: x {} < {t}x{k} or y {} < {t}x{n}",
            x.len(),
            y.len()
        )));
    }
    let dim = |v: usize| {
        c_int::try_from(v).map_err(|_| BackendError::Device(format!("GEMM dimension {v} too big")))
    };
    let (m_, n_, k_) = (dim(n)?, dim(t)?, dim(k)?);
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (a, _a) = w.data.device_ptr(stream);
    let (b, _b) = x.device_ptr(stream);
    let (c, _c) = y.device_ptr_mut(stream);
    // SAFETY: the sizes were checked above: `w` holds n·k values, `x` at least t·k and
    // `y` at least t·n, all on `blas`'s stream; the scalars outlive the call.
    unsafe {
        gemm_ex(
            *blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_T,
            sys::cublasOperation_t::CUBLAS_OP_N,
            m_,
            n_,
            k_,
            (&alpha as *const f32).cast(),
            a as *const _,
            sys::cudaDataType_t::CUDA_R_16F,
            k_,
            b as *const _,
            sys::cudaDataType_t::CUDA_R_16F,
            k_,
            (&beta as *const f32).cast(),
            c as *mut _,
            sys::cudaDataType_t::CUDA_R_32F,
            m_,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| BackendError::Device(format!("cublasGemmEx: {e:?}")))
}
