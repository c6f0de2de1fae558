//! The MoE routing kernels on CUDA, each the twin of a CPU op in `ops::moe`:
//! `topk_softmax` (kernels/moe_topk_softmax.cu), `align` (kernels/moe_align.cu),
//! `permute` / `unpermute_weighted` (kernels/moe_permute.cu).
//!
//! Each op has a device-level `launch_*` (inputs and outputs already on the GPU; for
//! pipelines and timing) and a host-level convenience that copies in, launches, waits and
//! copies out (for tests). Limits are checked on the host, before any launch, and come
//! back as `CudaError::Limit`.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{CudaDevice, CudaError};
use crate::ops::moe::MoeAlign;

/// Most experts the kernels take (shared-memory tables are sized for it).
pub const MAX_EXPERTS: usize = 256;
/// Most experts per token `topk_softmax` takes.
pub const MAX_K: usize = 16;
/// Tokens per block of `moe_topk_softmax` (one warp each).
const WARPS: u32 = 4;
/// `moe_align` runs as one block of this many threads.
const ALIGN_THREADS: u32 = 1024;
/// Threads per block of the permute kernels (they stride over the hidden width).
const ROW_THREADS: u32 = 256;

const SOURCES: [(&str, &str); 3] = [
    (
        "moe_topk_softmax.cu",
        include_str!("../../../kernels/moe_topk_softmax.cu"),
    ),
    (
        "moe_align.cu",
        include_str!("../../../kernels/moe_align.cu"),
    ),
    (
        "moe_permute.cu",
        include_str!("../../../kernels/moe_permute.cu"),
    ),
];

/// The compiled MoE kernels on one device.
pub struct MoeKernels {
    pub stream: Arc<CudaStream>,
    topk_softmax: CudaFunction,
    align: CudaFunction,
    permute: CudaFunction,
    unpermute: CudaFunction,
}

/// Device buffers of one alignment (see `MoeAlign` for the meaning of each).
pub struct DeviceAlign {
    pub counts: CudaSlice<i32>,
    pub offsets: CudaSlice<i32>,
    /// `[capacity]`; only `offsets[E]` slots are meaningful.
    pub sorted: CudaSlice<i32>,
    pub inv: CudaSlice<i32>,
    pub block_expert: CudaSlice<i32>,
}

impl MoeKernels {
    /// Compiles the kernels for `dev` (NVRTC, once per process and device).
    pub fn load(dev: &CudaDevice) -> Result<Self, CudaError> {
        let [topk, align, permute] = SOURCES.map(|(file, src)| dev.compile(file, src));
        let (topk, align, permute) = (topk?, align?, permute?);
        Ok(Self {
            stream: Arc::clone(&dev.stream),
            topk_softmax: topk.load_function("moe_topk_softmax")?,
            align: align.load_function("moe_align")?,
            permute: permute.load_function("moe_permute")?,
            unpermute: permute.load_function("moe_unpermute_weighted")?,
        })
    }

    /// The kernel sources, for compile-only checks: `(file name, CUDA C source)`.
    pub fn sources() -> &'static [(&'static str, &'static str)] {
        &SOURCES
    }

    /// `logits: [t, e]` → `ids, weights: [t, k]` on the device.
    pub fn launch_topk_softmax(
        &self,
        logits: &CudaSlice<f32>,
        shape: (usize, usize, usize),
        renormalize: bool,
        ids: &mut CudaSlice<i32>,
        weights: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let (t, e, k) = shape;
        check_routing(t, e, k)?;
        if t == 0 {
            return Ok(());
        }
        let smem = (WARPS as usize * e * (4 + 1)).next_multiple_of(4) as u32;
        let cfg = LaunchConfig {
            grid_dim: ((t as u32).div_ceil(WARPS), 1, 1),
            block_dim: (32, WARPS, 1),
            shared_mem_bytes: smem,
        };
        let (t, e, k, renorm) = (t as i32, e as i32, k as i32, renormalize as i32);
        let mut launch = self.stream.launch_builder(&self.topk_softmax);
        launch.arg(logits).arg(ids).arg(weights);
        launch.arg(&t).arg(&e).arg(&k).arg(&renorm);
        // SAFETY: argument types and buffer sizes match the kernel's header (checked above).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Groups `ids: [n]` (each `< e`) by expert with padding to `block`.
    pub fn launch_align(
        &self,
        ids: &CudaSlice<i32>,
        n: usize,
        e: usize,
        block: usize,
    ) -> Result<DeviceAlign, CudaError> {
        if e == 0 || e > MAX_EXPERTS || block == 0 || n >= i32::MAX as usize / 2 {
            return Err(CudaError::Limit(format!(
                "moe_align needs 1 <= experts <= {MAX_EXPERTS}, block >= 1, pairs < 2^30. \
                 Given: experts {e}, block {block}, pairs {n}"
            )));
        }
        let capacity = n + e * (block - 1);
        let s = &self.stream;
        let mut out = DeviceAlign {
            counts: s.alloc_zeros(e)?,
            offsets: s.alloc_zeros(e + 1)?,
            sorted: s.alloc_zeros(capacity.max(1))?,
            inv: s.alloc_zeros(n.max(1))?,
            block_expert: s.alloc_zeros((capacity / block).max(1))?,
        };
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (ALIGN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n, e, block) = (n as i32, e as i32, block as i32);
        let mut launch = s.launch_builder(&self.align);
        launch.arg(ids).arg(&n).arg(&e).arg(&block);
        launch
            .arg(&mut out.counts)
            .arg(&mut out.offsets)
            .arg(&mut out.sorted);
        launch.arg(&mut out.inv).arg(&mut out.block_expert);
        // SAFETY: buffers sized per the kernel's header (capacity >= n + e * (block - 1)).
        unsafe { launch.launch(cfg) }?;
        Ok(out)
    }

    /// `out[p] = x[sorted[p] / k]` (zeros for padding); `x: [t, h]`, `out: [p, h]`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch_permute(
        &self,
        x: &CudaSlice<f32>,
        sorted: &CudaSlice<i32>,
        p: usize,
        (t, h, k): (usize, usize, usize),
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        if p == 0 || h == 0 {
            return Ok(());
        }
        let cfg = rows_config(p);
        let (t, h, k) = (t as i32, h as i32, k as i32);
        let mut launch = self.stream.launch_builder(&self.permute);
        launch.arg(x).arg(sorted).arg(out).arg(&t).arg(&h).arg(&k);
        // SAFETY: x is [t, h], sorted [>= p], out [>= p, h].
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[t] = Σ_r weights[t, r] · ys[inv[t, r]]` in rank order; `out: [t, h]`.
    pub fn launch_unpermute(
        &self,
        ys: &CudaSlice<f32>,
        inv: &CudaSlice<i32>,
        weights: &CudaSlice<f32>,
        (t, h, k): (usize, usize, usize),
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        if t == 0 || h == 0 {
            return Ok(());
        }
        let (h, k) = (h as i32, k as i32);
        let mut launch = self.stream.launch_builder(&self.unpermute);
        launch
            .arg(ys)
            .arg(inv)
            .arg(weights)
            .arg(out)
            .arg(&h)
            .arg(&k);
        // SAFETY: ys is [P, h] with every inv entry < P; inv, weights [t, k]; out [t, h].
        unsafe { launch.launch(rows_config(t)) }?;
        Ok(())
    }

    /// Host-level `ops::moe::topk_softmax`: returns `(ids, weights)`, each `[t, k]`.
    pub fn topk_softmax(
        &self,
        logits: &[f32],
        e: usize,
        k: usize,
        renormalize: bool,
    ) -> Result<(Vec<u32>, Vec<f32>), CudaError> {
        let t = logits.len() / e.max(1);
        check_routing(t, e, k)?;
        let s = &self.stream;
        let d_logits = s.clone_htod(logits)?;
        let mut ids = s.alloc_zeros::<i32>((t * k).max(1))?;
        let mut weights = s.alloc_zeros::<f32>((t * k).max(1))?;
        self.launch_topk_softmax(&d_logits, (t, e, k), renormalize, &mut ids, &mut weights)?;
        let ids = s.clone_dtoh(&ids)?;
        let mut weights = s.clone_dtoh(&weights)?;
        weights.truncate(t * k);
        Ok((ids[..t * k].iter().map(|&i| i as u32).collect(), weights))
    }

    /// Host-level `MoeAlign::compute`.
    pub fn align(&self, ids: &[u32], e: usize, block: usize) -> Result<MoeAlign, CudaError> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= e) {
            return Err(CudaError::Limit(format!("expert id {bad} >= experts {e}")));
        }
        let s = &self.stream;
        let ids_i32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let d_ids = s.clone_htod(&ids_i32)?;
        let d = self.launch_align(&d_ids, ids.len(), e, block)?;
        let to_u32 = |v: Vec<i32>| v.into_iter().map(|x| x as u32).collect::<Vec<u32>>();
        let offsets = to_u32(s.clone_dtoh(&d.offsets)?);
        let total = offsets[e] as usize;
        let mut sorted = to_u32(s.clone_dtoh(&d.sorted)?);
        sorted.truncate(total);
        let mut block_expert = to_u32(s.clone_dtoh(&d.block_expert)?);
        block_expert.truncate(total / block);
        let mut inv = to_u32(s.clone_dtoh(&d.inv)?);
        inv.truncate(ids.len());
        Ok(MoeAlign {
            counts: to_u32(s.clone_dtoh(&d.counts)?),
            offsets,
            sorted,
            inv,
            block_expert,
        })
    }

    /// Host-level `ops::moe::permute`.
    pub fn permute(
        &self,
        x: &[f32],
        h: usize,
        k: usize,
        sorted: &[u32],
    ) -> Result<Vec<f32>, CudaError> {
        let s = &self.stream;
        let sorted_i32: Vec<i32> = sorted.iter().map(|&i| i as i32).collect();
        let (d_x, d_sorted) = (s.clone_htod(x)?, s.clone_htod(&sorted_i32)?);
        let mut out = s.alloc_zeros::<f32>((sorted.len() * h).max(1))?;
        let t = x.len() / h.max(1);
        self.launch_permute(&d_x, &d_sorted, sorted.len(), (t, h, k), &mut out)?;
        let mut out = s.clone_dtoh(&out)?;
        out.truncate(sorted.len() * h);
        Ok(out)
    }

    /// Host-level `ops::moe::unpermute_weighted`; returns `[t, h]`.
    pub fn unpermute_weighted(
        &self,
        ys: &[f32],
        inv: &[u32],
        weights: &[f32],
        k: usize,
        h: usize,
    ) -> Result<Vec<f32>, CudaError> {
        let p = ys.len() / h.max(1);
        if inv.len() != weights.len() || inv.iter().any(|&i| i as usize >= p) {
            return Err(CudaError::Limit(format!(
                "unpermute: inv and weights must be [t, k] with entries < {p} rows"
            )));
        }
        let s = &self.stream;
        let inv_i32: Vec<i32> = inv.iter().map(|&i| i as i32).collect();
        let (d_ys, d_inv, d_w) = (
            s.clone_htod(ys)?,
            s.clone_htod(&inv_i32)?,
            s.clone_htod(weights)?,
        );
        let t = inv.len() / k;
        let mut out = s.alloc_zeros::<f32>((t * h).max(1))?;
        self.launch_unpermute(&d_ys, &d_inv, &d_w, (t, h, k), &mut out)?;
        let mut out = s.clone_dtoh(&out)?;
        out.truncate(t * h);
        Ok(out)
    }
}

fn check_routing(t: usize, e: usize, k: usize) -> Result<(), CudaError> {
    if e == 0 || e > MAX_EXPERTS || k == 0 || k > e.min(MAX_K) || t > i32::MAX as usize / e {
        return Err(CudaError::Limit(format!(
            "moe_topk_softmax needs 1 <= experts <= {MAX_EXPERTS} and 1 <= k <= min(experts, \
             {MAX_K}). Given: experts {e}, k {k}, tokens {t}"
        )));
    }
    Ok(())
}

fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}
