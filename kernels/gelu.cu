/*
 * gelu.cu: y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), the tanh-approximated GELU between the two layers of the
 * t2i caption MLP (spec §3.3).
 *
 * Entry points (kernels/llamagen_kernels.h): gelu_f32 / gelu_bf16 (x [n], y [n], ElementwiseParams). The bf16
 * kernel rounds the f32 result once (backend::cpu::swiglu::gelu_tanh with round = true). tanhf, not a fast
 * approximation: the kernel is memory bound.
 *
 * Design: grid-stride elementwise loop, one element per thread and step (no alignment requirement).
 * Napkin math (GPT-XL t2i prefill, 16 sequences × 120 rows × D 1280 = 2.5 M values): bf16 9.8 MB → 2.9 µs at
 * 3.35 TB/s on H100; runs once per image batch, so launch cost is irrelevant.
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

template <typename T>
static __device__ __forceinline__ void gelu_impl(const T* __restrict__ x, T* __restrict__ y, int n) {
    const float beta = 0.7978846f, kappa = 0.044715f;
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += (int)(gridDim.x * blockDim.x)) {
        const float v = to_float(gld(x + i));
        gst(y + i, from_float<T>(0.5f * v * (1.0f + tanhf(beta * (v + kappa * v * v * v)))));
    }
}

extern "C" __global__ void gelu_f32(const float* __restrict__ x, float* __restrict__ y, ElementwiseParams p) {
    gelu_impl<float>(x, y, p.n);
}

extern "C" __global__ void gelu_bf16(const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y,
                                     ElementwiseParams p) {
    gelu_impl<__nv_bfloat16>(x, y, p.n);
}
