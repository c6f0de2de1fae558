//! Shared helpers of the CUDA kernel tests (tests/moe_cuda.rs, tests/cuda_ops.rs):
//! loading kernels or saying `skipped:`, seeded inputs, device copies, f16 comparisons.

#![allow(dead_code)]

pub mod attention;

use std::sync::OnceLock;
use std::time::SystemTime;

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera::ops::cuda::dense::DenseKernels;
use tessera::ops::cuda::{CudaDevice, CudaError};

/// The kernels `load`ed on device 0 once per test binary, or `None` after printing
/// `skipped: <why>` (no driver, no device, no NVRTC).
pub fn load_or_skip<K>(
    cell: &'static OnceLock<Result<K, String>>,
    load: fn(&CudaDevice) -> Result<K, CudaError>,
) -> Option<&'static K> {
    let k = cell.get_or_init(|| {
        let dev = CudaDevice::open(0).map_err(|e| e.to_string())?;
        load(&dev).map_err(|e| e.to_string())
    });
    match k {
        Ok(k) => Some(k),
        Err(reason) => {
            println!("skipped: {reason}");
            None
        }
    }
}

/// A fresh seed per run, printed; `env` (e.g. `TESSERA_MOE_SEED`) replays one.
pub fn seeded_rng(test: &str, env: &str) -> StdRng {
    let seed = std::env::var(env)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    println!("{test}: seed {seed} (replay with {env}={seed})");
    StdRng::seed_from_u64(seed)
}

pub fn uniform(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn up<T: DeviceRepr>(k: &DenseKernels, x: &[T]) -> CudaSlice<T> {
    k.stream.clone_htod(x).expect("copy to device")
}

pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(k: &DenseKernels, n: usize) -> CudaSlice<T> {
    k.stream.alloc_zeros(n.max(1)).expect("alloc")
}

pub fn down<T: DeviceRepr + Clone>(k: &DenseKernels, x: &CudaSlice<T>, n: usize) -> Vec<T> {
    let mut v = k.stream.clone_dtoh(x).expect("copy to host");
    v.truncate(n);
    v
}

/// Distance in f16 ulps (ordered bit patterns; two NaNs are equal).
pub fn ulps(a: f16, b: f16) -> u32 {
    if a.is_nan() && b.is_nan() {
        return 0;
    }
    let ord = |h: f16| {
        let bits = h.to_bits() as i32;
        if bits & 0x8000 != 0 {
            -(bits & 0x7fff)
        } else {
            bits
        }
    };
    ord(a).abs_diff(ord(b))
}

/// Every `got` within `max_ulps` of `want` rounded to f16; returns how many were exact.
pub fn assert_f16_close(got: &[f16], want: &[f32], max_ulps: u32, case: &str) -> usize {
    assert_eq!(got.len(), want.len(), "{case}");
    let mut exact = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = ulps(g, f16::from_f32(w));
        assert!(d <= max_ulps, "{case}: element {i}: {g} vs {w} ({d} ulps)");
        exact += (d == 0) as usize;
    }
    exact
}

pub fn assert_bits_eq(got: &[f32], want: &[f32], case: &str) {
    assert_eq!(got.len(), want.len(), "{case}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{case}: element {i}: {g} vs {w}"
        );
    }
}
