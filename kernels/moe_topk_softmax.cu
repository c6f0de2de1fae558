// Fused MoE routing: softmax over each token's router logits, top-k, optional
// renormalization. CPU twin and test oracle: `tessera::ops::moe::topk_softmax`.
//
// Inputs / outputs (row-major, device memory):
//   logits   f32 [T, E]   router logits
//   ids      i32 [T, K]   chosen experts, rank 0 = largest probability
//   weights  f32 [T, K]   their probabilities (renormalized to sum 1 when `renormalize`)
// Limits: 1 <= E <= MOE_MAX_EXPERTS (256), 1 <= K <= min(E, MOE_MAX_K = 16), T >= 0.
// Launch: blockDim = (32, WARPS), gridDim = ceil(T / WARPS); one warp per token;
//   dynamic shared memory = WARPS * E * (sizeof(float) + 1) bytes, rounded up to 4.
// Compile with --fmad=false: every fused multiply-add below is an explicit fmaf.
//
// Arithmetic (the same as the CPU twin, i.e. ggml's `soft_max_f32`):
//   max      sequential `m = m > v ? m : v` from -inf (a NaN logit becomes the max)
//   exp      full 16-element chunks: ggml's vectorized expf (`ggml_v_expf`), each chunk
//            summed in `_mm512_reduce_add_ps` order; leftovers: exp rounded from double
//            (the CPU uses libm expf; both are correctly rounded in all but rare cases);
//            everything accumulated in double, then one f32 scale by (float)(1 / sum)
//   top-k    largest probability first; ties -> lower expert id; NaN ranks last
//   renorm   double sum of the k weights in rank order -> f32, clamped to >= 2^-14, divide

#define MOE_MAX_EXPERTS 256
#define MOE_MAX_K 16
#define LANES 16
#define MOE_INF TESSERA_INF

#include "common.cuh"  // ggml_expf

// `_mm512_reduce_add_ps` as GCC expands it: halves, quarters, then pairs.
__device__ __forceinline__ float reduce16(const float* v) {
    float t3[8];
    for (int i = 0; i < 8; ++i) t3[i] = v[i + 8] + v[i];
    float t6[4];
    for (int i = 0; i < 4; ++i) t6[i] = t3[i + 4] + t3[i];
    return (t6[0] + t6[2]) + (t6[1] + t6[3]);
}

__device__ __forceinline__ float rank_key(float v) { return isnan(v) ? -MOE_INF : v; }

// True when (v, i) ranks before (best_v, best_i): larger key, or equal key and lower id.
__device__ __forceinline__ bool ranks_before(float v, int i, float best_v, int best_i) {
    return v > best_v || (v == best_v && i < best_i);
}

extern "C" __global__ void moe_topk_softmax(const float* __restrict__ logits,
                                            int* __restrict__ ids,
                                            float* __restrict__ weights,
                                            int T, int E, int K, int renormalize) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int t = blockIdx.x * blockDim.y + warp;
    float* p = smem + warp * E;
    unsigned char* taken = (unsigned char*)(smem + blockDim.y * E) + warp * E;
    if (t >= T) return;  // whole warps only: t is uniform across the warp
    const float* row = logits + (size_t)t * E;

    for (int e = lane; e < E; e += 32) {
        p[e] = row[e];
        taken[e] = 0;
    }
    __syncwarp();
    float max = -MOE_INF;
    if (lane == 0) {
        for (int e = 0; e < E; ++e) max = max > p[e] ? max : p[e];
    }
    max = __shfl_sync(0xffffffffu, max, 0);
    const int full = E - E % LANES;
    for (int e = lane; e < E; e += 32) {
        const float d = p[e] - max;
        p[e] = e < full ? ggml_expf(d) : __double2float_rn(exp((double)d));
    }
    __syncwarp();
    float inv = 0.0f;
    if (lane == 0) {
        double sum = 0.0;
        for (int c = 0; c < full; c += LANES) sum += (double)reduce16(p + c);
        for (int e = full; e < E; ++e) sum += (double)p[e];
        inv = (float)(1.0 / sum);
    }
    inv = __shfl_sync(0xffffffffu, inv, 0);
    for (int e = lane; e < E; e += 32) p[e] = __fmul_rn(p[e], inv);
    __syncwarp();

    float w[MOE_MAX_K];
    for (int r = 0; r < K; ++r) {
        float best_v = -MOE_INF;
        int best_i = 0x7fffffff;
        for (int e = lane; e < E; e += 32) {
            const float v = rank_key(p[e]);
            if (!taken[e] && ranks_before(v, e, best_v, best_i)) {
                best_v = v;
                best_i = e;
            }
        }
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best_v, off);
            const int oi = __shfl_xor_sync(0xffffffffu, best_i, off);
            if (ranks_before(ov, oi, best_v, best_i)) {
                best_v = ov;
                best_i = oi;
            }
        }
        // Every lane agrees on best_i; K <= E so a candidate always remains.
        if (lane == 0) taken[best_i] = 1;
        __syncwarp();
        w[r] = p[best_i];
        if (lane == 0) ids[(size_t)t * K + r] = best_i;
    }
    if (lane != 0) return;
    if (renormalize) {
        double sum = 0.0;
        for (int r = 0; r < K; ++r) sum += (double)w[r];
        const float s = fmaxf((float)sum, 6.103515625e-5f);
        for (int r = 0; r < K; ++r) w[r] = __fdiv_rn(w[r], s);
    }
    for (int r = 0; r < K; ++r) weights[(size_t)t * K + r] = w[r];
}
