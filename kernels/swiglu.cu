/*
 * swiglu.cu: out = silu(a) · b for the FFN, silu(a) = a / (1 + e^-a), where each input row [2f] holds a = x·W1ᵀ
 * and b = x·W3ᵀ side by side (W1 and W3 are fused into one weight so the FFN input is read once).
 *
 * Entry points (kernels/llamagen_kernels.h):
 *   swiglu_f32 (ab f32 [rows, 2f], out f32 [rows, f], SwigluParams)
 *   swiglu_bf16(ab bf16 [rows, 2f], out bf16 [rows, f], SwigluParams)
 * The bf16 kernel rounds silu(a) to bf16 before the multiply and rounds the product (the reference's bf16
 * `F.silu(w1(x)) * w3(x)`; backend::cpu::swiglu with round = true). Arithmetic in f32.
 *
 * Design: elementwise. grid.y walks rows (grid-stride, so rows may exceed 65535), grid.x × blockDim.x threads walk
 * the f columns of a row with 16-byte loads of a and b and a 16-byte store (4 f32 or 8 bf16 per thread and step)
 * when f is a multiple of the vector width and the pointers are 16-byte aligned (then a, b and out rows all are),
 * scalar accesses otherwise. No shared memory, no barriers. expf, not __expf: the fast unit's error (2 ulp plus
 * flush of denormals) is not worth a few percent of a memory-bound kernel.
 *
 * Napkin math (GPT-XL: f = 3584; H100 SXM: 3.35 TB/s HBM3):
 *   bytes/call = rows·3f·sizeof(T) (read a and b, write out); FLOPs ≈ 6 per output plus one MUFU exp.
 *   decode, batch 8 with CFG (16 rows): bf16 344 KB → 0.10 µs, f32 688 KB → 0.21 µs at the roofline; launch bound
 *     (~2-3 µs): in bf16 the GPT fuses it into the w1|w3 GEMM's epilogue (op matmul_swiglu, gemm.cu); this
 *     kernel runs the f32 path and stands alone for tests and benches.
 *   t2i prefill, 1920 rows: bf16 41.3 MB → 12.3 µs, f32 82.6 MB → 24.7 µs; 6.9 M exps at ~4.2 T MUFU ops/s take
 *     1.6 µs, well under the memory time.
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

template <typename T>
static __device__ __forceinline__ void swiglu_impl(const T* __restrict__ ab, T* __restrict__ out,
                                                   const SwigluParams& p) {
    constexpr int V = Pack16<T>::N;
    const int f = p.f;
    const bool vec = f % V == 0 && aligned16(ab) && aligned16(out);
    const int start = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    const int stride = (int)(gridDim.x * blockDim.x);
    for (int row = (int)blockIdx.y; row < p.rows; row += (int)gridDim.y) {
        const T* a = ab + (size_t)row * 2 * (size_t)f;
        const T* b = a + f;
        T* o = out + (size_t)row * (size_t)f;
        if (vec) {
            for (int i = start * V; i < f; i += stride * V) {
                const Pack16<T> pa = load16(a + i), pb = load16(b + i);
                Pack16<T> po;
#pragma unroll
                for (int j = 0; j < V; j++) po.v[j] = swiglu_one<T>(pa.v[j], pb.v[j]);
                store16(o + i, po);
            }
        } else {
            for (int i = start; i < f; i += stride) gst(o + i, swiglu_one<T>(gld(a + i), gld(b + i)));
        }
    }
}

extern "C" __global__ void swiglu_f32(const float* __restrict__ ab, float* __restrict__ out, SwigluParams p) {
    swiglu_impl<float>(ab, out, p);
}

extern "C" __global__ void swiglu_bf16(const __nv_bfloat16* __restrict__ ab, __nv_bfloat16* __restrict__ out,
                                       SwigluParams p) {
    swiglu_impl<__nv_bfloat16>(ab, out, p);
}
