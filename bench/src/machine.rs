//! The machine's physical limits, measured: memory bandwidth with a STREAM-style triad
//! (a[i] = b[i] + s·c[i], f64, one slice per thread, first-touched by that thread) and the
//! fp32 FMA peak (independent register-resident FMA chains on every thread, the widest
//! vectors the CPU has). Best of several repetitions; STREAM's byte count (3 × 8 per
//! element, no write-allocate).

use std::thread;
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineLimits {
    pub threads: usize,
    pub triad_bytes_per_array: usize,
    pub bandwidth_gb_s: f64,
    /// The instruction set of the FMA loop: avx512f, avx2+fma or scalar.
    pub fma_isa: String,
    pub fma_gflops: f64,
    /// The same FMA loop on one thread alone. `fma_gflops` well below `threads` times this
    /// means the threads shared cores while measured (on a VM: vCPUs placed on one core's
    /// two hyperthreads), which halves every compute-bound figure of the run; another
    /// guest's work on every core shows only as a lower figure here. 0 in reports written
    /// before it was measured.
    #[serde(default)]
    pub fma_gflops_one_thread: f64,
}

/// One measurement of the limits: threads, triad, FMA peak and how it scaled from one
/// thread (near 1× where the threads shared a core).
impl std::fmt::Display for MachineLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} threads; triad bandwidth {:.1} GB/s; fp32 FMA peak {:.1} GFLOP/s ({})",
            self.threads, self.bandwidth_gb_s, self.fma_gflops, self.fma_isa
        )?;
        match self.fma_scaling() {
            Some(x) => write!(
                f,
                "; one thread {:.1} GFLOP/s, so {} threads ran {x:.2}× one",
                self.fma_gflops_one_thread, self.threads
            ),
            None => Ok(()),
        }
    }
}

impl MachineLimits {
    /// `fma_gflops / fma_gflops_one_thread`: about `threads` on cores of its own, about 1
    /// where the threads shared one core; `None` when the one-thread figure is missing.
    pub fn fma_scaling(&self) -> Option<f64> {
        (self.fma_gflops_one_thread > 0.0).then(|| self.fma_gflops / self.fma_gflops_one_thread)
    }
}

/// Measures both limits over `threads` threads (0 = all available cores).
pub fn measure(threads: usize, triad_mib: usize, repeats: usize) -> MachineLimits {
    let threads = if threads == 0 {
        thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let bytes_per_array = triad_mib.max(1) * 1024 * 1024;
    let (isa, gflops) = fma_peak(threads, repeats.max(1));
    let (_, one_thread) = fma_peak(1, repeats.max(1));
    MachineLimits {
        threads,
        triad_bytes_per_array: bytes_per_array,
        bandwidth_gb_s: triad_bandwidth(threads, bytes_per_array / 8, repeats.max(1)),
        fma_isa: isa.to_string(),
        fma_gflops: gflops,
        fma_gflops_one_thread: one_thread,
    }
}

/// Triad bandwidth in GB/s (1e9 bytes) over arrays of `len` f64, split across threads.
pub fn triad_bandwidth(threads: usize, len: usize, repeats: usize) -> f64 {
    let per = len.div_ceil(threads);
    let best = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = per.min(len.saturating_sub(t * per));
                s.spawn(move || triad_thread(n, repeats))
            })
            .collect();
        // Each thread times its own repetitions; the slowest thread's time bounds the run.
        let times: Vec<Vec<f64>> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
        (0..repeats)
            .map(|r| times.iter().map(|t| t[r]).fold(0.0, f64::max))
            .fold(f64::INFINITY, f64::min)
    });
    (3 * 8 * len) as f64 / best / 1e9
}

/// Runs `repeats` triads over this thread's own `n` elements; returns each one's seconds.
fn triad_thread(n: usize, repeats: usize) -> Vec<f64> {
    let mut a = vec![0.0f64; n];
    let b = vec![1.0f64; n];
    let c = vec![2.0f64; n];
    let scalar = std::hint::black_box(3.0);
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            for ((ai, bi), ci) in a.iter_mut().zip(&b).zip(&c) {
                *ai = bi + scalar * ci;
            }
            std::hint::black_box(&mut a);
            t.elapsed().as_secs_f64()
        })
        .collect()
}

/// FMA chains per thread: enough independent accumulators to cover latency × ports.
const CHAINS: usize = 12;
/// Iterations of the inner loop per timing.
const FMA_ITERS: u64 = 20_000_000;

/// fp32 FMA peak in GFLOP/s (2 flops per lane per FMA), summed over threads.
pub fn fma_peak(threads: usize, repeats: usize) -> (&'static str, f64) {
    let (isa, lanes) = fma_isa();
    let best = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(move || fma_thread(repeats)))
            .collect();
        let times: Vec<f64> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
        times.into_iter().fold(0.0, f64::max)
    });
    let flops = 2.0 * (lanes * CHAINS) as f64 * FMA_ITERS as f64 * threads as f64;
    (isa, flops / best / 1e9)
}

fn fma_isa() -> (&'static str, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return ("avx512f", 16);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return ("avx2+fma", 8);
        }
    }
    ("scalar", 1)
}

/// Best seconds of `repeats` runs of the FMA loop on this thread.
fn fma_thread(repeats: usize) -> f64 {
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(fma_loop(std::hint::black_box(FMA_ITERS)));
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn fma_loop(iters: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { x86::fma_avx512(iters) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { x86::fma_avx2(iters) };
        }
    }
    fma_scalar(iters)
}

fn fma_scalar(iters: u64) -> f32 {
    let mut acc = [1.0f32; CHAINS];
    let (m, a) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = x.mul_add(m, a);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    /// `CHAINS` independent 16-lane FMA chains.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_avx512(iters: u64) -> f32 {
        let m = _mm512_set1_ps(0.999_999);
        let a = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, m, a);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for x in acc {
            sum = _mm512_add_ps(sum, x);
        }
        _mm512_reduce_add_ps(sum)
    }

    /// `CHAINS` independent 8-lane FMA chains.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_avx2(iters: u64) -> f32 {
        let m = _mm256_set1_ps(0.999_999);
        let a = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, m, a);
            }
        }
        let mut lanes = [0.0f32; 8];
        for x in acc {
            let mut l = [0.0f32; 8];
            _mm256_storeu_ps(l.as_mut_ptr(), x);
            for (s, v) in lanes.iter_mut().zip(l) {
                *s += v;
            }
        }
        lanes.iter().sum()
    }
}

/// Roofline bounds for a model of `weight_bytes` read per token and `matmul_params`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bounds {
    pub weight_bytes_per_token: u64,
    pub matmul_params: u64,
    /// Single-stream decode cannot beat bandwidth / bytes per token.
    pub decode_tok_per_s_bound: f64,
    /// No batch can process more tokens per second than FMA peak / (2 × params).
    pub flop_tok_per_s_bound: f64,
}

impl Bounds {
    pub fn new(limits: &MachineLimits, weight_bytes_per_token: u64, matmul_params: u64) -> Bounds {
        Bounds {
            weight_bytes_per_token,
            matmul_params,
            decode_tok_per_s_bound: limits.bandwidth_gb_s * 1e9
                / weight_bytes_per_token.max(1) as f64,
            flop_tok_per_s_bound: limits.fma_gflops * 1e9 / (2.0 * matmul_params.max(1) as f64),
        }
    }
}

/// What `tessera-bench machine` writes: the limits, and the bounds for a model if given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineReport {
    pub cpu: String,
    pub limits: MachineLimits,
    pub model: Option<crate::gguf::ModelSize>,
    pub bounds: Option<Bounds>,
}

/// The CPU's name from /proc/cpuinfo (`model name`), or "unknown".
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_positive_and_bounds_follow() {
        let bw = triad_bandwidth(2, 1 << 16, 2);
        assert!(bw.is_finite() && bw > 0.0);
        assert!(fma_scalar(1000).is_finite());
        let limits = MachineLimits {
            threads: 2,
            triad_bytes_per_array: 0,
            bandwidth_gb_s: 10.0,
            fma_isa: "test".into(),
            fma_gflops: 100.0,
            fma_gflops_one_thread: 50.0,
        };
        let b = Bounds::new(&limits, 100_000_000, 100_000_000);
        assert!((b.decode_tok_per_s_bound - 100.0).abs() < 1e-9);
        assert!((b.flop_tok_per_s_bound - 500.0).abs() < 1e-9);
        assert_eq!(limits.fma_scaling(), Some(2.0));
    }

    #[test]
    fn reports_without_the_one_thread_figure_still_load() {
        let old = r#"{"threads": 2, "triad_bytes_per_array": 8, "bandwidth_gb_s": 20.0,
            "fma_isa": "avx512f", "fma_gflops": 300.0}"#;
        let limits: MachineLimits = serde_json::from_str(old).unwrap();
        assert_eq!(limits.fma_gflops_one_thread, 0.0);
        assert_eq!(limits.fma_scaling(), None);
    }

    #[test]
    fn one_thread_peak_is_measured() {
        let limits = measure(2, 1, 1);
        assert!(limits.fma_gflops_one_thread > 0.0 && limits.fma_gflops_one_thread.is_finite());
        assert!(limits.fma_scaling().is_some());
    }
}
