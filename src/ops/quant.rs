//! Weight matrices in their GGUF storage type and the batched quantized matmul.
//!
//! A `QMatrix` holds `rows` output features × `cols` input features, row-major, each row a
//! run of ggml blocks (`cols / block_size` blocks). `matmul` computes `y = x · Wᵀ` for a
//! whole step's activations at once: the activations are quantized ONCE to the weight
//! type's vec-dot type, then each weight row is read once and dotted with every
//! activation row while it is hot in L1 — the reason batching wins on a CPU.
//!
//! Batch invariance: every output element is one dot product of one weight row with one
//! quantized activation row, computed the same way whatever else is in the batch.
//!
//! Exactness: each quantized type is dotted by a `qdot::Kernel` in the float order of the
//! ggml kernel llama.cpp runs for one token (`vec_dot`, or for `repacked` matrices gemv).
//! Q4_1, Q8_0, Q5_0 and Q6_K matrices with several activation rows go through the panel
//! kernels (`panel`; AVX-512 VNNI or AVX2): same per-row float order, 16 rows per call.
//!
//! Submodules: `float` (F32/F16 weights), `gemv` (one to three activation rows: decode),
//! `panel` (the multi-row path), `requant` (float weights to Q8_0 at load, as
//! llama-quantize writes them).

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::GgmlDType;
use half::{bf16, f16};

use super::pool::{self, SharedOut};
use super::qdot::panel::{Q4KPanel, Q4_1Panel, Q5_0Panel, Q6KPanel, Q8_0Panel};
use super::qdot::{self, Ahead, Kernel};
use float::{matmul_float, matmul_float_here};
use gemv::{gemv, PREFETCH_AHEAD};
use panel::{matmul_panel, use_panels};
use std::cell::RefCell;

mod float;
mod gemv;
mod panel;
mod requant;

pub use requant::{quantize_row_q4_0_ref, quantize_row_q8_0_ref};

/// Why a tensor could not become a `QMatrix`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("tensor type {0:?} is not supported for matmul weights")]
    UnsupportedType(GgmlDType),
    #[error("tensor has {got} bytes, expected {expected} for {rows}x{cols} {dtype:?}")]
    SizeMismatch {
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("row length {cols} is not a multiple of the {dtype:?} block size {block}")]
    RaggedRow {
        dtype: GgmlDType,
        cols: usize,
        block: usize,
    },
}

/// Typed block storage; one variant per supported ggml type.
#[derive(Debug, Clone)]
pub enum QData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q4_0(Vec<BlockQ4_0>),
    Q4_1(Vec<BlockQ4_1>),
    Q5_0(Vec<BlockQ5_0>),
    Q5_1(Vec<BlockQ5_1>),
    Q8_0(Vec<BlockQ8_0>),
    Q2K(Vec<BlockQ2K>),
    Q3K(Vec<BlockQ3K>),
    Q4K(Vec<BlockQ4K>),
    Q5K(Vec<BlockQ5K>),
    Q6K(Vec<BlockQ6K>),
}

/// Runs `$body` with `$w` bound to the typed block slice of `$data`.
macro_rules! with_blocks {
    ($data:expr, $w:ident => $body:expr) => {
        match $data {
            QData::F32($w) => $body,
            QData::F16($w) => $body,
            QData::BF16($w) => $body,
            QData::Q4_0($w) => $body,
            QData::Q4_1($w) => $body,
            QData::Q5_0($w) => $body,
            QData::Q5_1($w) => $body,
            QData::Q8_0($w) => $body,
            QData::Q2K($w) => $body,
            QData::Q3K($w) => $body,
            QData::Q4K($w) => $body,
            QData::Q5K($w) => $body,
            QData::Q6K($w) => $body,
        }
    };
}

/// A `[rows, cols]` weight matrix in its storage type.
#[derive(Debug, Clone)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    data: QData,
}

impl QMatrix {
    /// Builds a matrix from ggml bytes: `rows` rows of `cols` elements of type `dtype`.
    pub fn from_ggml(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, QuantError> {
        let block = dtype.block_size();
        if !cols.is_multiple_of(block) {
            return Err(QuantError::RaggedRow { dtype, cols, block });
        }
        let expected = rows * (cols / block) * dtype.type_size();
        if bytes.len() != expected {
            return Err(QuantError::SizeMismatch {
                dtype,
                rows,
                cols,
                expected,
                got: bytes.len(),
            });
        }
        let data = match dtype {
            GgmlDType::F32 => QData::F32(cast_blocks(bytes)),
            GgmlDType::F16 => QData::F16(cast_blocks(bytes)),
            GgmlDType::BF16 => QData::BF16(cast_blocks(bytes)),
            GgmlDType::Q4_0 => QData::Q4_0(cast_blocks(bytes)),
            GgmlDType::Q4_1 => QData::Q4_1(cast_blocks(bytes)),
            GgmlDType::Q5_0 => QData::Q5_0(cast_blocks(bytes)),
            GgmlDType::Q5_1 => QData::Q5_1(cast_blocks(bytes)),
            GgmlDType::Q8_0 => QData::Q8_0(cast_blocks(bytes)),
            GgmlDType::Q2K => QData::Q2K(cast_blocks(bytes)),
            GgmlDType::Q3K => QData::Q3K(cast_blocks(bytes)),
            GgmlDType::Q4K => QData::Q4K(cast_blocks(bytes)),
            GgmlDType::Q5K => QData::Q5K(cast_blocks(bytes)),
            GgmlDType::Q6K => QData::Q6K(cast_blocks(bytes)),
            other => return Err(QuantError::UnsupportedType(other)),
        };
        Ok(Self { rows, cols, data })
    }

    /// Quantizes an f32 `[rows, cols]` matrix (used by tests and fixtures).
    pub fn quantize(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Self, QuantError> {
        let block = dtype.block_size();
        if !cols.is_multiple_of(block) {
            return Err(QuantError::RaggedRow { dtype, cols, block });
        }
        assert_eq!(
            values.len(),
            rows * cols,
            "quantize: values must be rows*cols"
        );
        fn q<T: GgmlType>(values: &[f32]) -> Vec<T> {
            let mut out = vec![T::zeros(); values.len() / T::BLCK_SIZE];
            T::from_float(values, &mut out);
            out
        }
        let data = match dtype {
            GgmlDType::F32 => QData::F32(values.to_vec()),
            GgmlDType::F16 => QData::F16(q(values)),
            GgmlDType::BF16 => QData::BF16(q(values)),
            GgmlDType::Q4_0 => QData::Q4_0(q(values)),
            GgmlDType::Q4_1 => QData::Q4_1(q(values)),
            GgmlDType::Q5_0 => QData::Q5_0(q(values)),
            GgmlDType::Q5_1 => QData::Q5_1(q(values)),
            GgmlDType::Q8_0 => QData::Q8_0(q(values)),
            GgmlDType::Q2K => QData::Q2K(q(values)),
            GgmlDType::Q3K => QData::Q3K(q(values)),
            GgmlDType::Q4K => QData::Q4K(q(values)),
            GgmlDType::Q5K => QData::Q5K(q(values)),
            GgmlDType::Q6K => QData::Q6K(q(values)),
            other => return Err(QuantError::UnsupportedType(other)),
        };
        Ok(Self { rows, cols, data })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> GgmlDType {
        with_blocks!(&self.data, w => elem_dtype(w))
    }

    /// The blocks as ggml stores them (what `from_ggml` takes back).
    pub fn ggml_bytes(&self) -> &[u8] {
        with_blocks!(&self.data, w => as_bytes(w))
    }

    /// Bytes of weight data (what one full pass over the matrix reads).
    pub fn size_bytes(&self) -> usize {
        with_blocks!(&self.data, w => std::mem::size_of_val(w.as_slice()))
    }

    /// Dequantizes row `row` into `out` (`[cols]`): the embedding lookup.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows && out.len() == self.cols);
        with_blocks!(&self.data, w => {
            let per_row = w.len() / self.rows;
            to_float(&w[row * per_row..(row + 1) * per_row], out)
        })
    }

    /// Stacks matrices with the same type and input width into one (fused QKV, gate+up).
    /// Returns `None` when types or widths differ, or when llama.cpp would dot a part in
    /// another order than the whole (see `repacked`).
    pub fn concat_rows(parts: &[&QMatrix]) -> Option<QMatrix> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.cols != first.cols || p.dtype() != first.dtype())
        {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let mut bytes = Vec::new();
        for p in parts {
            with_blocks!(&p.data, w => bytes.extend_from_slice(as_bytes(w)));
        }
        let fused = QMatrix::from_ggml(first.dtype(), rows, first.cols, &bytes).ok()?;
        let same_order = parts.iter().all(|p| p.repacked() == fused.repacked());
        same_order.then_some(fused)
    }

    /// llama.cpp would repack this matrix for its interleaved gemv kernels, so we dot it in
    /// their order (see `qdot::llama_cpp_repacks`).
    fn repacked(&self) -> bool {
        qdot::llama_cpp_repacks(self.dtype(), self.rows)
    }

    /// `matmul` for small matrices, on the calling thread: F32 and F16 without the pool
    /// and its tiles (same bits per element), other types through `matmul`. LoRA's
    /// rank-r factors take this path: their products are smaller than the tiling's cost.
    pub fn matmul_here(&self, x: &[f32], m: usize, y: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "matmul: x must be [m, cols]");
        assert_eq!(y.len(), m * self.rows, "matmul: y must be [m, rows]");
        let (n, k) = (self.rows, self.cols);
        match &self.data {
            QData::F32(w) => matmul_float_here(w, n, k, x, m, y),
            QData::F16(w) => matmul_float_here(w, n, k, x, m, y),
            _ => self.matmul(x, m, y),
        }
    }

    /// `y[m, rows] = x[m, cols] · Wᵀ`.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "matmul: x must be [m, cols]");
        assert_eq!(y.len(), m * self.rows, "matmul: y must be [m, rows]");
        let (n, k, packed) = (self.rows, self.cols, self.repacked());
        use qdot::*;
        match &self.data {
            QData::F32(w) => matmul_float(w, n, k, x, m, y),
            QData::F16(w) => matmul_float(w, n, k, x, m, y),
            QData::BF16(w) => matmul_typed(w, n, k, x, m, y),
            QData::Q4_0(w) if packed => matmul::<Q4_0Interleaved>(blocks::view_q4_0(w), k, x, m, y),
            QData::Q4_0(w) => matmul::<Q4_0Dot>(blocks::view_q4_0(w), k, x, m, y),
            QData::Q4_1(w) if use_panels::<Q4_1Panel>(m) => {
                matmul_panel::<Q4_1Panel>(qdot::blocks::view_q4_1(w), k, x, m, y)
            }
            QData::Q4_1(w) => matmul::<Q4_1Dot>(qdot::blocks::view_q4_1(w), k, x, m, y),
            QData::Q5_0(w) if use_panels::<Q5_0Panel>(m) => {
                matmul_panel::<Q5_0Panel>(blocks::view_q5_0(w), k, x, m, y)
            }
            QData::Q5_0(w) => matmul::<Q5_0Dot>(blocks::view_q5_0(w), k, x, m, y),
            QData::Q5_1(w) => matmul::<Q5_1Dot>(blocks::view_q5_1(w), k, x, m, y),
            QData::Q8_0(w) if use_panels::<Q8_0Panel>(m) => {
                matmul_panel::<Q8_0Panel>(blocks::view_q8_0(w), k, x, m, y)
            }
            QData::Q8_0(w) => matmul::<Q8_0Dot>(blocks::view_q8_0(w), k, x, m, y),
            QData::Q2K(w) if packed => matmul::<Q2KInterleaved>(blocks::view_q2k(w), k, x, m, y),
            QData::Q2K(w) => matmul::<Q2KDot>(blocks::view_q2k(w), k, x, m, y),
            QData::Q3K(w) => matmul::<Q3KDot>(blocks::view_q3k(w), k, x, m, y),
            QData::Q4K(w) if packed && use_panels::<Q4KPanel>(m) => {
                matmul_panel::<Q4KPanel>(blocks::view_q4k(w), k, x, m, y)
            }
            QData::Q4K(w) if packed => matmul::<Q4KInterleaved>(blocks::view_q4k(w), k, x, m, y),
            QData::Q4K(w) => matmul::<Q4KDot>(blocks::view_q4k(w), k, x, m, y),
            QData::Q5K(w) => matmul::<Q5KDot>(blocks::view_q5k(w), k, x, m, y),
            QData::Q6K(w) if use_panels::<Q6KPanel>(m) => {
                matmul_panel::<Q6KPanel>(blocks::view_q6k(w), k, x, m, y)
            }
            QData::Q6K(w) => matmul::<Q6KDot>(blocks::view_q6k(w), k, x, m, y),
        }
    }
}

fn elem_dtype<T: GgmlType>(_: &[T]) -> GgmlDType {
    T::DTYPE
}

fn to_float<T: GgmlType>(xs: &[T], out: &mut [f32]) {
    T::to_float(xs, out)
}

fn as_bytes<T>(blocks: &[T]) -> &[u8] {
    // SAFETY: ggml block types are plain `repr(C)` data (floats and byte arrays).
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
    }
}

/// Copies ggml bytes into a properly aligned `Vec` of blocks.
fn cast_blocks<T: GgmlType>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    assert_eq!(n * std::mem::size_of::<T>(), bytes.len());
    let mut out = vec![T::zeros(); n];
    // SAFETY: `out` has exactly `bytes.len()` bytes of plain-old-data blocks.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr() as *mut u8, bytes.len());
    }
    out
}

thread_local! {
    /// Quantized activations, reused across calls (u64 for alignment).
    static ACT_SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Weight rows per matmul task at least; the tasks themselves are `pool::Guided`'s, largest
/// first: the first ones stream long contiguous runs of weight rows (short runs defeat the
/// hardware prefetcher: measured 16-row tasks at ~0.65x the single-stream decode speed of
/// 256-row tasks).
const MIN_COLS_PER_TASK: usize = 32;

/// The tasks every matmul path splits its `n` weight rows into: `pool::Guided`'s, in
/// multiples of 8 rows (the 8-row interleaved layouts and the panel kernels' row runs).
pub(super) fn col_tasks(n: usize) -> pool::Guided {
    pool::Guided::new(n, 8, MIN_COLS_PER_TASK)
}

/// Activation rows processed together against one tile of weight rows: 16 rows of
/// quantized activations plus 16 weight rows stay in L1 for any width we serve.
const ROWS_PER_TILE: usize = 16;

/// Quantizes `x: [m, k]` into the thread-local scratch as `m * kb` blocks of `B` and runs
/// `f` on them.
fn with_quantized<B: Send + Sync, R>(
    x: &[f32],
    m: usize,
    k: usize,
    kb: usize,
    quantize: impl Fn(&[f32], &mut [B]) + Sync,
    f: impl FnOnce(&[B]) -> R,
) -> R {
    ACT_SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let words = (m * kb * std::mem::size_of::<B>()).div_ceil(8);
        if scratch.len() < words {
            scratch.resize(words, 0);
        }
        // SAFETY: large enough, u64-aligned, and fully written by `quantize` before use.
        let xq: &mut [B] =
            unsafe { std::slice::from_raw_parts_mut(scratch.as_mut_ptr() as *mut B, m * kb) };
        let xq_out = SharedOut::new(&mut *xq);
        pool::run(m, |r| {
            // SAFETY: task r alone takes row r's blocks.
            let q = unsafe { xq_out.part(r * kb, kb) };
            quantize(&x[r * k..(r + 1) * k], q);
        });
        f(xq)
    })
}

/// Calls `dot_tile(col, rows, out)` for every (column, row tile) in parallel over column
/// tiles, writing results into `y: [m, n]`.
fn tiled<F>(n: usize, m: usize, y: &mut [f32], dot_tile: F)
where
    F: Fn(usize, std::ops::Range<usize>, &mut [f32; ROWS_PER_TILE]) + Sync,
{
    let y_out = SharedOut::new(y);
    let tasks = col_tasks(n);
    pool::run(tasks.len(), |task| {
        let cols = tasks.range(task);
        let mut out = [0f32; ROWS_PER_TILE];
        for row0 in (0..m).step_by(ROWS_PER_TILE) {
            let rows = row0..(row0 + ROWS_PER_TILE).min(m);
            for col in cols.clone() {
                dot_tile(col, rows.clone(), &mut out);
                for (r, &v) in rows.clone().zip(out.iter()) {
                    // SAFETY: column `col` (of every row) belongs to this task alone.
                    unsafe { y_out.part(r * n + col, 1)[0] = v };
                }
            }
        }
    });
}

/// Types without a `qdot` kernel (BF16): candle's `vec_dot`.
fn matmul_typed<T: GgmlType>(w: &[T], n: usize, k: usize, x: &[f32], m: usize, y: &mut [f32]) {
    let kb = k / T::BLCK_SIZE;
    let quantize = <T::VecDotType as GgmlType>::from_float;
    with_quantized(x, m, k, kb, quantize, |xq| {
        tiled(n, m, y, |col, rows, out| {
            let w_row = &w[col * kb..(col + 1) * kb];
            for (o, r) in out.iter_mut().zip(rows) {
                *o = T::vec_dot(k, w_row, &xq[r * kb..(r + 1) * kb]);
            }
        })
    })
}

/// `y[m, n] = x[m, k] · Wᵀ` with a `qdot` kernel: the activations quantized once, then
/// each weight row dotted with 4 activation rows per unpack of its blocks (`dot4`), the
/// leftover rows one by one (`dot`, the same arithmetic per row).
fn matmul<K: Kernel>(w: &[K::Weight], k: usize, x: &[f32], m: usize, y: &mut [f32]) {
    let kb = k / K::BLOCK;
    let n = w.len() / kb;
    with_quantized(x, m, k, kb, K::quantize, |xq| {
        let row = |i: usize| &xq[i * kb..(i + 1) * kb];
        if m < 4 {
            return gemv::<K>(w, kb, xq, m, y);
        }
        tiled(n, m, y, |col, rows, out| {
            if rows.start == 0 {
                // The first row tile reads each weight row from memory (see `gemv`).
                let ahead = col + PREFETCH_AHEAD;
                if let Some(row) = w.get(ahead * kb..(ahead + 1) * kb) {
                    Ahead::new(row, 1).block(0);
                }
            }
            let w_row = &w[col * kb..(col + 1) * kb];
            let mut i = rows.start;
            while i + 4 <= rows.end {
                let dots = K::dot4(w_row, [row(i), row(i + 1), row(i + 2), row(i + 3)]);
                out[i - rows.start..i - rows.start + 4].copy_from_slice(&dots);
                i += 4;
            }
            for i in i..rows.end {
                out[i - rows.start] = K::dot(w_row, row(i));
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn reference(w: &[f32], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
            }
        }
        y
    }

    #[test]
    fn every_type_matches_f32_reference_within_quantization_error() {
        let (n, k, m) = (40, 512, 5);
        let w = random(n * k, 1);
        let x = random(m * k, 2);
        // Dot products have magnitude ~7; a wrong block layout gives errors of that size.
        let want = reference(&w, n, k, &x, m);
        let types = [
            (GgmlDType::F32, 1e-4),
            (GgmlDType::F16, 0.05),
            (GgmlDType::Q8_0, 0.15),
            (GgmlDType::Q5_0, 1.0),
            (GgmlDType::Q4_0, 2.0),
            (GgmlDType::Q4_1, 2.0),
            (GgmlDType::Q5_1, 1.0),
            (GgmlDType::Q2K, 6.0),
            (GgmlDType::Q3K, 3.0),
            (GgmlDType::Q4K, 2.0),
            (GgmlDType::Q5K, 1.0),
            (GgmlDType::Q6K, 0.6),
        ];
        for (dtype, tol) in types {
            let q = QMatrix::quantize(dtype, n, k, &w).unwrap();
            let mut y = vec![0.0; m * n];
            q.matmul(&x, m, &mut y);
            let err = y
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < tol, "{dtype:?}: max abs err {err} >= {tol}");
        }
    }

    #[test]
    fn rows_are_batch_invariant() {
        use GgmlDType::*;
        // 72 rows: the repacked order for Q4_0 / Q4_K / Q2_K; 70: vec_dot everywhere.
        for (dtype, n) in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K]
            .into_iter()
            .flat_map(|t| [(t, 70), (t, 72)])
        {
            let k = 512;
            let w = QMatrix::quantize(dtype, n, k, &random(n * k, 3)).unwrap();
            let x = random(9 * k, 4);
            let mut batched = vec![0.0; 9 * n];
            w.matmul(&x, 9, &mut batched);
            for i in 0..9 {
                let mut alone = vec![0.0; n];
                w.matmul(&x[i * k..(i + 1) * k], 1, &mut alone);
                let row = &batched[i * n..(i + 1) * n];
                assert_eq!(row, alone.as_slice(), "{dtype:?} {n} rows: row {i}");
            }
        }
    }

    #[test]
    fn matmul_here_gives_matmuls_bits() {
        // LoRA shapes: rank-16 A (16 x 576, 16 x 1536) and B (1536 x 16, 576 x 16);
        // 17 and 70: ragged against every SIMD width and tile; 131 x 40: rows shorter
        // than one 64-lane step (the lane path) over a ragged last lane chunk.
        for (n, k) in [
            (16, 576),
            (16, 1536),
            (1536, 16),
            (576, 16),
            (17, 70),
            (131, 40),
        ] {
            for dtype in [GgmlDType::F32, GgmlDType::F16, GgmlDType::Q8_0] {
                if k % dtype.block_size() != 0 {
                    continue;
                }
                let w = QMatrix::quantize(dtype, n, k, &random(n * k, 10)).unwrap();
                for m in [1, 3, 8, 19] {
                    let x = random(m * k, 11 + m as u64);
                    let (mut pooled, mut here) = (vec![0.0; m * n], vec![1.0; m * n]);
                    w.matmul(&x, m, &mut pooled);
                    w.matmul_here(&x, m, &mut here);
                    assert_eq!(pooled, here, "{dtype:?} {n}x{k}, {m} rows");
                }
            }
        }
    }

    #[test]
    fn from_ggml_checks_sizes_and_round_trips() {
        let q = QMatrix::quantize(GgmlDType::Q8_0, 4, 64, &random(256, 5)).unwrap();
        let bytes = with_blocks!(&q.data, w => as_bytes(w).to_vec());
        let back = QMatrix::from_ggml(GgmlDType::Q8_0, 4, 64, &bytes).unwrap();
        let (mut a, mut b) = (vec![0.0; 64], vec![0.0; 64]);
        q.dequantize_row(3, &mut a);
        back.dequantize_row(3, &mut b);
        assert_eq!(a, b);
        let err = QMatrix::from_ggml(GgmlDType::Q8_0, 4, 64, &bytes[1..]).unwrap_err();
        assert!(matches!(err, QuantError::SizeMismatch { .. }));
        let err = QMatrix::from_ggml(GgmlDType::Q8_0, 4, 60, &bytes).unwrap_err();
        assert!(matches!(err, QuantError::RaggedRow { .. }));
    }

    #[test]
    fn concat_rows_equals_separate_matmuls() {
        let k = 64;
        let a = QMatrix::quantize(GgmlDType::Q8_0, 3, k, &random(3 * k, 6)).unwrap();
        let b = QMatrix::quantize(GgmlDType::Q8_0, 5, k, &random(5 * k, 7)).unwrap();
        let ab = QMatrix::concat_rows(&[&a, &b]).unwrap();
        let x = random(2 * k, 8);
        let (mut ya, mut yb, mut yab) = (vec![0.0; 6], vec![0.0; 10], vec![0.0; 16]);
        a.matmul(&x, 2, &mut ya);
        b.matmul(&x, 2, &mut yb);
        ab.matmul(&x, 2, &mut yab);
        assert_eq!(&yab[0..3], &ya[0..3]);
        assert_eq!(&yab[3..8], &yb[0..5]);
        let c = QMatrix::quantize(GgmlDType::Q4_0, 3, k, &random(3 * k, 9)).unwrap();
        assert!(QMatrix::concat_rows(&[&a, &c]).is_none());
    }
}
