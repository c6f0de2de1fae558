//! CPU paged attention: K/V live in fixed-size blocks addressed through each sequence's
//! block table; queries of all sequences of a step sit in one flat `[T, n_heads * hd]`
//! batch.
//!
//! Cache layout per layer (docs/architecture.md, `model::kv_storage`):
//! `[num_blocks, block_size, n_kv_heads, head_dim]`, f16 (as llama.cpp's default KV cache
//! type). Slot `s` = `block * block_size + offset`.
//!
//! Work is split into independent units (sequence, query token, kv head); a unit's result
//! never depends on other units, so outputs are batch invariant.
//!
//! Arithmetic follows llama.cpp's CPU attention (no flash attention, one token per
//! decode) operation for operation: Q rounded to f16 and dotted with K in
//! `ggml_vec_dot_f16` order, ggml's softmax (its vectorized `expf`, 16-lane partial sums
//! in f64), probabilities rounded to f16 and accumulated against V in the same 64-lane
//! FMA order. See `ggml_math` for why that matters.
//!
//! Exact products: a query rounded to f16 times an f16 K element has at most 22
//! significant bits and lies between 2^-48 and 2^32 in magnitude, so its f32 product is
//! exact. ggml's first fold step `a0 + a2` (the products of two 16-lane chunks) is
//! therefore the same bits as one FMA of the second product onto the first,
//! `fma(k2, q2, a0)` (signed zeros included, since `a0` is itself an FMA onto +0): the
//! x86 score kernels use that and skip a quarter of their operations
//! (`products_fuse_exactly` checks the premise).

use half::f16;
use half::slice::HalfFloatSliceExt;
use std::cell::RefCell;
use std::ops::Range;

use super::ggml_math::F16_STEP;
use super::pool::{self, SharedOut};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_wide;
mod generic;
mod q8_0;
mod rotation;
#[cfg(target_arch = "x86_64")]
mod v_folded;
#[cfg(target_arch = "x86_64")]
mod v_lanes;

use generic::{accumulate_v, dot, fold_lanes, round_in_place_to_f16, softmax_in_place, widen};
pub use q8_0::{paged_attention_q8_0, write_kv_q8_0};
pub use rotation::{rotate, KvRotation};

/// Which kernels `attend` runs: the tiled x86 ones (head_dim 64, the widest the chosen
/// CPU level allows) or the generic path. All give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernels {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Generic,
}

impl Kernels {
    /// The kernels for `head_dim` at the CPU level chosen once in `cpu_features`.
    fn for_head_dim(head_dim: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if head_dim == avx512::HEAD_DIM && super::cpu_features::avx512() {
            return Kernels::Avx512;
        }
        #[cfg(target_arch = "x86_64")]
        if head_dim == avx2::HEAD_DIM && super::cpu_features::avx2() {
            return Kernels::Avx2;
        }
        let _ = head_dim;
        Kernels::Generic
    }

    /// Query rows per unit (`group` query heads per kv head): the tiled kernels read and
    /// widen each K/V row once per tile, so a tile serves about `TILE_HEADS` heads, 8 to
    /// `ROW_TILE` rows (SmolLM2's 3 heads per kv head: 16 rows; Qwen2.5-0.5B's 7: 8).
    fn row_tile(self, group: usize) -> usize {
        match self {
            Kernels::Generic => 1,
            #[cfg(target_arch = "x86_64")]
            _ => (TILE_HEADS / group.max(1)).clamp(8, ROW_TILE),
        }
    }
}

/// Shape of one layer's K (or V) cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvGeometry {
    /// Elements of one token's K (or V) row: `n_kv_heads * head_dim`.
    pub fn token_stride(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// One sequence's slice of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnSeq {
    /// First row of this sequence in the flat batch.
    pub q_row: usize,
    /// Query rows this step (the last `n_q` positions of the context).
    pub n_q: usize,
    /// Tokens in the cache for this sequence after this step's K/V are written.
    pub ctx_len: usize,
    /// This sequence's block table: `block_tables[table_start..table_start + table_len]`.
    pub table_start: usize,
    pub table_len: usize,
}

/// Per query row of the flat batch: how many keys it sees (`out_ctx`, causal: row `i` of a
/// sequence with `n_q` rows and `ctx_len` tokens sees `ctx_len - n_q + i + 1`) and where
/// its sequence's block table starts (`out_table`). The GPU attention's row metadata;
/// rows no sequence covers get 0 keys. Both vectors are cleared first.
pub fn row_meta(seqs: &[AttnSeq], out_ctx: &mut Vec<u32>, out_table: &mut Vec<u32>) {
    let rows = seqs.iter().map(|s| s.q_row + s.n_q).max().unwrap_or(0);
    out_ctx.clear();
    out_ctx.resize(rows, 0);
    out_table.clear();
    out_table.resize(rows, 0);
    for seq in seqs {
        for i in 0..seq.n_q {
            out_ctx[seq.q_row + i] = (seq.ctx_len - seq.n_q + i + 1) as u32;
            out_table[seq.q_row + i] = seq.table_start as u32;
        }
    }
}

/// Writes this step's K/V rows (`[T, n_kv * hd]`, f32) into their cache slots (`[T]`).
pub fn write_kv(
    k_cache: &mut [f16],
    v_cache: &mut [f16],
    k: &[f32],
    v: &[f32],
    slots: &[u32],
    geo: KvGeometry,
) {
    let stride = geo.token_stride();
    for (t, &slot) in slots.iter().enumerate() {
        let dst = slot as usize * stride..(slot as usize + 1) * stride;
        let src = t * stride..(t + 1) * stride;
        k_cache[dst.clone()].convert_from_f32_slice(&k[src.clone()]);
        v_cache[dst].convert_from_f32_slice(&v[src]);
    }
}

/// Inputs of one attention call that are the same for every unit. `C`: what the cache
/// holds (f16 values, or Q8_0 blocks for `paged_attention_q8_0`).
pub struct AttnInputs<'a, C = f16> {
    /// `[T, n_heads * hd]`
    pub q: &'a [f32],
    pub n_heads: usize,
    /// `[num_blocks, block_size, n_kv_heads, hd]` values (f16) or
    /// `[num_blocks, block_size, n_kv_heads, hd / 32]` blocks (Q8_0)
    pub k_cache: &'a [C],
    pub v_cache: &'a [C],
    pub geo: KvGeometry,
    pub seqs: &'a [AttnSeq],
    /// Concatenated block tables of `seqs`.
    pub block_tables: &'a [u32],
}

/// Per-thread scratch of one unit.
#[derive(Default)]
struct Scratch {
    /// Scores, then probabilities: `[rows, group, ctx]`.
    scores: Vec<f32>,
    /// One K/V row in f32: `[hd]`.
    kv_row: Vec<f32>,
    /// The V accumulators: `[rows, group, 64 lanes, hd]`.
    acc: Vec<f32>,
    /// f16-rounded queries: `[rows, group, hd]`.
    q16: Vec<f32>,
    /// One lane's V rows side by side (`gather_lane`): `[ctx / 64, hd]`.
    lane_rows: Vec<f32>,
    /// Element offset of each context position's row of this kv head in the cache:
    /// `[ctx]` (the block table resolved once per unit).
    offsets: Vec<usize>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl<C> Clone for AttnInputs<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for AttnInputs<'_, C> {}

/// Runs `unit(seq, rows, kvh)` on the pool for every (sequence, tile of `tile` query
/// rows, kv head) of the step. Units are numbered sequence by sequence, then kv head, then
/// tile from the last (it sees the most keys) to the first: a thread's next unit mostly
/// reads the same kv head's K/V (in its L2), and the shortest units come last (an even
/// finish). Each writes only its own rows and heads of the output.
fn for_each_unit(
    seqs: &[AttnSeq],
    n_kv: usize,
    tile: usize,
    unit: impl Fn(&AttnSeq, Range<usize>, usize) + Sync,
) {
    let units: usize = seqs.iter().map(|s| s.n_q.div_ceil(tile) * n_kv).sum();
    pool::run(units, |u| {
        let mut first = 0;
        for seq in seqs {
            let count = seq.n_q.div_ceil(tile) * n_kv;
            if u < first + count {
                let tiles = count / n_kv;
                let (kvh, from_last) = ((u - first) / tiles, (u - first) % tiles);
                let t = (tiles - 1 - from_last) * tile;
                unit(seq, t..(t + tile).min(seq.n_q), kvh);
                return;
            }
            first += count;
        }
    });
}

/// Most query rows of one sequence one unit of the tiled kernels takes.
const ROW_TILE: usize = 16;
/// Query heads a tile of the tiled kernels aims at: the 16-row tiles of 3 heads per kv
/// head took 5 % less time than 8-row tiles for a 1024-row chunk at 4096 tokens (the K
/// tile's transpose serves twice the heads); more rows would not keep a tile's scores
/// (`rows · group · ctx` floats) in L2.
const TILE_HEADS: usize = 48;

/// Causal attention of every query row over its sequence's cached context.
/// `out: [T, n_heads * hd]`.
pub fn paged_attention(inp: AttnInputs<'_>, out: &mut [f32]) {
    paged_attention_with(Kernels::for_head_dim(inp.geo.head_dim), inp, out)
}

/// `paged_attention` with `kernels` (one the CPU runs, for this head_dim).
fn paged_attention_with(kernels: Kernels, inp: AttnInputs<'_>, out: &mut [f32]) {
    assert_eq!(inp.q.len(), out.len());
    let n_kv = inp.geo.n_kv_heads;
    let out_ptr = SharedOut::new(out);
    let group = inp.n_heads / n_kv;
    for_each_unit(inp.seqs, n_kv, kernels.row_tile(group), |seq, rows, kvh| {
        attend_unit(kernels, &inp, seq, rows, kvh, out_ptr)
    });
}

/// Query rows `rows` of `seq`, all query heads that share kv head `kvh`.
fn attend_unit(
    kernels: Kernels,
    inp: &AttnInputs<'_>,
    seq: &AttnSeq,
    rows: Range<usize>,
    kvh: usize,
    out: SharedOut<'_, f32>,
) {
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        #[cfg(target_arch = "x86_64")]
        if super::cpu_features::avx2() {
            // SAFETY: the chosen level includes AVX2, FMA and F16C.
            return unsafe { attend_fma(kernels, inp, seq, rows, kvh, out, &mut scratch) };
        }
        attend::<false>(Kernels::Generic, inp, seq, rows, kvh, out, &mut scratch)
    })
}

/// `attend` compiled with FMA (a closure would not inherit the feature, so the scratch
/// is passed in).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_fma(
    kernels: Kernels,
    inp: &AttnInputs<'_>,
    seq: &AttnSeq,
    rows: Range<usize>,
    kvh: usize,
    out: SharedOut<'_, f32>,
    scratch: &mut Scratch,
) {
    attend::<true>(kernels, inp, seq, rows, kvh, out, scratch)
}

/// One unit: query rows `rows` (at most `ROW_TILE`) of `seq` and kv head `kvh`. `SIMD`:
/// called from `attend_fma` (AVX2, FMA, F16C available) and allowed to use intrinsics;
/// every path gives identical bits for a row, whatever tile it is in.
#[inline(always)]
fn attend<const SIMD: bool>(
    kernels: Kernels,
    inp: &AttnInputs<'_>,
    seq: &AttnSeq,
    rows: Range<usize>,
    kvh: usize,
    out: SharedOut<'_, f32>,
    scratch: &mut Scratch,
) {
    let geo = inp.geo;
    let hd = geo.head_dim;
    let group = inp.n_heads / geo.n_kv_heads;
    let n_rows = rows.len();
    assert!(
        (1..=ROW_TILE).contains(&n_rows),
        "attend: {n_rows} rows in a unit"
    );
    // Causal: row t sees positions 0..=its own.
    let mut n_ctx = [0usize; ROW_TILE];
    for (n, t) in n_ctx.iter_mut().zip(rows.clone()) {
        *n = seq.ctx_len - seq.n_q + t + 1;
    }
    let n_ctx = &n_ctx[..n_rows];
    let stride = n_ctx[n_rows - 1];
    let table = &inp.block_tables[seq.table_start..seq.table_start + seq.table_len];
    let scale = 1.0 / (hd as f32).sqrt();
    let Scratch {
        scores,
        kv_row,
        acc,
        q16,
        offsets,
        lane_rows,
    } = scratch;
    resolve_offsets(table, geo, kvh, stride, offsets);
    let slot_of = |pos: usize| offsets[pos];
    scores.resize(n_rows * group * stride, 0.0);
    kv_row.resize(hd, 0.0);
    q16.resize(n_rows * group * hd, 0.0);
    for (r, t) in rows.clone().enumerate() {
        let q_row = (seq.q_row + t) * inp.n_heads * hd;
        let heads = q_row + kvh * group * hd..q_row + (kvh + 1) * group * hd;
        round_to_f16(
            &inp.q[heads],
            &mut q16[r * group * hd..(r + 1) * group * hd],
        );
    }
    // `attend_fma` (SIMD) is where the CPU's AVX2/FMA/F16C are known to the compiler.
    let kernels = if SIMD { kernels } else { Kernels::Generic };
    // scores[r, g, pos] = (q_rg · k_pos) * scale
    match kernels {
        // SAFETY (each x86 arm): `Kernels::for_head_dim` (or a test, likewise) checked
        // the CPU and hd; the sizes are as resized above.
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx512 if n_rows * group >= avx512_wide::MIN_HEADS => unsafe {
            avx512_wide::scores(inp.k_cache, &slot_of, n_ctx, q16, scale, scores, stride)
        },
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx512 => unsafe {
            avx512::scores(inp.k_cache, &slot_of, n_ctx, q16, scale, scores, stride)
        },
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx2 => unsafe {
            avx2::scores(inp.k_cache, &slot_of, n_ctx, q16, scale, scores, stride)
        },
        Kernels::Generic => {
            for (r, &n) in n_ctx.iter().enumerate() {
                for pos in 0..n {
                    let at = slot_of(pos);
                    widen::<SIMD>(&inp.k_cache[at..at + hd], kv_row);
                    for g in 0..group {
                        let head = r * group + g;
                        scores[head * stride + pos] =
                            dot::<SIMD>(kv_row, &q16[head * hd..(head + 1) * hd]) * scale;
                    }
                }
            }
        }
    }
    // Short contexts' V is summed and folded in registers (`v_folded`); otherwise ggml's
    // 64 lanes of every row and head are stored (`acc`), then folded.
    #[cfg(target_arch = "x86_64")]
    let folded = kernels != Kernels::Generic && stride <= v_folded::MAX_CTX;
    #[cfg(not(target_arch = "x86_64"))]
    let folded = false;
    #[cfg(target_arch = "x86_64")]
    if folded {
        // The softmax's time covers the V rows' way from memory (a decode step's).
        v_lanes::prefetch_rows(inp.v_cache, &slot_of, 0..stride, hd);
    }
    softmax_rows(kernels, n_ctx, group, stride, scores);
    if !folded {
        acc.resize(n_rows * group * F16_STEP * hd, 0.0);
        let tile = (n_ctx, group, stride);
        store_lanes::<SIMD>(kernels, inp, tile, &slot_of, scores, kv_row, acc, lane_rows);
    }
    for (r, t) in rows.enumerate() {
        for g in 0..group {
            let h = kvh * group + g;
            let head = r * group + g;
            // SAFETY: (row, head h) belongs to this unit alone.
            let at = ((seq.q_row + t) * inp.n_heads + h) * hd;
            let dst = unsafe { out.part(at, hd) };
            #[cfg(target_arch = "x86_64")]
            let probs = &scores[head * stride..][..n_ctx[r]];
            let lanes = head * F16_STEP * hd..(head + 1) * F16_STEP * hd;
            match kernels {
                // SAFETY: as above; `probs` is the row's context, `lanes` `[64, 64]`.
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx512 if folded => unsafe {
                    avx512::fold_v(probs, inp.v_cache, &slot_of, dst)
                },
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx2 if folded => unsafe {
                    avx2::fold_v(probs, inp.v_cache, &slot_of, dst)
                },
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx512 => unsafe { avx512::fold_lanes(&acc[lanes], dst) },
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx2 => unsafe { avx2::fold_lanes(&acc[lanes], dst) },
                Kernels::Generic => {
                    let lanes = &mut acc[lanes];
                    fold_lanes(lanes, hd);
                    dst.copy_from_slice(&lanes[..hd]);
                }
            }
        }
    }
}

/// Every row and head's scores (`scores[(r * group + g) * stride..][..n_ctx[r]]`) →
/// probabilities rounded to f16, in place.
#[inline(always)]
fn softmax_rows(
    kernels: Kernels,
    n_ctx: &[usize],
    group: usize,
    stride: usize,
    scores: &mut [f32],
) {
    for (r, &n) in n_ctx.iter().enumerate() {
        for g in 0..group {
            let probs = &mut scores[(r * group + g) * stride..][..n];
            match kernels {
                // SAFETY (each x86 arm): the kernels' CPU features were checked.
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx512 => unsafe { avx512::softmax_to_f16(probs) },
                #[cfg(target_arch = "x86_64")]
                Kernels::Avx2 => unsafe { avx2::softmax_to_f16(probs) },
                Kernels::Generic => {
                    softmax_in_place(probs);
                    round_in_place_to_f16(probs);
                }
            }
        }
    }
}

/// ggml's 64 V lanes of every row and head of a tile (`(n_ctx, group, stride)` as
/// `softmax_rows` takes), stored: `acc: [rows, group, 64, hd]`. `kv_row` and `lane_rows`
/// are scratch.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn store_lanes<const SIMD: bool>(
    kernels: Kernels,
    inp: &AttnInputs<'_>,
    (n_ctx, group, stride): (&[usize], usize, usize),
    slot_of: &impl Fn(usize) -> usize,
    probs: &[f32],
    kv_row: &mut [f32],
    acc: &mut [f32],
    lane_rows: &mut Vec<f32>,
) {
    let hd = kv_row.len();
    #[cfg(target_arch = "x86_64")]
    let tile = v_lanes::TileProbs {
        n_ctx,
        group,
        probs,
        stride,
    };
    match kernels {
        // SAFETY (each x86 arm): the kernels' CPU features were checked; sizes as
        // `attend` resized them.
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx512 => unsafe {
            avx512::accumulate_v(&tile, inp.v_cache, slot_of, acc, lane_rows)
        },
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx2 => unsafe { avx2::accumulate_v(&tile, inp.v_cache, slot_of, acc, lane_rows) },
        Kernels::Generic => {
            let _ = lane_rows;
            for (r, &n) in n_ctx.iter().enumerate() {
                let probs = &probs[r * group * stride..(r + 1) * group * stride];
                let acc = &mut acc[r * group * F16_STEP * hd..(r + 1) * group * F16_STEP * hd];
                accumulate_v::<SIMD>(inp, n, stride, group, slot_of, probs, kv_row, acc);
            }
        }
    }
}

/// `offsets[pos]` (for `pos < n_ctx`) = where position `pos`'s row of kv head `kvh` starts
/// in the cache, through the sequence's block `table`.
fn resolve_offsets(
    table: &[u32],
    geo: KvGeometry,
    kvh: usize,
    n_ctx: usize,
    offsets: &mut Vec<usize>,
) {
    offsets.clear();
    for &block in &table[..n_ctx.div_ceil(geo.block_size)] {
        let first = block as usize * geo.block_size;
        let slots = first..first + geo.block_size.min(n_ctx - offsets.len());
        offsets.extend(slots.map(|slot| slot * geo.token_stride() + kvh * geo.head_dim));
    }
}

/// `dst[i] = f16(src[i])` widened back to f32.
fn round_to_f16(src: &[f32], dst: &mut [f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(v).to_f32();
    }
}

#[cfg(test)]
mod tests;
