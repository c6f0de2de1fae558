// Paged attention over block tables for decode and chunked prefill alike, split-K
// (flash-decoding) for long contexts. CPU twin and test oracle:
// `tessera::ops::attention::paged_attention`.
//
// Inputs (device memory, row-major):
//   q             f32 [T, n_heads * head_dim]      this step's queries (RoPE applied)
//   k/v_cache     f16 [num_blocks, block_size, n_kv_heads, head_dim]
//   row_ctx       u32 [T]   keys visible to query row t (causal: positions 0..row_ctx[t])
//   row_table     u32 [T]   where row t's sequence's block table starts in block_tables
//   block_tables  u32 [table_len]
// Output: out f16 [T, n_heads * head_dim]; softmax(q·k / sqrt(head_dim)) · v per head;
// query head h reads kv head h / (n_heads / n_kv_heads) (GQA).
//
// `paged_attention_split`: grid (T, n_heads, n_splits), PA_THREADS threads. Split z covers
// keys [z * keys_per_split, (z + 1) * keys_per_split) of its row (clipped to row_ctx),
// in tiles of PA_TILE keys with an online softmax: each warp scores keys (lanes stride
// over head_dim, shuffle sum), the block rescales its running (max, sum, acc[head_dim]).
// With one split the block writes the normalized row itself; otherwise it writes
// (max, sum, acc[head_dim]) to `partials` [T, n_heads, n_splits, head_dim + 2] and
// `paged_attention_reduce` (grid (T, n_heads)) merges the used splits in split order.
// Shared memory is static and sized for head_dim <= PA_MAX_HEAD_DIM (checked on the
// host), whatever the context length.
//
// Arithmetic: Q is rounded to f16 first (as llama.cpp and the CPU twin do); scores,
// softmax and the V sums are f32 (expf, not ggml's), so results match the CPU within
// f16 rounding of the probabilities and of the output, not bit for bit.
// A row whose keys the caller's tables cannot reach (a block id >= num_blocks, a table
// index past block_tables, row_ctx beyond n_splits * keys_per_split) comes out NaN.

#include "common.cuh"

#define PA_THREADS 128
#define PA_WARPS (PA_THREADS / 32)
#define PA_TILE 64
#define PA_MAX_HEAD_DIM 256
#define PA_DIMS (PA_MAX_HEAD_DIM / PA_THREADS)

struct PaShape {
    int n_heads, n_kv_heads, head_dim, block_size;
    unsigned num_blocks, table_len;
    int keys_per_split, n_splits;
    float scale;
};

// Element offset of (position pos, kv head kvh) in the cache, or -1 when out of range.
__device__ __forceinline__ long long kv_offset(const unsigned* __restrict__ table,
                                               unsigned table_start, unsigned pos, int kvh,
                                               const PaShape& s) {
    const unsigned entry = table_start + pos / s.block_size;
    if (entry >= s.table_len) return -1;
    const unsigned block = table[entry];
    if (block >= s.num_blocks) return -1;
    const long long slot = (long long)block * s.block_size + pos % s.block_size;
    return (slot * s.n_kv_heads + kvh) * s.head_dim;
}

__device__ __forceinline__ bool row_unreachable(unsigned ctx, const PaShape& s) {
    return ctx > (unsigned long long)s.n_splits * s.keys_per_split;
}

extern "C" __global__ void __launch_bounds__(PA_THREADS)
paged_attention_split(const float* __restrict__ q, const f16_bits* __restrict__ k_cache,
                      const f16_bits* __restrict__ v_cache,
                      const unsigned* __restrict__ row_ctx,
                      const unsigned* __restrict__ row_table,
                      const unsigned* __restrict__ block_tables, float* __restrict__ partials,
                      f16_bits* __restrict__ out, PaShape s) {
    __shared__ float q_s[PA_MAX_HEAD_DIM];
    __shared__ float score_s[PA_TILE];
    __shared__ float prob_s[PA_TILE];
    __shared__ long long v_at[PA_TILE];
    const int t = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
    const int hd = s.head_dim, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned ctx = row_ctx[t], table_start = row_table[t];
    const unsigned begin = (unsigned)split * s.keys_per_split;
    const unsigned end = min(ctx, begin + (unsigned)s.keys_per_split);
    if (s.n_splits > 1 && begin >= ctx) return;  // unused split: the reduce skips it
    const int kvh = h / (s.n_heads / s.n_kv_heads);
    const size_t head_at = ((size_t)t * s.n_heads + h) * hd;

    for (int d = threadIdx.x; d < hd; d += PA_THREADS) q_s[d] = f16_to_f32(f32_to_f16(q[head_at + d]));
    float m = -TESSERA_INF, sum = 0.0f, acc[PA_DIMS];
    for (int j = 0; j < PA_DIMS; ++j) acc[j] = 0.0f;
    __syncthreads();

    for (unsigned tile = begin; tile < end; tile += PA_TILE) {
        const int n = min(PA_TILE, (int)(end - tile));
        for (int kk = warp; kk < n; kk += PA_WARPS) {
            const long long at = kv_offset(block_tables, table_start, tile + kk, kvh, s);
            float dot = 0.0f;
            if (at >= 0) {
                for (int d = lane; d < hd; d += 32) dot = fmaf(f16_to_f32(k_cache[at + d]), q_s[d], dot);
            }
            for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
            if (lane == 0) {
                score_s[kk] = at >= 0 ? dot * s.scale : TESSERA_NAN;
                v_at[kk] = at;
            }
        }
        __syncthreads();
        float tile_max = -TESSERA_INF;
        for (int kk = 0; kk < n; ++kk) tile_max = fmaxf(tile_max, score_s[kk]);
        const float m_new = fmaxf(m, tile_max);  // fmaxf skips NaN: a NaN score's prob is NaN
        if (threadIdx.x < n) prob_s[threadIdx.x] = expf(score_s[threadIdx.x] - m_new);
        __syncthreads();
        const float alpha = m == -TESSERA_INF ? 0.0f : expf(m - m_new);
        float tile_sum = 0.0f;
        for (int kk = 0; kk < n; ++kk) tile_sum += prob_s[kk];
        sum = fmaf(sum, alpha, tile_sum);
        for (int j = 0; j < PA_DIMS; ++j) {
            const int d = threadIdx.x + j * PA_THREADS;
            if (d >= hd) break;
            float a = acc[j] * alpha;
            for (int kk = 0; kk < n; ++kk) {
                const long long at = v_at[kk];
                a = fmaf(prob_s[kk], at >= 0 ? f16_to_f32(v_cache[at + d]) : TESSERA_NAN, a);
            }
            acc[j] = a;
        }
        m = m_new;
        __syncthreads();  // the next tile rewrites v_at and prob_s
    }

    if (s.n_splits == 1) {
        const bool bad = row_unreachable(ctx, s);
        for (int j = 0; j < PA_DIMS; ++j) {
            const int d = threadIdx.x + j * PA_THREADS;
            if (d >= hd) break;
            const float o = bad ? TESSERA_NAN : (sum > 0.0f ? acc[j] / sum : 0.0f);
            out[head_at + d] = f32_to_f16(o);
        }
        return;
    }
    float* part = partials + (((size_t)t * s.n_heads + h) * s.n_splits + split) * (hd + 2);
    if (threadIdx.x == 0) {
        part[0] = m;
        part[1] = sum;
    }
    for (int j = 0; j < PA_DIMS; ++j) {
        const int d = threadIdx.x + j * PA_THREADS;
        if (d >= hd) break;
        part[2 + d] = acc[j];
    }
}

// Merges the used splits of row t, head h (grid (T, n_heads), PA_THREADS threads).
extern "C" __global__ void __launch_bounds__(PA_THREADS)
paged_attention_reduce(const float* __restrict__ partials, const unsigned* __restrict__ row_ctx,
                       f16_bits* __restrict__ out, PaShape s) {
    const int t = blockIdx.x, h = blockIdx.y, hd = s.head_dim;
    const unsigned ctx = row_ctx[t];
    const int used = min(s.n_splits, (int)((ctx + s.keys_per_split - 1) / s.keys_per_split));
    const float* parts = partials + ((size_t)t * s.n_heads + h) * s.n_splits * (hd + 2);
    float m = -TESSERA_INF;
    for (int z = 0; z < used; ++z) m = fmaxf(m, parts[z * (hd + 2)]);
    float total = 0.0f;
    for (int z = 0; z < used; ++z) {
        const float* p = parts + z * (hd + 2);
        total = fmaf(p[1], expf(p[0] - m), total);
    }
    const bool bad = row_unreachable(ctx, s);
    for (int d = threadIdx.x; d < hd; d += PA_THREADS) {
        float o = 0.0f;
        for (int z = 0; z < used; ++z) {
            const float* p = parts + z * (hd + 2);
            o = fmaf(p[2 + d], expf(p[0] - m), o);
        }
        const float r = bad ? TESSERA_NAN : (total > 0.0f ? o / total : 0.0f);
        out[((size_t)t * s.n_heads + h) * hd + d] = f32_to_f16(r);
    }
}
