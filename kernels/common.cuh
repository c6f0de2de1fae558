// Helpers shared by the kernel files. NVRTC gets no include path (the sources are
// embedded in the binary), so a `#include "common.cuh"` line in a kernel file is replaced
// by this file's text before compiling: by `tessera::ops::cuda::compile_ptx` at run time
// and by scripts/check-kernels.py in CI. No CUDA headers: f16 values are raw
// `unsigned short` bits converted with the PTX `cvt` instructions (round to nearest even,
// as the `half` crate on the CPU side).

#define TESSERA_INF __int_as_float(0x7F800000)
#define TESSERA_NAN __int_as_float(0x7FC00000)

typedef unsigned short f16_bits;

__device__ __forceinline__ f16_bits f32_to_f16(float f) {
    f16_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float f16_to_f32(f16_bits h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// ggml's vectorized expf (`ggml_v_expf`), lane by lane; the twin of
// `tessera::ops::ggml_math::expf` (needs --fmad=false: every fused multiply-add is an
// explicit fmaf).
__device__ __forceinline__ float ggml_expf(float x) {
    const float r = __int_as_float(0x4B400000);  // 0x1.8p23
    const float z = fmaf(x, __int_as_float(0x3FB8AA3B), r);
    const float n = z - r;
    const float b = fmaf(-n, __int_as_float(0x35BFBE8E), fmaf(-n, __int_as_float(0x3F317200), x));
    if (fabsf(n) > 192.0f) {
        return n <= 0.0f ? 0.0f : TESSERA_INF;
    }
    const float u = b * b;
    const float j = fmaf(
        fmaf(fmaf(__int_as_float(0x3C072010), b, __int_as_float(0x3D2B9F17)), u,
             fmaf(__int_as_float(0x3E2AAF33), b, __int_as_float(0x3EFFFEDB))),
        u, fmaf(__int_as_float(0x3F7FFFF6), b, 1.0f));
    // _mm512_scalef_ps(j, n): j * 2^n with one rounding.
    return __double2float_rn((double)j * ldexp(1.0, (int)n));
}
