//! The multi-row matmul path: activations quantized straight into 8-row panels
//! (`qdot::panel`), then each weight row dotted with up to 32 activation rows (4 groups,
//! `RowPanel::max_groups`) per kernel call while it sits in L1: the more groups per call,
//! the fewer times each weight block is unpacked.
//!
//! Loop order per task (a contiguous run of weight rows, `pool::Guided`'s, largest
//! first): blocks of at most `BLOCK_WEIGHT_BYTES` of weight rows; in each, for each run
//! of 4 (then 2, then 1) row groups, chunks of `COLS_PER_CHUNK` weight rows, every weight
//! row of the chunk → a `[rows][COLS_PER_CHUNK]` tile, written out as contiguous row runs. Each weight row is
//! read from memory once per matmul (the block stays in L2 across the runs of groups), a
//! run's 4 panels stay in L1 across the block, and a run's tiles fill its rows of `y`
//! left to right. Short weight rows are asked for a few rows ahead on the first run over
//! a block (`prefetch_row_ahead`). Kernels that can take a weight row unpacked ahead
//! (`RowPanel::prepares`: the VNNI Q8_0 / Q5_0 one) get each row of the block unpacked
//! once before the runs when there are several (blocks then of `BLOCK_PREPARED_BYTES`),
//! rather than once per run.
//!
//! Exactness: every output is the panel kernel's row result, bit-identical to
//! `Kernel::dot` of that weight row and activation row (see `qdot::panel`).

use std::cell::RefCell;

use super::col_tasks;
use crate::ops::pool;
use crate::ops::pool::SharedOut;
use crate::ops::qdot::panel::{chosen_isa, PanelIsa, PreparedBlock, RowPanel, GROUP};
use crate::ops::qdot::Ahead;

/// Weight rows per output tile: 16 rows of ≤ 48 blocks stay in L1.
const COLS_PER_CHUNK: usize = 16;
/// Most row groups per kernel call.
const GROUPS_PER_CALL: usize = 4;
/// Weight rows ahead of the current one that a task asks for on its first run of groups
/// over a block, when rows are at most `PREFETCH_MAX_ROW_BYTES` long. In decode every weight row
/// comes from memory once per step, and for rows of a few hundred bytes the hardware
/// prefetcher leaves part of that wait exposed (the Qwen-shaped lm_head at m = 32 ran 7.4
/// ns per weight block with its weights in L2, 9.5-9.75 from memory). Cold matmuls at
/// m = 32 (bench/NOTES.md §36), ns per weight block: VNNI Q8_0 49152×576 9.24-9.61 →
/// 8.29-8.39, the Qwen-shaped lm_head 8.18 → 7.49, VNNI Q5_0 4864×896 8.46-8.71 →
/// 8.14-8.29, AVX2 Q8_0 16.06 → 15.09, AVX2 Q4_1 1536×576 14.18-14.67 → 13.99-14.21.
const PREFETCH_ROWS_AHEAD: usize = 3;
/// Longer rows are left to the hardware prefetcher: asking for the Q6_K rows of
/// ffn_down (4 KiB) ahead, whole or only their first 8-16 lines, made that matmul 3-11 %
/// slower.
const PREFETCH_MAX_ROW_BYTES: usize = 1024;
/// Weight bytes a task's block of rows holds at most (whole chunks, at least one): the
/// runs of groups go over a block in turn, so it must stay in L2, and the wider it is
/// the longer the runs of `y` a run of groups writes in order. With chunks in the outer
/// loop instead (every group over a chunk, then the next chunk), each tile row landed on
/// a line of its own. In process (bench/NOTES.md §37): Qwen-shaped 8 × 128-token
/// prefills 2.86-2.96 → 2.80-2.88 s, the default model's 4 × 512-token prefills
/// 2.23-2.30 → 2.16-2.20 s, both models at c = 32 +4 % (1 MiB blocks: no better).
const BLOCK_WEIGHT_BYTES: usize = 256 * 1024;
/// Prepared bytes (`RowPanel::prepare`) a task's block of rows holds at most when the
/// kernels take prepared rows and the matmul has more than one run of groups: each row is
/// unpacked once, before the runs, and every run reads it from L2 (192 bytes per block,
/// against Q5_0's 22 and Q8_0's 34 as stored). Q5_0 at m = 128 (`bench_panel_vs_dot4`,
/// as a multiple of the unchanged `dot4` path's speed): 4864×896 3.95-4.12× → 4.39-4.45×,
/// 896×896 3.81-3.91× → 4.11-4.27×; blocks of 192 KiB or 1 MiB were no better.
const BLOCK_PREPARED_BYTES: usize = 384 * 1024;
/// Fewer rows than this go through `Kernel::dot`/`dot4`: a padded group costs more.
pub(super) const MIN_PANEL_ROWS: usize = 6;

/// One cache line of panel scratch (keeps panel blocks 64-byte aligned).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

thread_local! {
    /// Panels of the current matmul, reused across calls.
    static PANEL_SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    /// A task's block of prepared weight rows (`BLOCK_PREPARED_BYTES`), on each thread
    /// of the pool.
    static PREPARED_SCRATCH: RefCell<Vec<PreparedBlock>> = const { RefCell::new(Vec::new()) };
}

/// Whether `m` activation rows go through `P`'s panel kernels at this process's level.
pub(super) fn use_panels<P: RowPanel>(m: usize) -> bool {
    m >= MIN_PANEL_ROWS && chosen_isa::<P>().is_some()
}

/// `y[m, n] = x[m, k] · Wᵀ` for `w: [n, k / P::ELEMS]` blocks. Callers check `use_panels`.
pub(super) fn matmul_panel<P: RowPanel>(
    w: &[P::Weight],
    k: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) {
    let isa = chosen_isa::<P>().expect("matmul_panel: no panel kernels at this level");
    assert!(std::mem::align_of::<P::Block>() <= std::mem::align_of::<Line>());
    let kb = k / P::ELEMS;
    let n = w.len() / kb;
    let groups = m.div_ceil(GROUP);
    PANEL_SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let lines = (groups * kb * std::mem::size_of::<P::Block>()).div_ceil(64);
        if scratch.len() < lines {
            scratch.resize(lines, Line([0; 64]));
        }
        // SAFETY: large enough and 64-byte aligned (checked above); panel blocks are
        // plain integers and floats, valid for any initialized bytes.
        let panels: &mut [P::Block] = unsafe {
            std::slice::from_raw_parts_mut(scratch.as_mut_ptr() as *mut P::Block, groups * kb)
        };
        let panels_out = SharedOut::new(&mut *panels);
        pool::run(groups, |g| {
            // SAFETY: task g alone takes group g's blocks.
            let out = unsafe { panels_out.part(g * kb, kb) };
            let rows = g * GROUP..((g + 1) * GROUP).min(m);
            P::quantize_group(&x[rows.start * k..rows.end * k], k, isa, out);
        });
        panel_tiles::<P>(isa, w, n, kb, panels, m, y);
    })
}

/// Runs `isa`'s kernels over all (weight row chunk, run of groups) tiles in parallel over
/// runs of weight rows, writing `y: [m, n]`.
fn panel_tiles<P: RowPanel>(
    isa: PanelIsa,
    w: &[P::Weight],
    n: usize,
    kb: usize,
    panels: &[P::Block],
    m: usize,
    y: &mut [f32],
) {
    let y_out = SharedOut::new(y);
    let tasks = col_tasks(n);
    let groups = m.div_ceil(GROUP);
    let row_bytes = kb * std::mem::size_of::<P::Weight>();
    let prefetch = row_bytes <= PREFETCH_MAX_ROW_BYTES;
    let runs = group_runs(groups, P::max_groups(isa));
    let prepared = runs.len() > 1 && P::prepares(isa);
    let block_cols = if prepared {
        cols_per_block(
            BLOCK_PREPARED_BYTES,
            kb * std::mem::size_of::<PreparedBlock>(),
        )
    } else {
        cols_per_block(BLOCK_WEIGHT_BYTES, row_bytes)
    };
    pool::run(tasks.len(), |task| {
        PREPARED_SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let cols = tasks.range(task);
            let mut tile = [[0f32; COLS_PER_CHUNK]; GROUPS_PER_CALL * GROUP];
            for b0 in cols.clone().step_by(block_cols) {
                let block = b0..(b0 + block_cols).min(cols.end);
                if prepared {
                    let ahead = prefetch.then_some(cols.end);
                    // SAFETY: `chosen_isa` gave `isa`, and `prepares(isa)`.
                    unsafe { prepare_rows::<P>(isa, w, kb, block.clone(), ahead, &mut scratch) };
                }
                for &(g, take) in &runs {
                    let group = |i: usize| &panels[(g + i) * kb..(g + i + 1) * kb];
                    for c0 in block.clone().step_by(COLS_PER_CHUNK) {
                        let chunk = c0..(c0 + COLS_PER_CHUNK).min(block.end);
                        for (c, col) in chunk.clone().enumerate() {
                            if prefetch && g == 0 && !prepared {
                                prefetch_row_ahead(w, kb, col, cols.end);
                            }
                            let row = if prepared {
                                WeightRow::Prepared(&scratch[(col - b0) * kb..(col - b0 + 1) * kb])
                            } else {
                                WeightRow::Blocks(&w[col * kb..(col + 1) * kb])
                            };
                            // SAFETY: `chosen_isa` gave `isa`: one of `P::ISAS` the CPU
                            // runs; a prepared row only where `prepares(isa)`.
                            match take {
                                4 => put_column(&mut tile, c, unsafe {
                                    row_dot::<P, 4>(isa, row, std::array::from_fn(group))
                                }),
                                2 => put_column(&mut tile, c, unsafe {
                                    row_dot::<P, 2>(isa, row, std::array::from_fn(group))
                                }),
                                _ => put_column(&mut tile, c, unsafe {
                                    row_dot::<P, 1>(isa, row, [group(0)])
                                }),
                            }
                        }
                        let rows = g * GROUP..((g + take) * GROUP).min(m);
                        write_tile(&tile, rows, chunk, n, y_out);
                    }
                }
            }
        })
    });
}

/// Weight rows per block of a task: as many as `budget` bytes hold at `row_bytes` each,
/// in whole chunks (at least one).
fn cols_per_block(budget: usize, row_bytes: usize) -> usize {
    (budget / row_bytes.max(1))
        .max(1)
        .next_multiple_of(COLS_PER_CHUNK)
}

/// Weight rows `block` of `w` (rows of `kb` blocks) unpacked into `scratch: [block.len(),
/// kb]`, which grows as needed and never shrinks (the next block, task or matmul reuses
/// it). With `ahead` (the task's end), rows are asked for a few ahead, as the first run
/// of groups would.
///
/// # Safety
/// `isa` is one of `P::ISAS` the CPU runs, and `P::prepares(isa)`.
unsafe fn prepare_rows<P: RowPanel>(
    isa: PanelIsa,
    w: &[P::Weight],
    kb: usize,
    block: std::ops::Range<usize>,
    ahead: Option<usize>,
    scratch: &mut Vec<PreparedBlock>,
) {
    if scratch.len() < block.len() * kb {
        scratch.resize(block.len() * kb, PreparedBlock::ZERO);
    }
    for (i, col) in block.enumerate() {
        if let Some(cols_end) = ahead {
            prefetch_row_ahead(w, kb, col, cols_end);
        }
        P::prepare(
            isa,
            &w[col * kb..(col + 1) * kb],
            &mut scratch[i * kb..(i + 1) * kb],
        );
    }
}

/// One weight row as a kernel call takes it.
#[derive(Clone, Copy)]
enum WeightRow<'a, W> {
    /// The row's blocks, unpacked by the call (`RowPanel::dot`).
    Blocks(&'a [W]),
    /// Unpacked once for every run of groups (`RowPanel::prepare`).
    Prepared(&'a [PreparedBlock]),
}

/// `row` · `groups` with `isa`'s kernels: `dot` or `dot_prepared`, the same bits.
///
/// # Safety
/// As `RowPanel::dot`; `WeightRow::Prepared` only where `P::prepares(isa)`.
#[inline(always)]
unsafe fn row_dot<P: RowPanel, const G: usize>(
    isa: PanelIsa,
    row: WeightRow<'_, P::Weight>,
    groups: [&[P::Block]; G],
) -> [[f32; GROUP]; G] {
    match row {
        WeightRow::Blocks(w) => P::dot::<G>(isa, w, groups),
        WeightRow::Prepared(w) => P::dot_prepared::<G>(isa, w, groups),
    }
}

/// Rows `rows` of `y: [m, n]`, columns `chunk`, from the tile's first rows (contiguous
/// row runs). The caller's task must own columns `chunk` of every row.
#[inline(always)]
fn write_tile(
    tile: &[[f32; COLS_PER_CHUNK]; GROUPS_PER_CALL * GROUP],
    rows: std::ops::Range<usize>,
    chunk: std::ops::Range<usize>,
    n: usize,
    y_out: SharedOut<'_, f32>,
) {
    for (tile_row, r) in tile.iter().zip(rows) {
        // SAFETY: columns `chunk` (of every row) belong to this task alone (the caller).
        let dst = unsafe { y_out.part(r * n + chunk.start, chunk.len()) };
        match <&mut [f32; COLS_PER_CHUNK]>::try_from(&mut *dst) {
            // A whole chunk: a fixed-size copy the compiler inlines.
            Ok(whole) => *whole = *tile_row,
            Err(_) => dst.copy_from_slice(&tile_row[..chunk.len()]),
        }
    }
}

/// The runs of row groups one kernel call takes, `(first group, groups)`: 4 at a time,
/// then 2, then 1, each at most `max_groups`.
fn group_runs(groups: usize, max_groups: usize) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut g = 0;
    while g < groups {
        let take = [4, 2, 1]
            .into_iter()
            .find(|&t| t <= max_groups && g + t <= groups)
            .unwrap_or(1);
        runs.push((g, take));
        g += take;
    }
    runs
}

/// Asks for weight row `col + PREFETCH_ROWS_AHEAD` (rows of `kb` blocks in `w`) into the
/// outer caches if it is one of this task's rows (`< cols_end`). Only a hint: no result
/// depends on it.
#[inline(always)]
fn prefetch_row_ahead<T>(w: &[T], kb: usize, col: usize, cols_end: usize) {
    let ahead = col + PREFETCH_ROWS_AHEAD;
    if ahead < cols_end {
        Ahead::new(&w[ahead * kb..(ahead + 1) * kb], 1).block(0);
    }
}

/// Writes one weight row's results for `G` groups into column `c` of the tile.
#[inline(always)]
fn put_column<const G: usize>(
    tile: &mut [[f32; COLS_PER_CHUNK]; GROUPS_PER_CALL * GROUP],
    c: usize,
    rows: [[f32; GROUP]; G],
) {
    for (g, group) in rows.iter().enumerate() {
        for (i, &v) in group.iter().enumerate() {
            tile[g * GROUP + i][c] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{matmul, QData, QMatrix};
    use super::*;

    use crate::ops::qdot::panel::{Q4_1Panel, Q5_0Panel, Q8_0Panel};
    use crate::ops::qdot::{blocks, Q4_1Dot, Q5_0Dot, Q8_0Dot};
    use candle_core::quantized::GgmlDType;
    use std::time::Instant;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// A task over more than one block of weight rows (`BLOCK_WEIGHT_BYTES`, and
    /// `BLOCK_PREPARED_BYTES` for the VNNI Q8_0 / Q5_0 kernel's prepared rows), a ragged
    /// last chunk, and runs of 4, 2 and 1 groups: every output is the row's own matmul.
    #[test]
    fn blocks_and_runs_of_groups_cover_every_output() {
        // Q5_0 rows of 576 are 396 bytes (Q8_0's 612, 3456 prepared): a task's ≥ 750 rows
        // span two blocks or more.
        let (n, k, m): (usize, usize, usize) = (2999, 576, 53);
        let task_rows = col_tasks(n).range(0).len();
        assert!(task_rows * 396 > BLOCK_WEIGHT_BYTES);
        assert!(task_rows * 18 * size_of::<PreparedBlock>() > BLOCK_PREPARED_BYTES);
        assert_eq!(group_runs(m.div_ceil(GROUP), 4), [(0, 4), (4, 2), (6, 1)]);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0] {
            let w = QMatrix::quantize(dtype, n, k, &random(n * k, 21)).unwrap();
            let x = random(m * k, 22);
            let mut y = vec![f32::NAN; m * n];
            w.matmul(&x, m, &mut y);
            for r in 0..m {
                let mut alone = vec![0.0; n];
                w.matmul(&x[r * k..(r + 1) * k], 1, &mut alone);
                assert_eq!(
                    &y[r * n..(r + 1) * n],
                    alone.as_slice(),
                    "{dtype:?} row {r}"
                );
            }
        }
    }

    /// µs per matmul (best of many), panel path vs `dot4` path, for the default model's
    /// shapes and the Q5_0 ones of Qwen2.5-0.5B Q4_K_M (ffn_gate/up, attn_q/output). Run: `cargo test --release --lib quant::panel::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_panel_vs_dot4() {
        let shapes = [
            (GgmlDType::Q4_1, 960, 576),
            (GgmlDType::Q4_1, 3072, 576),
            (GgmlDType::Q4_1, 576, 1536),
            (GgmlDType::Q8_0, 49152, 576),
            (GgmlDType::Q5_0, 4864, 896),
            (GgmlDType::Q5_0, 896, 896),
        ];
        for (dtype, n, k) in shapes {
            let w = QMatrix::quantize(dtype, n, k, &random(n * k, 1)).unwrap();
            for m in [2, 4, 8, 16, 32, 128] {
                let x = random(m * k, 2);
                let mut y = vec![0f32; m * n];
                let reps = (20_000_000 / (n * k * m).max(1)).clamp(3, 200);
                let time = |f: &mut dyn FnMut()| {
                    let mut best = f64::MAX;
                    for _ in 0..reps {
                        let t = Instant::now();
                        f();
                        best = best.min(t.elapsed().as_secs_f64() * 1e6);
                    }
                    best
                };
                let (panel, dot4) = match &w.data {
                    QData::Q4_1(b) => (
                        time(&mut || {
                            matmul_panel::<Q4_1Panel>(blocks::view_q4_1(b), k, &x, m, &mut y)
                        }),
                        time(&mut || matmul::<Q4_1Dot>(blocks::view_q4_1(b), k, &x, m, &mut y)),
                    ),
                    QData::Q8_0(b) => (
                        time(&mut || {
                            matmul_panel::<Q8_0Panel>(blocks::view_q8_0(b), k, &x, m, &mut y)
                        }),
                        time(&mut || matmul::<Q8_0Dot>(blocks::view_q8_0(b), k, &x, m, &mut y)),
                    ),
                    QData::Q5_0(b) => (
                        time(&mut || {
                            matmul_panel::<Q5_0Panel>(blocks::view_q5_0(b), k, &x, m, &mut y)
                        }),
                        time(&mut || matmul::<Q5_0Dot>(blocks::view_q5_0(b), k, &x, m, &mut y)),
                    ),
                    _ => unreachable!(),
                };
                println!(
                    "{dtype:?} {n}x{k} m={m:2}: panel {panel:8.1} us, dot4 {dot4:8.1} us ({:.2}x)",
                    dot4 / panel
                );
            }
        }
    }
}
