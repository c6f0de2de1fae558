// MoE alignment: group a step's (token, rank) pairs by expert for grouped GEMMs.
// CPU twin and test oracle: `tessera::ops::moe::MoeAlign::compute`.
//
// Inputs / outputs (device memory, i32):
//   ids           [N]          expert of each pair (N = T * K, pair = token * K + rank)
//   counts        [E]          pairs routed to each expert
//   offsets       [E + 1]      prefix sums of counts rounded up to `block`: expert e owns
//                              sorted[offsets[e] .. offsets[e + 1]], its pairs then padding
//   sorted        [capacity]   pair indices grouped by expert, ASCENDING within an expert
//                              (a stable counting sort, so the result is deterministic);
//                              padding slots hold N; slots past offsets[E] are untouched
//   inv           [N]          position of each pair in `sorted`
//   block_expert  [capacity / block]  expert owning each block of `sorted`
// capacity >= N + E * (block - 1) (the largest possible offsets[E]).
// Limits: 1 <= E <= MOE_MAX_EXPERTS (256), block >= 1, N < 2^31; ids outside [0, E) are
//   ignored (the caller validates them). Needs sm_70+ (__match_any_sync).
// Launch: ONE block of ALIGN_THREADS (1024) threads, no dynamic shared memory.
//
// Placement runs in rounds of 1024 pairs: inside a warp, __match_any_sync finds the lanes
// with the same expert and a lane's rank among them; per-warp counts are scanned across
// the block's 32 warps per expert; a running cursor per expert carries across rounds.

#define MOE_MAX_EXPERTS 256
#define ALIGN_THREADS 1024
#define ALIGN_WARPS (ALIGN_THREADS / 32)

extern "C" __global__ void moe_align(const int* __restrict__ ids, int N, int E, int block,
                                     int* __restrict__ counts, int* __restrict__ offsets,
                                     int* __restrict__ sorted, int* __restrict__ inv,
                                     int* __restrict__ block_expert) {
    __shared__ int count_s[MOE_MAX_EXPERTS];
    __shared__ int offset_s[MOE_MAX_EXPERTS + 1];
    __shared__ int cursor_s[MOE_MAX_EXPERTS];
    __shared__ int warp_s[ALIGN_WARPS][MOE_MAX_EXPERTS];
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;

    for (int e = tid; e < E; e += blockDim.x) count_s[e] = 0;
    __syncthreads();
    for (int i = tid; i < N; i += blockDim.x) {
        const int e = ids[i];
        if (e >= 0 && e < E) atomicAdd(&count_s[e], 1);
    }
    __syncthreads();
    if (tid == 0) {
        int total = 0;
        offset_s[0] = 0;
        for (int e = 0; e < E; ++e) {
            total += (count_s[e] + block - 1) / block * block;
            offset_s[e + 1] = total;
        }
    }
    __syncthreads();
    for (int e = tid; e <= E; e += blockDim.x) {
        offsets[e] = offset_s[e];
        if (e < E) {
            counts[e] = count_s[e];
            cursor_s[e] = offset_s[e];
            for (int b = offset_s[e] / block; b < offset_s[e + 1] / block; ++b) block_expert[b] = e;
        }
    }
    for (int s = tid; s < offset_s[E]; s += blockDim.x) sorted[s] = N;
    __syncthreads();

    for (int base = 0; base < N; base += blockDim.x) {
        const int i = base + tid;
        int e = i < N ? ids[i] : -1;
        if (e >= E) e = -1;
        for (int x = tid; x < ALIGN_WARPS * E; x += blockDim.x) warp_s[x / E][x % E] = 0;
        __syncthreads();
        const unsigned peers = __match_any_sync(0xffffffffu, e);
        const int rank = __popc(peers & ((1u << lane) - 1u));
        if (e >= 0 && lane == __ffs(peers) - 1) warp_s[warp][e] = __popc(peers);
        __syncthreads();
        for (int x = tid; x < E; x += blockDim.x) {
            int run = cursor_s[x];
            for (int w = 0; w < ALIGN_WARPS; ++w) {
                const int c = warp_s[w][x];
                warp_s[w][x] = run;
                run += c;
            }
            cursor_s[x] = run;
        }
        __syncthreads();
        if (e >= 0) {
            const int pos = warp_s[warp][e] + rank;
            sorted[pos] = i;
            inv[i] = pos;
        }
        __syncthreads();
    }
}
