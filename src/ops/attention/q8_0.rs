//! Paged attention over a Q8_0 K/V cache (`--kv-cache-dtype q8_0`), following llama.cpp's
//! CPU flash attention for `-ctk q8_0 -ctv q8_0 -fa on`
//! (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`; a Q8_0 cache never takes its
//! tiled or split-KV paths, which need an f16/f32 cache) operation for operation:
//!
//! - each query head row is quantized to Q8_0 (`quantize_row_q8_0`, K's vec_dot type) and
//!   dotted with each cached K row by `ggml_vec_dot_q8_0_q8_0` (`qdot::Q8_0Dot`), then
//!   scaled by `1/sqrt(head_dim)`;
//! - online softmax in position order with libm `expf`: a new maximum `M` rescales the
//!   accumulator by `ms = expf(M_old - M)` and weighs the row by 1, otherwise the row
//!   weighs `vs = expf(s - M)`; the running sum is `S = fma(S, ms, vs)` (GCC contracts
//!   `S*ms + vs` in ggml's `-march=native` build);
//! - each V row is dequantized to f32 (`q · d`) and accumulated `acc = fma(v, vs, acc)`
//!   (`ggml_vec_mad_f32`); the result is `acc · (1/S)`.
//!
//! Every operation but the K dot product is element-wise, so the AVX2 build of the body
//! (`attend_fma`: FMAs and vector loops) and the portable one give the same bits; the dot
//! product has its own scalar twin (`Q8_0Dot::dot_portable`). A unit (sequence, query row,
//! kv head) never looks at another unit's rows, so results are batch invariant.

use std::cell::RefCell;
use std::ops::Range;

use super::{for_each_unit, AttnInputs, AttnSeq, KvGeometry};
use crate::model::kv_storage::QK8_0;
use crate::ops::act_quant::{quantize_q8_0, Q8_0};
use crate::ops::pool::SharedOut;
use crate::ops::qdot::{Kernel, Q8_0Dot};

/// Writes this step's K/V rows (`[T, n_kv * hd]`, f32) into their cache slots (`[T]`) as
/// Q8_0 blocks (`[T, n_kv * hd / 32]`; a block never straddles two heads since
/// `hd % 32 == 0`).
pub fn write_kv_q8_0(
    k_cache: &mut [Q8_0],
    v_cache: &mut [Q8_0],
    k: &[f32],
    v: &[f32],
    slots: &[u32],
    geo: KvGeometry,
) {
    let stride = geo.token_stride();
    let blocks = stride / QK8_0;
    for (t, &slot) in slots.iter().enumerate() {
        let dst = slot as usize * blocks..(slot as usize + 1) * blocks;
        let src = t * stride..(t + 1) * stride;
        quantize_q8_0(&k[src.clone()], &mut k_cache[dst.clone()]);
        quantize_q8_0(&v[src], &mut v_cache[dst]);
    }
}

/// Per-thread scratch of one unit.
#[derive(Default)]
struct Scratch {
    /// The unit's query heads as Q8_0: `[group, hd / 32]`.
    q8: Vec<Q8_0>,
    /// One dequantized V row: `[hd]`.
    v_row: Vec<f32>,
    /// Unnormalized outputs: `[group, hd]`.
    acc: Vec<f32>,
    /// Running maximum score and softmax sum per head: `[group]` each.
    max: Vec<f32>,
    sum: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Causal attention of every query row over its sequence's Q8_0 cache.
/// `out: [T, n_heads * hd]`.
pub fn paged_attention_q8_0(inp: AttnInputs<'_, Q8_0>, out: &mut [f32]) {
    assert_eq!(inp.q.len(), out.len());
    assert!(
        inp.geo.head_dim.is_multiple_of(QK8_0),
        "q8_0 attention: head_dim {} is not a multiple of {QK8_0}",
        inp.geo.head_dim
    );
    let out_ptr = SharedOut::new(out);
    for_each_unit(inp.seqs, inp.geo.n_kv_heads, 1, |seq, rows, kvh| {
        SCRATCH.with(|cell| {
            let scratch = &mut cell.borrow_mut();
            #[cfg(target_arch = "x86_64")]
            if crate::ops::cpu_features::avx2() {
                // SAFETY: the chosen level includes AVX2, FMA and F16C.
                return unsafe { attend_fma(&inp, seq, rows, kvh, out_ptr, scratch) };
            }
            attend::<false>(&inp, seq, rows, kvh, out_ptr, scratch)
        })
    });
}

/// `attend` compiled with AVX2 and FMA (same bits: see the module header).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_fma(
    inp: &AttnInputs<'_, Q8_0>,
    seq: &AttnSeq,
    rows: Range<usize>,
    kvh: usize,
    out: SharedOut<'_, f32>,
    scratch: &mut Scratch,
) {
    attend::<true>(inp, seq, rows, kvh, out, scratch)
}

/// One unit: query row `rows.start` of `seq`, the `group` query heads of kv head `kvh`.
/// `SIMD`: called from `attend_fma`, the K dot product may take its AVX2 kernel;
/// otherwise everything is portable (the twin).
#[inline(always)]
fn attend<const SIMD: bool>(
    inp: &AttnInputs<'_, Q8_0>,
    seq: &AttnSeq,
    rows: Range<usize>,
    kvh: usize,
    out: SharedOut<'_, f32>,
    scratch: &mut Scratch,
) {
    let geo = inp.geo;
    let (hd, nb) = (geo.head_dim, geo.head_dim / QK8_0);
    let group = inp.n_heads / geo.n_kv_heads;
    let t = rows.start;
    // Causal: row t sees positions 0..=its own.
    let n_ctx = seq.ctx_len - seq.n_q + t + 1;
    let table = &inp.block_tables[seq.table_start..seq.table_start + seq.table_len];
    let scale = 1.0 / (hd as f32).sqrt();
    // First Q8_0 block of (pos, kvh) in the cache.
    let block_of = |pos: usize| {
        (table[pos / geo.block_size] as usize * geo.block_size + pos % geo.block_size)
            * geo.n_kv_heads
            * nb
            + kvh * nb
    };
    let Scratch {
        q8,
        v_row,
        acc,
        max,
        sum,
    } = scratch;
    q8.resize(group * nb, Q8_0::ZERO);
    v_row.resize(hd, 0.0);
    acc.clear();
    acc.resize(group * hd, 0.0);
    max.clear();
    max.resize(group, f32::NEG_INFINITY);
    sum.clear();
    sum.resize(group, 0.0);
    let q_at = (seq.q_row + t) * inp.n_heads * hd + kvh * group * hd;
    quantize_q8_0(&inp.q[q_at..q_at + group * hd], q8);
    for pos in 0..n_ctx {
        let at = block_of(pos);
        let (k, v) = (&inp.k_cache[at..at + nb], &inp.v_cache[at..at + nb]);
        dequantize(v, v_row);
        for g in 0..group {
            let qg = &q8[g * nb..(g + 1) * nb];
            let s = if SIMD {
                Q8_0Dot::dot(k, qg)
            } else {
                Q8_0Dot::dot_portable(k, qg)
            } * scale;
            let acc = &mut acc[g * hd..(g + 1) * hd];
            let (ms, vs) = if s > max[g] {
                let ms = (max[g] - s).exp();
                max[g] = s;
                for a in acc.iter_mut() {
                    *a *= ms;
                }
                (ms, 1.0)
            } else {
                (1.0, (s - max[g]).exp())
            };
            for (a, &x) in acc.iter_mut().zip(v_row.iter()) {
                *a = x.mul_add(vs, *a);
            }
            sum[g] = sum[g].mul_add(ms, vs);
        }
    }
    for g in 0..group {
        let inv = if sum[g] == 0.0 { 0.0 } else { 1.0 / sum[g] };
        let h = kvh * group + g;
        // SAFETY: (row t, head h) belongs to this unit alone.
        let dst = unsafe { out.part(((seq.q_row + t) * inp.n_heads + h) * hd, hd) };
        for (d, &a) in dst.iter_mut().zip(&acc[g * hd..(g + 1) * hd]) {
            *d = a * inv;
        }
    }
}

/// ggml's `dequantize_row_q8_0`: `x = q · d`.
#[inline(always)]
fn dequantize(blocks: &[Q8_0], out: &mut [f32]) {
    for (b, dst) in blocks.iter().zip(out.chunks_exact_mut(QK8_0)) {
        let d = b.d.to_f32();
        for (x, &q) in dst.iter_mut().zip(&b.qs) {
            *x = q as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests;
