/*
 * add.cu: y = a + b elementwise (`Op::Add`; residual adds elsewhere are fused into matmul and conv epilogues).
 *
 * Entry points (kernels/llamagen_kernels.h): add_f32 / add_bf16 (a [n], b [n], y [n], ElementwiseParams); the sum is
 * computed in f32 and rounded once for bf16. Grid-stride loop, one element per thread and step.
 * Napkin math: 3·n·sizeof(T) bytes, memory bound (n = 16 rows × 1280 in bf16: 123 KB → 0.04 µs, launch bound).
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

template <typename T>
static __device__ __forceinline__ void add_impl(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                                                int n) {
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += (int)(gridDim.x * blockDim.x))
        gst(y + i, from_float<T>(to_float(gld(a + i)) + to_float(gld(b + i))));
}

extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                                   ElementwiseParams p) {
    add_impl<float>(a, b, y, p.n);
}

extern "C" __global__ void add_bf16(const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b,
                                    __nv_bfloat16* __restrict__ y, ElementwiseParams p) {
    add_impl<__nv_bfloat16>(a, b, y, p.n);
}
