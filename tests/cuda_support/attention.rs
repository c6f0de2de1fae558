//! One paged-attention case of tests/cuda_ops.rs: a random cache with scattered blocks,
//! the CPU twin's output, the GPU's, compared within the file's stated tolerance.

use half::f16;
use rand::seq::SliceRandom;
use rand::Rng;
use tessera::ops::attention::{paged_attention, AttnInputs, AttnSeq, KvGeometry};
use tessera::ops::cuda::dense::{
    attention_scratch_len, attention_splits, row_meta, AttnMeta, DenseKernels,
};
use tessera::ops::cuda::CudaError;

use super::{down, uniform, up, zeros};

/// Attention tolerance, `ATTN_ABS + ATTN_REL * |cpu|`, justified in tests/cuda_ops.rs.
const ATTN_ABS: f32 = 1e-3;
const ATTN_REL: f32 = 1.0 / 1024.0;

pub struct AttnCase {
    pub head_dim: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub block_size: usize,
    /// `(query rows this step, context length after it)` per sequence.
    pub seqs: &'static [(usize, usize)],
}

/// Runs `case` on both sides and asserts agreement; returns the splits the GPU used.
pub fn run_attention(
    k: &DenseKernels,
    rng: &mut impl Rng,
    case: &AttnCase,
) -> Result<usize, CudaError> {
    let (hd, n_heads) = (case.head_dim, case.n_heads);
    let geo = KvGeometry {
        block_size: case.block_size,
        n_kv_heads: case.n_kv,
        head_dim: hd,
    };
    let (seqs, block_tables, num_blocks) = layout(rng, case);
    let t: usize = case.seqs.iter().map(|s| s.0).sum();
    let cache_len = num_blocks * geo.block_size * geo.token_stride();
    let f16s = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<_>>();
    let (k_cache, v_cache) = (
        f16s(uniform(rng, cache_len, 1.0)),
        f16s(uniform(rng, cache_len, 1.0)),
    );
    let q = uniform(rng, t * n_heads * hd, 4.0);
    let mut want = vec![0.0; q.len()];
    let inputs = AttnInputs {
        q: &q,
        n_heads,
        k_cache: &k_cache,
        v_cache: &v_cache,
        geo,
        seqs: &seqs,
        block_tables: &block_tables,
    };
    if hd <= 256 {
        paged_attention(inputs, &mut want);
    }

    let (mut row_ctx, mut row_table) = (Vec::new(), Vec::new());
    row_meta(&seqs, &mut row_ctx, &mut row_table);
    let max_ctx = *row_ctx.iter().max().unwrap_or(&0) as usize;
    let (d_ctx, d_table, d_tables) = (up(k, &row_ctx), up(k, &row_table), up(k, &block_tables));
    let meta = AttnMeta {
        row_ctx: d_ctx.as_view(),
        row_table: d_table.as_view(),
        block_tables: d_tables.as_view(),
        max_ctx,
    };
    let (d_q, d_k, d_v) = (up(k, &q), up(k, &k_cache), up(k, &v_cache));
    let mut scratch = zeros::<f32>(k, attention_scratch_len(t, n_heads, hd, max_ctx));
    let mut out = zeros::<f16>(k, q.len());
    k.paged_attention(
        &d_q.as_view(),
        &d_k,
        &d_v,
        geo,
        n_heads,
        &meta,
        &mut scratch,
        &mut out.as_view_mut(),
    )?;
    let got = down(k, &out, q.len());
    let splits = attention_splits(t, n_heads, max_ctx);
    let name = format!(
        "attention hd {hd} heads {n_heads}/{} block {} seqs {:?} ({splits} splits)",
        case.n_kv, case.block_size, case.seqs
    );
    let mut worst = 0f32;
    for (i, (g, &w)) in got.iter().zip(&want).enumerate() {
        let (g, err) = (g.to_f32(), (g.to_f32() - w).abs());
        let (row, head) = (i / (n_heads * hd), i / hd % n_heads);
        assert!(
            err <= ATTN_ABS + ATTN_REL * w.abs(),
            "{name}: row {row} head {head} dim {}: gpu {g} cpu {w}",
            i % hd
        );
        worst = worst.max(err);
    }
    println!("{name}: max |gpu - cpu| = {worst:e}");
    Ok(splits)
}

/// The sequences in the flat batch, their block tables (block ids shuffled over a pool
/// with spare blocks, so tables are scattered) and the pool size.
fn layout(rng: &mut impl Rng, case: &AttnCase) -> (Vec<AttnSeq>, Vec<u32>, usize) {
    let needed: usize = case
        .seqs
        .iter()
        .map(|s| s.1.div_ceil(case.block_size))
        .sum();
    let num_blocks = needed + 5;
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    ids.shuffle(rng);
    let (mut seqs, mut tables, mut q_row) = (Vec::new(), Vec::new(), 0);
    for &(n_q, ctx_len) in case.seqs {
        let table_len = ctx_len.div_ceil(case.block_size);
        seqs.push(AttnSeq {
            q_row,
            n_q,
            ctx_len,
            table_start: tables.len(),
            table_len,
        });
        tables.extend(ids.drain(..table_len));
        q_row += n_q;
    }
    (seqs, tables, num_blocks)
}
