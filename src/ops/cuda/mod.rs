//! CUDA launch wrappers (feature `cuda`): kernels from `kernels/*.cu`, embedded with
//! `include_str!`, compiled at run time by NVRTC for the device's compute capability and
//! launched through `cudarc`, which loads libcuda / libnvrtc dynamically — so this module
//! builds on machines with no CUDA toolkit and no GPU.
//!
//! Every kernel file is compiled with the options in `kernels/nvrtc.options` (also read by
//! scripts/check-kernels.py, the CI compile check), and its `#include "common.cuh"` line
//! is replaced by `kernels/common.cuh` (NVRTC gets no include path: sources are embedded).
//!
//! Invariant: no cudarc call is made before `cudarc::driver::sys::is_culib_present()`
//! (resp. the NVRTC twin) said the library loads; without that check a missing driver
//! panics inside cudarc instead of returning `CudaError::NoDriver`, whose message is one
//! line saying what is missing.

pub mod attention;
pub mod dense;
pub mod moe;

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, CudaStream, DriverError};
use cudarc::nvrtc::{CompileError, CompileOptions};

/// Why a CUDA operation failed. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error(
        "no CUDA device: the NVIDIA driver library (libcuda) is not installed or cannot be loaded"
    )]
    NoDriver,
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    #[error("CUDA kernels cannot be compiled: the NVRTC library (libnvrtc) is not installed or cannot be loaded")]
    NoNvrtc,
    #[error("NVRTC failed to compile kernels/{file}: {log}")]
    Compile { file: &'static str, log: String },
    #[error("CUDA device {ordinal} has compute capability {major}.{minor}; tessera's kernels need 7.0 or newer")]
    TooOld {
        ordinal: usize,
        major: i32,
        minor: i32,
    },
    #[error("CUDA driver error: {0}")]
    Driver(#[from] DriverError),
    #[error("{0}")]
    Limit(String),
}

/// One GPU: its context, a stream, and the NVRTC target for its compute capability.
pub struct CudaDevice {
    pub stream: Arc<CudaStream>,
    arch: String,
}

impl CudaDevice {
    /// Opens device `ordinal`, or says in one line why there is none.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|e| CudaError::NoDevice(one_line(e)))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice(one_line(e)))?;
        let (major, minor) = ctx.compute_capability()?;
        if major < 7 {
            return Err(CudaError::TooOld {
                ordinal,
                major,
                minor,
            });
        }
        Ok(Self {
            stream: ctx.default_stream(),
            arch: format!("compute_{major}{minor}"),
        })
    }

    /// Compiles one embedded `.cu` source and loads it as a module.
    pub fn compile(&self, file: &'static str, src: &str) -> Result<Arc<CudaModule>, CudaError> {
        compile_ptx(file, src, Some(&self.arch))
            .and_then(|ptx| Ok(self.stream.context().load_module(ptx)?))
    }
}

/// NVRTC options of every kernel file, one per line (`#` comments), shared with CI.
const NVRTC_OPTIONS: &str = include_str!("../../../kernels/nvrtc.options");
/// Helpers every kernel file includes.
const COMMON_HEADER: (&str, &str) = ("common.cuh", include_str!("../../../kernels/common.cuh"));

/// The options of `kernels/nvrtc.options`, without the target architecture.
pub fn nvrtc_options() -> Vec<String> {
    NVRTC_OPTIONS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// `src` with each `#include "common.cuh"` line replaced by that header's text (other
/// includes are left for NVRTC, which reports them).
fn expand_includes(src: &str) -> String {
    let (name, text) = COMMON_HEADER;
    let directive = format!("#include \"{name}\"");
    src.lines()
        .map(|line| match line.trim_start().starts_with(&directive) {
            true => text,
            false => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// NVRTC-compiles `src` (no GPU needed) with `nvrtc_options()`. `arch` like `compute_90`;
/// `None`: NVRTC's default. The options include `--fmad=false`, so only the kernels'
/// explicit `fmaf`s fuse (bit-exact twins).
pub fn compile_ptx(
    file: &'static str,
    src: &str,
    arch: Option<&str>,
) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    // SAFETY: only tries to dlopen the NVRTC library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    let mut options = nvrtc_options();
    if let Some(arch) = arch {
        options.push(format!("--gpu-architecture={arch}"));
    }
    let opts = CompileOptions {
        options,
        name: Some(file.to_string()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(expand_includes(src), opts).map_err(|e| {
        CudaError::Compile {
            file,
            log: match e {
                CompileError::CompileError { log, .. } => one_line(log.to_string_lossy()),
                other => one_line(other),
            },
        }
    })
}

/// Checks on the host that a launch size fits the kernel's `int` / `unsigned` argument.
pub(crate) fn fits<T: TryFrom<usize>>(value: usize, what: &str) -> Result<T, CudaError> {
    T::try_from(value)
        .map_err(|_| CudaError::Limit(format!("{what} {value} is too large for the CUDA kernels")))
}

fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
