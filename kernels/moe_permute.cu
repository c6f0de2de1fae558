// MoE permute / unpermute: gather each (token, rank) pair's input row into expert order,
// and the weighted sum of a token's k expert output rows back in token order.
// CPU twins and test oracles: `tessera::ops::moe::{permute, unpermute_weighted}`.
//
// moe_permute
//   x        f32 [T, H]   expert inputs in token order
//   sorted   i32 [P]      pair index (token * K + rank) per slot; >= T * K marks padding
//   out      f32 [P, H]   out[p] = x[sorted[p] / K], zeros for padding
//   Launch: gridDim = P, blockDim = 256 (any multiple of 32); threads stride over H.
//
// moe_unpermute_weighted
//   ys       f32 [P, H]   expert outputs in sorted order
//   inv      i32 [T, K]   slot of each pair in `ys`
//   weights  f32 [T, K]   routing weights
//   out      f32 [T, H]   out[t] = ((ys[inv[t,0]] * w[t,0] + ys[inv[t,1]] * w[t,1]) + ...)
//   Ranks are added in order, each product rounded before the add (__fmul_rn/__fadd_rn:
//   never contracted into an FMA), exactly as the CPU twin and llama.cpp's build_moe_ffn.
//   Deterministic: one thread owns each output element, no atomics.
//   Launch: gridDim = T, blockDim = 256; threads stride over H.
// Limits: H, P, T < 2^31; inv entries must be < P (the caller's alignment guarantees it).

extern "C" __global__ void moe_permute(const float* __restrict__ x, const int* __restrict__ sorted,
                                       float* __restrict__ out, int T, int H, int K) {
    const int p = blockIdx.x;
    const int pair = sorted[p];
    const int token = pair / K;
    float* dst = out + (size_t)p * H;
    if (pair < 0 || token >= T) {
        for (int c = threadIdx.x; c < H; c += blockDim.x) dst[c] = 0.0f;
        return;
    }
    const float* src = x + (size_t)token * H;
    for (int c = threadIdx.x; c < H; c += blockDim.x) dst[c] = src[c];
}

extern "C" __global__ void moe_unpermute_weighted(const float* __restrict__ ys,
                                                  const int* __restrict__ inv,
                                                  const float* __restrict__ weights,
                                                  float* __restrict__ out, int H, int K) {
    const int t = blockIdx.x;
    const int* pos = inv + (size_t)t * K;
    const float* w = weights + (size_t)t * K;
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
        float acc = __fmul_rn(ys[(size_t)pos[0] * H + c], w[0]);
        for (int r = 1; r < K; ++r) {
            acc = __fadd_rn(acc, __fmul_rn(ys[(size_t)pos[r] * H + c], w[r]));
        }
        out[(size_t)t * H + c] = acc;
    }
}
