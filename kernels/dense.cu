// The dense decoder-layer kernels other than GEMMs and attention, each the twin of a CPU
// op (the oracle of tests/cuda_ops.rs):
//   embed_f16          `[vocab, hidden]` f16 table, ids `[T]` -> f32 rows `[T, hidden]`
//   rms_norm_f16       `ops::norm::rms_norm`, f32 rows `[R, width]` -> f16
//   rms_norm_rows_f16  the same over a gathered row list `rows: [S]` -> f16 `[S, width]`
//   add_bias_f32       `ops::add_bias`        x `[R, width]` += bias `[width]`
//   add_assign_f32     `ops::add_assign`      x += y
//   rope_f32           `ops::rope::RopeTable::apply`, both layouts, partial rotary
//   silu_mul_f16       `ops::silu_mul`, f32 gate/up -> f16
//   cast_f16           f32 -> f16
//   write_kv_f16       `ops::attention::write_kv`: f32 K/V rows -> f16 paged cache slots
// Compile with --fmad=false (kernels/nvrtc.options): only the explicit fmaf calls fuse, so
// the f32 arithmetic is operation for operation the CPU twin's; every f16 result is that
// f32 value rounded to nearest even, as the `half` crate rounds.
// An index the caller got wrong (a token id >= vocab, a position past the RoPE table, a
// cache slot past the cache) never reads or writes out of bounds: the row becomes NaN (a
// loud result) or, for a KV slot, is not written.
// Launch: one block per row (gridDim.x = rows), any blockDim.x (the wrappers use 256) for
// the row kernels; the element-wise kernels stride over the whole grid.

#include "common.cuh"

#define WARP 32
#define MAX_WARPS 32

extern "C" __global__ void embed_f16(const f16_bits* __restrict__ table,
                                     const unsigned* __restrict__ ids,
                                     float* __restrict__ out, int hidden, unsigned vocab) {
    const unsigned id = ids[blockIdx.x];
    float* dst = out + (size_t)blockIdx.x * hidden;
    const f16_bits* src = table + (size_t)id * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        dst[j] = id < vocab ? f16_to_f32(src[j]) : TESSERA_NAN;
    }
}

// Sum over the block of one double per thread; every thread gets the total.
__device__ double block_sum(double v) {
    __shared__ double warp_sums[MAX_WARPS];
    for (int off = WARP / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int n_warps = (blockDim.x + WARP - 1) / WARP;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < n_warps; ++w) total += warp_sums[w];
    return total;
}

// One row: `out = x / sqrt(mean(x²) + eps) * weight` as `ops::norm::rms_norm` computes
// it (f32 squares summed in f64, the mean rounded to f32, IEEE sqrt and division).
__device__ void rms_norm_row(const float* __restrict__ x, const float* __restrict__ weight,
                             float eps, f16_bits* __restrict__ out, int width) {
    double sum = 0.0;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        const float sq = x[j] * x[j];
        sum += (double)sq;
    }
    sum = block_sum(sum);
    const float mean = (float)(sum / (double)width);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        out[j] = f32_to_f16(x[j] * scale * weight[j]);
    }
}

extern "C" __global__ void rms_norm_f16(const float* __restrict__ x,
                                        const float* __restrict__ weight, float eps,
                                        f16_bits* __restrict__ out, int width) {
    const size_t r = blockIdx.x;
    rms_norm_row(x + r * width, weight, eps, out + r * width, width);
}

// Row s of the output is row `rows[s]` of x (`n_rows` rows); a row index past x gives NaN.
extern "C" __global__ void rms_norm_rows_f16(const float* __restrict__ x,
                                             const unsigned* __restrict__ rows,
                                             const float* __restrict__ weight, float eps,
                                             f16_bits* __restrict__ out, int width,
                                             unsigned n_rows) {
    const unsigned src = rows[blockIdx.x];
    f16_bits* dst = out + (size_t)blockIdx.x * width;
    if (src >= n_rows) {
        for (int j = threadIdx.x; j < width; j += blockDim.x) dst[j] = f32_to_f16(TESSERA_NAN);
        return;
    }
    rms_norm_row(x + (size_t)src * width, weight, eps, dst, width);
}

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (size_t)gridDim.x * blockDim.x)

extern "C" __global__ void add_bias_f32(float* __restrict__ x, const float* __restrict__ bias,
                                        unsigned long long n, int width) {
    GRID_STRIDE(i, n) { x[i] += bias[i % width]; }
}

extern "C" __global__ void add_assign_f32(float* __restrict__ x, const float* __restrict__ y,
                                          unsigned long long n) {
    GRID_STRIDE(i, n) { x[i] += y[i]; }
}

extern "C" __global__ void cast_f16(const float* __restrict__ x, f16_bits* __restrict__ out,
                                    unsigned long long n) {
    GRID_STRIDE(i, n) { out[i] = f32_to_f16(x[i]); }
}

// SwiGLU as `ggml_vec_swiglu_f32`: the elements of each row's full 16-lane chunks use
// ggml's vectorized expf, the rest libm's expf (here: exp in double, rounded once).
extern "C" __global__ void silu_mul_f16(const float* __restrict__ gate,
                                        const float* __restrict__ up,
                                        f16_bits* __restrict__ out, unsigned long long n,
                                        int width) {
    const int full = width - width % 16;
    GRID_STRIDE(i, n) {
        const float g = gate[i];
        const float e = (int)(i % width) < full ? ggml_expf(-g)
                                                : __double2float_rn(exp(-(double)g));
        out[i] = f32_to_f16(g / (1.0f + e) * up[i]);
    }
}

// RoPE in place on one row (block) of `x: [T, n_heads * head_dim]` at `positions[row]`,
// with the tables `cos, sin: [max_pos, rot_dims / 2]` of `RopeTable`. `neox`: pairs
// (i, i + rot_dims/2), else adjacent pairs (2i, 2i+1). Dims >= rot_dims are untouched.
// The fused multiply-adds are exactly `RopeTable::rotate`'s.
extern "C" __global__ void rope_f32(float* __restrict__ x, const unsigned* __restrict__ positions,
                                    const float* __restrict__ cos_table,
                                    const float* __restrict__ sin_table, int n_heads,
                                    int head_dim, int rot_dims, int neox, unsigned max_pos) {
    const int half = rot_dims / 2;
    const unsigned pos = positions[blockIdx.x];
    float* row = x + (size_t)blockIdx.x * n_heads * head_dim;
    for (int p = threadIdx.x; p < n_heads * half; p += blockDim.x) {
        const int i = p % half;
        float* head = row + (p / half) * head_dim;
        const int a = neox ? i : 2 * i;
        const int b = neox ? i + half : 2 * i + 1;
        if (pos >= max_pos) {
            head[a] = TESSERA_NAN;
            head[b] = TESSERA_NAN;
            continue;
        }
        const float c = cos_table[(size_t)pos * half + i];
        const float s = sin_table[(size_t)pos * half + i];
        const float x0 = head[a], x1 = head[b];
        if (neox) {
            head[a] = fmaf(x0, c, -(x1 * s));
        } else {
            head[a] = fmaf(c, x0, -(s * x1));
        }
        head[b] = fmaf(x0, s, x1 * c);
    }
}

// Row t of k, v (`[T, stride]`, f32) into cache slot `slots[t]` of the caches
// (`[n_slots, stride]`, f16; slot = block * block_size + offset). A slot >= n_slots is
// skipped.
extern "C" __global__ void write_kv_f16(const float* __restrict__ k, const float* __restrict__ v,
                                        const unsigned* __restrict__ slots,
                                        f16_bits* __restrict__ k_cache,
                                        f16_bits* __restrict__ v_cache, int stride,
                                        unsigned n_slots) {
    const unsigned slot = slots[blockIdx.x];
    if (slot >= n_slots) return;
    const size_t src = (size_t)blockIdx.x * stride, dst = (size_t)slot * stride;
    for (int j = threadIdx.x; j < stride; j += blockDim.x) {
        k_cache[dst + j] = f32_to_f16(k[src + j]);
        v_cache[dst + j] = f32_to_f16(v[src + j]);
    }
}
