//! The few-row matmul path (single-stream decode: one to three activation rows): eight
//! weight rows per kernel call, with the weight rows ahead prefetched, since decode is
//! bound by how fast the weights arrive from memory.
//!
//! Exactness: `Kernel::dot_rows8` gives each row `Kernel::dot`'s bits, so every output is
//! the same as on the other paths (batch invariance).

use super::col_tasks;
use crate::ops::pool::{self, SharedOut};
use crate::ops::qdot::{Ahead, Kernel};

/// `matmul` for fewer than 4 activation rows (`xq: [m, kb]` quantized; single-stream
/// decode): each activation row against eight weight rows per kernel call (`dot_rows8`:
/// independent accumulations in flight; Q4_1, Q5_0 and Q8_0 have AVX-512 VNNI kernels
/// for it, bench/NOTES.md §26), the rows past the last multiple of eight one by one;
/// parallel over runs of weight rows as `tiled`.
///
/// Decode reads every weight once per token, so it is bound by how fast weights arrive:
/// on the first activation row each call asks for the eight rows `PREFETCH_AHEAD` ahead,
/// a few lines per block as it works (`Ahead`; bench/NOTES.md §23, §28).
pub(super) fn gemv<K: Kernel>(w: &[K::Weight], kb: usize, xq: &[K::Act], m: usize, y: &mut [f32]) {
    let n = w.len() / kb;
    let w_row = |col: usize| &w[col * kb..(col + 1) * kb];
    let y_out = SharedOut::new(y);
    let tasks = col_tasks(n);
    pool::run(tasks.len(), |task| {
        let cols = tasks.range(task);
        for r in 0..m {
            let x_row = &xq[r * kb..(r + 1) * kb];
            // SAFETY: columns `cols` of row `r` belong to this task alone.
            let out = unsafe { y_out.part(r * n + cols.start, cols.len()) };
            let mut octets = out.chunks_exact_mut(8);
            let mut col = cols.start;
            for eight in &mut octets {
                let ahead = if r == 0 {
                    let rows = (col + PREFETCH_AHEAD).min(cols.end)
                        ..(col + PREFETCH_AHEAD + 8).min(cols.end);
                    Ahead::new(&w[rows.start * kb..rows.end * kb], kb)
                } else {
                    Ahead::NONE
                };
                let rows: [&[K::Weight]; 8] = std::array::from_fn(|i| w_row(col + i));
                eight.copy_from_slice(&K::dot_rows8(rows, x_row, ahead));
                col += 8;
            }
            for o in octets.into_remainder() {
                *o = K::dot(w_row(col), x_row);
                col += 1;
            }
        }
    });
}

/// Weight rows between the eight rows a `gemv` call dots and the first of the eight it
/// prefetches. Measured on the 2-core Sapphire Rapids VM (SmolLM2 Q4_1, c=1 decode,
/// bench/NOTES.md §23, with four rows per call): 4, 8 and 12 rows within noise of each
/// other; without prefetch 62-68 tok/s, with `prefetcht2` 118-124, `prefetcht0` 96-97,
/// `prefetchnta` 67. With eight rows per call (§26), 8 and 16 ahead within noise. With
/// the lines spread over the call (`Ahead`, §28; Qwen2.5-0.5B-shaped Q4_K_M, from DRAM):
/// 8, 16 and 32 ahead within noise (26-40 tok/s), the call's own rows (0 ahead) 21-27.
pub(super) const PREFETCH_AHEAD: usize = 8;
