/*
 * vq_attention.cu: the part of the VQ AttnBlock that is not a GEMM, the softmax of each score row over the keys.
 * The block itself (src/backend/cuda/vq_attention.rs) is five gemm_strided_f32 launches (q, k, v projections;
 * S = qᵀk · c^-1/2; O = v · Sᵀ; out = x + proj_out(O)) around this kernel.
 *
 * Entry point (kernels/llamagen_kernels.h):
 *   vq_attention_softmax_f32(s f32 [rows, len], in place, SoftmaxRowsParams)
 * Numerics follow backend::cpu::vq_attention: subtract the row max, e = exp(s − max), divide by multiplying with
 * 1 / Σe (the CPU sums in f64; f32 here, a relative difference of ~len·2^-24 in the normaliser at worst).
 *
 * Design: one block per row (grid-stride over rows), any block size 1..1024 (the launcher picks len rounded up to a
 * warp, at most 1024). Three passes over the row (max; exp stored in place and summed; scale), reductions through
 * common.cuh's block_reduce (shuffles + per-warp partials, exact for any block size). The row (≤ 16 KiB for
 * len ≤ 4096) is re-read from L1/L2.
 *
 * Napkin math (H100 SXM, 3.35 TB/s): the VQ decoder's mid-block attention at a 16×16 latent: len = 256, 256 rows per
 * image; 8 images → 2 MB read + 2 MB written over the passes (~1.3 µs), launch bound. At 32×32: 4 MB per image.
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

extern "C" __global__ void vq_attention_softmax_f32(float* __restrict__ s, SoftmaxRowsParams p) {
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
    for (int row = (int)blockIdx.x; row < p.rows; row += (int)gridDim.x) {
        float* v = s + (size_t)row * (size_t)p.len;
        float mx = -INFINITY;
        for (int i = tid; i < p.len; i += nt) mx = fmaxf(mx, gld(v + i));
        mx = block_reduce_max(mx);
        float sum = 0.0f;
        for (int i = tid; i < p.len; i += nt) {
            const float e = expf(gld(v + i) - mx);
            gst(v + i, e);
            sum += e;
        }
        sum = block_reduce_sum(sum);
        const float inv = 1.0f / sum;
        for (int i = tid; i < p.len; i += nt) gst(v + i, gld(v + i) * inv);
        /* The next row's first block_reduce rewrites the partials only after its own barrier; the value `inv`
         * came from partial[32], which the next reduction writes after two barriers, so no extra sync is needed. */
    }
}
