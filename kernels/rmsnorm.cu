/*
 * rmsnorm.cu: y = x / sqrt(mean(x²) + eps) ⊙ w, row by row (the GPT's attention_norm, ffn_norm and final norm).
 *
 * Entry points (kernels/llamagen_kernels.h):
 *   rmsnorm_f32 (x f32 [rows, d], w f32 [d], y f32 [rows, d], RmsnormParams)
 *   rmsnorm_bf16(x bf16 [rows, d], w f32 [d], y bf16 [rows, d], RmsnormParams)
 * Accumulation is f32. The bf16 kernel rounds the normalised value to bf16 before the weight multiply and rounds
 * the product again, as the reference does (`self._norm(x.float()).type_as(x) * self.weight`) and as
 * backend::cpu::rmsnorm does with round = true. w is f32 holding values of the model precision (bind_weights).
 *
 * Design: one block per row (grid-stride over rows, so any grid works), any 1-D block size 1..1024 (the launcher
 * picks ceil(d / vector width) rounded up to a warp, at most 1024). Pass 1: each thread sums the squares of its
 * elements with 16-byte loads (4 f32 or 8 bf16 per load) when d is a multiple of the vector width and the pointers
 * are 16-byte aligned, scalar loads otherwise; warp shuffles plus per-warp partials reduce the block (common.cuh:
 * exact for non-power-of-two blocks such as 96). Pass 2 re-reads the row (it is ≤ 10 KiB, an L1/L2 hit), scales,
 * multiplies by w and stores, four elements per lane (w as one 16-byte load). No dynamic shared memory; 33 floats of static shared.
 *
 * Napkin math (GPT-XL: d = 1280; H100 SXM: 3.35 TB/s HBM3, ~67 TFLOP/s f32 non-tensor):
 *   bytes/call = rows·d·2·sizeof(T) (read x, write y) + d·4 (w, shared by all rows); FLOPs/call ≈ 4·rows·d.
 *   Arithmetic intensity ≤ 1 FLOP/B against a ridge of ~20: memory bound wherever it is not launch bound.
 *   decode, batch 8 with CFG (16 rows): bf16 87 KB → 0.03 µs, f32 169 KB → 0.05 µs at the roofline; the ~2-3 µs
 *     launch latency dominates (16 blocks on 132 SMs), so this shape belongs in a CUDA graph or a fused kernel.
 *   t2i prefill, 16 sequences × 120 caption tokens (1920 rows): bf16 9.8 MB → 2.9 µs, f32 19.7 MB → 5.9 µs.
 * Measured: not yet on a GPU (no device in the development environment); see docs for the first GPU report.
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

template <typename T>
static __device__ __forceinline__ void rmsnorm_row(const T* __restrict__ x, const float* __restrict__ w,
                                                   T* __restrict__ y, int d, float eps, bool vec) {
    constexpr int V = Pack16<T>::N;
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;

    float ss = 0.0f;
    if (vec) {
        for (int i = tid * V; i < d; i += nt * V) {
            const Pack16<T> p = load16(x + i);
#pragma unroll
            for (int j = 0; j < V; j++) {
                const float v = to_float(p.v[j]);
                ss += v * v;
            }
        }
    } else {
        for (int i = tid; i < d; i += nt) {
            const float v = to_float(gld(x + i));
            ss += v * v;
        }
    }
    ss = block_reduce_sum(ss);
    const float r = rsqrtf(ss / (float)d + eps);

    if (vec) {
        /* Four elements per thread and step, so that the f32 weights are one 16-byte load per lane and each warp
         * instruction (x, w or y) covers one contiguous span; 8 bf16 per lane would read w as two 16-byte halves
         * of each lane's 32 bytes, every instruction touching twice the sectors it needs. */
        for (int i = tid * 4; i < d; i += nt * 4) {
            const Pack4<T> p = load4(x + i);
            const Pack16<float> wv = load16(w + i);
            Pack4<T> o;
#pragma unroll
            for (int j = 0; j < 4; j++) o.v[j] = from_float<T>(quantize<T>(to_float(p.v[j]) * r) * wv.v[j]);
            store4(y + i, o);
        }
    } else {
        for (int i = tid; i < d; i += nt) gst(y + i, from_float<T>(quantize<T>(to_float(gld(x + i)) * r) * gld(w + i)));
    }
}

template <typename T>
static __device__ __forceinline__ void rmsnorm_impl(const T* __restrict__ x, const float* __restrict__ w,
                                                    T* __restrict__ y, const RmsnormParams& p) {
    const bool vec = p.d % Pack16<T>::N == 0 && aligned16(x) && aligned16(y) && aligned16(w);
    for (int row = (int)blockIdx.x; row < p.rows; row += (int)gridDim.x) {
        const size_t off = (size_t)row * (size_t)p.d;
        rmsnorm_row<T>(x + off, w, y + off, p.d, p.eps, vec);
    }
}

extern "C" __global__ void rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                       float* __restrict__ y, RmsnormParams p) {
    rmsnorm_impl<float>(x, w, y, p);
}

extern "C" __global__ void rmsnorm_bf16(const __nv_bfloat16* __restrict__ x, const float* __restrict__ w,
                                        __nv_bfloat16* __restrict__ y, RmsnormParams p) {
    rmsnorm_impl<__nv_bfloat16>(x, w, y, p);
}
