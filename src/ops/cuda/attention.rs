//! Paged attention on CUDA (kernels/paged_attention.cu), the twin of
//! `ops::attention::paged_attention`: decode and chunked prefill in one launch over the
//! flat batch, split-K (flash decoding) when the grid would otherwise be too small to
//! fill the GPU, with a reduce launch merging the splits.
//!
//! The split plan (`attention_splits`) depends on the batch shape `(T, n_heads, max_ctx)`
//! only; the caller sizes the scratch with `attention_scratch_len` for the same shape.
//! Row metadata comes from `ops::attention::row_meta` on the host.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};
use half::f16;

use super::dense::{shape_error, DenseKernels};
use super::{fits, CudaError};
use crate::ops::attention::KvGeometry;

/// Threads per block (`PA_THREADS` in the kernel).
const THREADS: u32 = 128;
/// Keys per tile (`PA_TILE`); a split's key count is a multiple of it.
const TILE: usize = 64;
/// Largest head_dim the kernel's shared memory and registers are sized for.
pub const MAX_HEAD_DIM: usize = 256;
/// A split covers at least this many keys (shorter ones cost more to merge than they save).
const MIN_SPLIT_KEYS: usize = 256;
/// Splits are added until the grid has about this many blocks (a few waves on an H100).
const TARGET_BLOCKS: usize = 1024;
const MAX_SPLITS: usize = 64;

/// Per-row metadata of one attention call, on the device (see `ops::attention::row_meta`).
pub struct AttnMeta<'a> {
    /// `[T]` keys visible to each query row.
    pub row_ctx: CudaView<'a, u32>,
    /// `[T]` start of the row's sequence's table in `block_tables`.
    pub row_table: CudaView<'a, u32>,
    /// The concatenated block tables of the step's sequences.
    pub block_tables: CudaView<'a, u32>,
    /// The largest `row_ctx` entry (rows that see more come out NaN).
    pub max_ctx: usize,
}

/// The kernel's `PaShape`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct PaShape {
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    block_size: i32,
    num_blocks: u32,
    table_len: u32,
    keys_per_split: i32,
    n_splits: i32,
    scale: f32,
}

// SAFETY: plain `repr(C)` scalars, laid out as the kernel's struct.
unsafe impl DeviceRepr for PaShape {}

/// `(splits, keys per split)` for `t` query rows of `n_heads` heads seeing at most
/// `max_ctx` keys: one split unless the rows alone leave the GPU idle, then as many as
/// fill about `TARGET_BLOCKS` blocks, each of at least `MIN_SPLIT_KEYS` keys.
fn split_plan(t: usize, n_heads: usize, max_ctx: usize) -> (usize, usize) {
    let max_ctx = max_ctx.max(1);
    let by_ctx = max_ctx.div_ceil(MIN_SPLIT_KEYS);
    let by_grid = TARGET_BLOCKS.div_ceil((t * n_heads).max(1));
    let splits = by_ctx.min(by_grid).clamp(1, MAX_SPLITS);
    let keys = max_ctx.div_ceil(splits).next_multiple_of(TILE);
    (max_ctx.div_ceil(keys), keys)
}

/// How many splits `paged_attention` uses for this batch shape (1: no reduce launch).
pub fn attention_splits(t: usize, n_heads: usize, max_ctx: usize) -> usize {
    split_plan(t, n_heads, max_ctx).0
}

/// f32 elements of scratch `paged_attention` needs for this batch shape: `(max, sum,
/// acc[head_dim])` per (row, head, split); 0 when it runs unsplit (any slice will do).
pub fn attention_scratch_len(t: usize, n_heads: usize, head_dim: usize, max_ctx: usize) -> usize {
    match split_plan(t, n_heads, max_ctx).0 {
        1 => 0,
        splits => t * n_heads * splits * (head_dim + 2),
    }
}

impl DenseKernels {
    /// Causal attention of every query row of `q: [T, n_heads * head_dim]` (f32, RoPE
    /// applied) over its sequence's cached keys (`k_cache`, `v_cache`: `[num_blocks,
    /// block_size, n_kv_heads, head_dim]` f16, this step's rows already written) into
    /// `out: [T, n_heads * head_dim]` (f16). `scratch`: at least
    /// `attention_scratch_len(T, n_heads, head_dim, meta.max_ctx)` elements.
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention(
        &self,
        q: &CudaView<'_, f32>,
        k_cache: &CudaSlice<f16>,
        v_cache: &CudaSlice<f16>,
        geo: KvGeometry,
        n_heads: usize,
        meta: &AttnMeta<'_>,
        scratch: &mut CudaSlice<f32>,
        out: &mut CudaViewMut<'_, f16>,
    ) -> Result<(), CudaError> {
        let (hd, t) = (geo.head_dim, meta.row_ctx.len());
        check_attention(q, (k_cache, v_cache), geo, n_heads, meta, out)?;
        if t == 0 {
            return Ok(());
        }
        let (splits, keys) = split_plan(t, n_heads, meta.max_ctx);
        let need = attention_scratch_len(t, n_heads, hd, meta.max_ctx);
        if scratch.len() < need {
            return Err(shape_error(
                "paged_attention",
                format!("scratch {} < {need} elements", scratch.len()),
            ));
        }
        let shape = PaShape {
            n_heads: fits(n_heads, "paged_attention: heads")?,
            n_kv_heads: fits(geo.n_kv_heads, "paged_attention: kv heads")?,
            head_dim: hd as i32,
            block_size: fits(geo.block_size, "paged_attention: block size")?,
            num_blocks: fits(
                k_cache.len() / (geo.block_size * geo.token_stride()),
                "paged_attention: cache blocks",
            )?,
            table_len: fits(meta.block_tables.len(), "paged_attention: block tables")?,
            keys_per_split: fits(keys, "paged_attention: keys per split")?,
            n_splits: splits as i32,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let (rows, heads) = (fits::<u32>(t, "paged_attention: rows")?, n_heads as u32);
        let mut launch = self.stream.launch_builder(&self.attn_split);
        launch.arg(q).arg(k_cache).arg(v_cache);
        launch
            .arg(&meta.row_ctx)
            .arg(&meta.row_table)
            .arg(&meta.block_tables);
        launch.arg(&mut *scratch).arg(&mut *out).arg(&shape);
        let cfg = LaunchConfig {
            grid_dim: (rows, heads, splits as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: shapes checked by `check_attention`; scratch holds [T, heads, splits,
        // hd + 2] when splits > 1 (and is not touched otherwise); table and block indices
        // are checked on the device.
        unsafe { launch.launch(cfg) }?;
        if splits == 1 {
            return Ok(());
        }
        let mut launch = self.stream.launch_builder(&self.attn_reduce);
        launch
            .arg(&*scratch)
            .arg(&meta.row_ctx)
            .arg(out)
            .arg(&shape);
        let cfg = LaunchConfig {
            grid_dim: (rows, heads, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: reads the partials the split launch wrote; out as above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}

/// Host-side limits and shapes of one `paged_attention` call.
fn check_attention(
    q: &CudaView<'_, f32>,
    (k_cache, v_cache): (&CudaSlice<f16>, &CudaSlice<f16>),
    geo: KvGeometry,
    n_heads: usize,
    meta: &AttnMeta<'_>,
    out: &CudaViewMut<'_, f16>,
) -> Result<(), CudaError> {
    let hd = geo.head_dim;
    if hd == 0 || hd > MAX_HEAD_DIM {
        return Err(CudaError::Limit(format!(
            "paged_attention supports head_dim 1..={MAX_HEAD_DIM}, given {hd}"
        )));
    }
    let block = geo.block_size * geo.token_stride();
    let t = meta.row_ctx.len();
    if geo.n_kv_heads == 0
        || n_heads == 0
        || !n_heads.is_multiple_of(geo.n_kv_heads)
        || block == 0
        || q.len() != t * n_heads * hd
        || out.len() != q.len()
        || meta.row_table.len() != t
        || k_cache.len() != v_cache.len()
        || !k_cache.len().is_multiple_of(block)
    {
        return Err(shape_error(
            "paged_attention",
            format!(
                "heads {n_heads} (a multiple of kv heads {}), q {} and out {} (must be rows \
                 {t} * heads * head_dim {hd}), row_table {}, caches {} and {} (must be equal \
                 multiples of block_size {} * kv heads * head_dim)",
                geo.n_kv_heads,
                q.len(),
                out.len(),
                meta.row_table.len(),
                k_cache.len(),
                v_cache.len(),
                geo.block_size
            ),
        ));
    }
    Ok(())
}
