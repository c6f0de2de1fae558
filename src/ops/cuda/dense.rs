//! The dense decoder-layer kernels on CUDA (kernels/dense.cu), each the twin of a CPU op:
//! `embed` (the embedding lookup), `rms_norm` / `rms_norm_rows` (`ops::norm::rms_norm`),
//! `add_bias` / `add_assign` (`ops`), `rope` (`ops::rope::RopeTable::apply`), `silu_mul`
//! (`ops::silu_mul`), `cast_f16`, `write_kv` (`ops::attention::write_kv`); paged attention
//! (kernels/paged_attention.cu) is in `super::attention`, on the same struct.
//!
//! All methods are device-level: inputs and outputs already on the GPU, launched on
//! `stream` without waiting. Sizes are checked on the host before any launch and come back
//! as `CudaError::Limit`; f16 tensors are `half::f16`. The norms and SiLU write f16 (the
//! GEMMs' input type); the residual stream, Q/K/V and RoPE stay f32.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};
use half::f16;

use super::{fits, CudaDevice, CudaError};

pub use super::attention::{attention_scratch_len, attention_splits, AttnMeta};
pub use crate::ops::attention::row_meta;

/// Threads per block of every dense kernel.
const THREADS: u32 = 256;
/// Most blocks of an element-wise launch (they stride over the rest).
const MAX_BLOCKS: usize = 1 << 16;

pub(super) const SOURCES: [(&str, &str); 2] = [
    ("dense.cu", include_str!("../../../kernels/dense.cu")),
    (
        "paged_attention.cu",
        include_str!("../../../kernels/paged_attention.cu"),
    ),
];

/// The compiled dense kernels (and paged attention) on one device.
pub struct DenseKernels {
    pub stream: Arc<CudaStream>,
    embed: CudaFunction,
    rms_norm: CudaFunction,
    rms_norm_rows: CudaFunction,
    add_bias: CudaFunction,
    add_assign: CudaFunction,
    cast: CudaFunction,
    silu_mul: CudaFunction,
    rope: CudaFunction,
    write_kv: CudaFunction,
    pub(super) attn_split: CudaFunction,
    pub(super) attn_reduce: CudaFunction,
}

impl DenseKernels {
    /// Compiles the kernels for `dev` (NVRTC, once per process and device).
    pub fn load(dev: &CudaDevice) -> Result<Self, CudaError> {
        let [dense, attn] = SOURCES.map(|(file, src)| dev.compile(file, src));
        let (dense, attn) = (dense?, attn?);
        let f = |name: &str| dense.load_function(name);
        Ok(Self {
            stream: Arc::clone(&dev.stream),
            embed: f("embed_f16")?,
            rms_norm: f("rms_norm_f16")?,
            rms_norm_rows: f("rms_norm_rows_f16")?,
            add_bias: f("add_bias_f32")?,
            add_assign: f("add_assign_f32")?,
            cast: f("cast_f16")?,
            silu_mul: f("silu_mul_f16")?,
            rope: f("rope_f32")?,
            write_kv: f("write_kv_f16")?,
            attn_split: attn.load_function("paged_attention_split")?,
            attn_reduce: attn.load_function("paged_attention_reduce")?,
        })
    }

    /// The kernel sources, for compile-only checks: `(file name, CUDA C source)`.
    pub fn sources() -> &'static [(&'static str, &'static str)] {
        &SOURCES
    }

    /// `out[t] = table[ids[t]]` widened to f32. `table: [vocab, hidden]`, `ids: [T]`,
    /// `out: [T, hidden]`. An id >= vocab gives a NaN row.
    pub fn embed(
        &self,
        table: &CudaView<'_, f16>,
        ids: &CudaView<'_, u32>,
        hidden: usize,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), CudaError> {
        if hidden == 0 || !table.len().is_multiple_of(hidden) || out.len() != ids.len() * hidden {
            return Err(shape_error(
                "embed",
                format!(
                    "table {} (must be [vocab, {hidden}]), ids {}, out {} (must be ids * hidden)",
                    table.len(),
                    ids.len(),
                    out.len()
                ),
            ));
        }
        let vocab: u32 = fits(table.len() / hidden, "embed: vocab")?;
        let hidden: i32 = fits(hidden, "embed: hidden")?;
        let Some(cfg) = rows_config(ids.len())? else {
            return Ok(());
        };
        let mut launch = self.stream.launch_builder(&self.embed);
        launch.arg(table).arg(ids).arg(out).arg(&hidden).arg(&vocab);
        // SAFETY: table [vocab, hidden], ids [T], out [T, hidden] (checked above).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `ops::norm::rms_norm` of each row of `x: [R, width]` into `out: [R, width]` (f16);
    /// `width` = `weight.len()`.
    pub fn rms_norm(
        &self,
        x: &CudaView<'_, f32>,
        weight: &CudaView<'_, f32>,
        eps: f32,
        out: &mut CudaViewMut<'_, f16>,
    ) -> Result<(), CudaError> {
        let width = weight.len();
        if width == 0 || !x.len().is_multiple_of(width) || out.len() != x.len() {
            return Err(shape_error(
                "rms_norm",
                format!("x {}, weight {width}, out {}", x.len(), out.len()),
            ));
        }
        let rows = x.len() / width;
        let width: i32 = fits(width, "rms_norm: width")?;
        let Some(cfg) = rows_config(rows)? else {
            return Ok(());
        };
        let mut launch = self.stream.launch_builder(&self.rms_norm);
        launch.arg(x).arg(weight).arg(&eps).arg(out).arg(&width);
        // SAFETY: x and out [R, width], weight [width].
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `rms_norm` of the rows `rows: [S]` of `x: [T, width]` into `out: [S, width]` (e.g.
    /// the last row of each sequence, for the LM head). A row index >= T gives NaN.
    pub fn rms_norm_rows(
        &self,
        x: &CudaView<'_, f32>,
        rows: &CudaView<'_, u32>,
        weight: &CudaView<'_, f32>,
        eps: f32,
        out: &mut CudaViewMut<'_, f16>,
    ) -> Result<(), CudaError> {
        let width = weight.len();
        if width == 0 || !x.len().is_multiple_of(width) || out.len() != rows.len() * width {
            return Err(shape_error(
                "rms_norm_rows",
                format!(
                    "x {}, rows {}, weight {width}, out {} (must be rows * width)",
                    x.len(),
                    rows.len(),
                    out.len()
                ),
            ));
        }
        let n_rows: u32 = fits(x.len() / width, "rms_norm_rows: rows of x")?;
        let width: i32 = fits(width, "rms_norm_rows: width")?;
        let Some(cfg) = rows_config(rows.len())? else {
            return Ok(());
        };
        let mut launch = self.stream.launch_builder(&self.rms_norm_rows);
        launch.arg(x).arg(rows).arg(weight).arg(&eps).arg(out);
        launch.arg(&width).arg(&n_rows);
        // SAFETY: x [n_rows, width], rows [S], out [S, width]; row indices checked on device.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Adds `bias: [width]` to every row of `x: [R, width]` in place.
    pub fn add_bias(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        bias: &CudaView<'_, f32>,
    ) -> Result<(), CudaError> {
        let width = bias.len();
        if width == 0 || !x.len().is_multiple_of(width) {
            return Err(shape_error(
                "add_bias",
                format!("x {} is not [R, {width}]", x.len()),
            ));
        }
        let Some(cfg) = elementwise_config(x.len()) else {
            return Ok(());
        };
        let n = x.len() as u64;
        let width: i32 = fits(width, "add_bias: width")?;
        let mut launch = self.stream.launch_builder(&self.add_bias);
        launch.arg(x).arg(bias).arg(&n).arg(&width);
        // SAFETY: x [n], bias [width] with width dividing n.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `x[i] += y[i]` (residual add).
    pub fn add_assign(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        y: &CudaView<'_, f32>,
    ) -> Result<(), CudaError> {
        same_len("add_assign", x.len(), y.len())?;
        let Some(cfg) = elementwise_config(x.len()) else {
            return Ok(());
        };
        let n = x.len() as u64;
        let mut launch = self.stream.launch_builder(&self.add_assign);
        launch.arg(x).arg(y).arg(&n);
        // SAFETY: x and y both [n].
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out[i] = f16(x[i])`, rounded to nearest even.
    pub fn cast_f16(
        &self,
        x: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, f16>,
    ) -> Result<(), CudaError> {
        same_len("cast_f16", x.len(), out.len())?;
        let Some(cfg) = elementwise_config(x.len()) else {
            return Ok(());
        };
        let n = x.len() as u64;
        let mut launch = self.stream.launch_builder(&self.cast);
        launch.arg(x).arg(out).arg(&n);
        // SAFETY: x and out both [n].
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `out = f16(silu(gate) * up)` as `ops::silu_mul` over rows of `width` (the last
    /// `width % 16` elements of each row use libm's expf there, so the width matters).
    pub fn silu_mul(
        &self,
        gate: &CudaView<'_, f32>,
        up: &CudaView<'_, f32>,
        width: usize,
        out: &mut CudaViewMut<'_, f16>,
    ) -> Result<(), CudaError> {
        same_len("silu_mul", gate.len(), up.len())?;
        same_len("silu_mul", gate.len(), out.len())?;
        if width == 0 || !gate.len().is_multiple_of(width) {
            return Err(shape_error(
                "silu_mul",
                format!("gate {} is not [R, {width}]", gate.len()),
            ));
        }
        let Some(cfg) = elementwise_config(gate.len()) else {
            return Ok(());
        };
        let n = gate.len() as u64;
        let width: i32 = fits(width, "silu_mul: width")?;
        let mut launch = self.stream.launch_builder(&self.silu_mul);
        launch.arg(gate).arg(up).arg(out).arg(&n).arg(&width);
        // SAFETY: gate, up and out all [n], width divides n.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// RoPE in place on `x: [T, n_heads * head_dim]`, row `t` at `positions[t]`, with
    /// `RopeTable::cos_sin()` tables `[max_pos, rot_dims / 2]` on the device. `neox`: the
    /// half-split layout (`RopeStyle::Neox`), else interleaved pairs. Dims >= `rot_dims`
    /// are untouched; a position >= max_pos gives NaN in the rotated dims.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        n_heads: usize,
        head_dim: usize,
        rot_dims: usize,
        neox: bool,
        positions: &CudaView<'_, u32>,
        cos: &CudaView<'_, f32>,
        sin: &CudaView<'_, f32>,
    ) -> Result<(), CudaError> {
        let half = rot_dims / 2;
        if n_heads == 0
            || rot_dims == 0
            || !rot_dims.is_multiple_of(2)
            || rot_dims > head_dim
            || x.len() != positions.len() * n_heads * head_dim
            || cos.len() != sin.len()
            || !cos.len().is_multiple_of(half)
        {
            return Err(shape_error(
                "rope",
                format!(
                    "x {} (must be positions {} * heads {n_heads} * head_dim {head_dim}), \
                     rot_dims {rot_dims} (even, 2..=head_dim), cos {} and sin {} \
                     (must be [max_pos, rot_dims / 2])",
                    x.len(),
                    positions.len(),
                    cos.len(),
                    sin.len()
                ),
            ));
        }
        let max_pos: u32 = fits(cos.len() / half, "rope: table positions")?;
        let dims: [i32; 3] = [
            fits(n_heads, "rope: heads")?,
            fits(head_dim, "rope: head_dim")?,
            fits(rot_dims, "rope: rot_dims")?,
        ];
        let neox = neox as i32;
        let Some(cfg) = rows_config(positions.len())? else {
            return Ok(());
        };
        let mut launch = self.stream.launch_builder(&self.rope);
        launch.arg(x).arg(positions).arg(cos).arg(sin);
        launch
            .arg(&dims[0])
            .arg(&dims[1])
            .arg(&dims[2])
            .arg(&neox)
            .arg(&max_pos);
        // SAFETY: x [T, n_heads * head_dim]; cos, sin [max_pos, half]; positions checked
        // against max_pos on the device.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Writes rows of `k`, `v` (`[T, kv_stride]`, f32) into cache slots `slots: [T]` of
    /// `k_cache`, `v_cache` (`[n_slots, kv_stride]` f16, i.e. `[num_blocks, block_size,
    /// n_kv_heads, head_dim]`). A slot >= n_slots is skipped.
    pub fn write_kv(
        &self,
        k: &CudaView<'_, f32>,
        v: &CudaView<'_, f32>,
        slots: &CudaView<'_, u32>,
        kv_stride: usize,
        k_cache: &mut CudaSlice<f16>,
        v_cache: &mut CudaSlice<f16>,
    ) -> Result<(), CudaError> {
        if kv_stride == 0
            || k.len() != slots.len() * kv_stride
            || v.len() != k.len()
            || k_cache.len() != v_cache.len()
            || !k_cache.len().is_multiple_of(kv_stride)
        {
            return Err(shape_error(
                "write_kv",
                format!(
                    "k {}, v {} (must be slots {} * stride {kv_stride}), caches {} and {} \
                     (must be equal multiples of the stride)",
                    k.len(),
                    v.len(),
                    slots.len(),
                    k_cache.len(),
                    v_cache.len()
                ),
            ));
        }
        let n_slots: u32 = fits(k_cache.len() / kv_stride, "write_kv: cache slots")?;
        let stride: i32 = fits(kv_stride, "write_kv: stride")?;
        let Some(cfg) = rows_config(slots.len())? else {
            return Ok(());
        };
        let mut launch = self.stream.launch_builder(&self.write_kv);
        launch.arg(k).arg(v).arg(slots).arg(k_cache).arg(v_cache);
        launch.arg(&stride).arg(&n_slots);
        // SAFETY: k, v [T, stride]; caches [n_slots, stride]; slots checked on the device.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}

pub(super) fn shape_error(op: &str, detail: String) -> CudaError {
    CudaError::Limit(format!("{op}: wrong shapes: {detail}"))
}

fn same_len(op: &str, a: usize, b: usize) -> Result<(), CudaError> {
    match a == b {
        true => Ok(()),
        false => Err(shape_error(op, format!("lengths {a} and {b} differ"))),
    }
}

/// One block per row; `None` for zero rows (nothing to launch).
fn rows_config(rows: usize) -> Result<Option<LaunchConfig>, CudaError> {
    let grid: u32 = fits(rows, "rows")?;
    Ok((grid > 0).then_some(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }))
}

/// Blocks striding over `n` elements; `None` for none.
fn elementwise_config(n: usize) -> Option<LaunchConfig> {
    (n > 0).then_some(LaunchConfig {
        grid_dim: (n.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}
