/*
 * copy_rows.cu: dst[r·dst_stride + j] = src[r·src_stride + j] for r < rows, j < len, in 16-bit units: the data
 * movement of `Op::Concat` (two calls, one per input, along the sequence axis) and `Op::TakeLast` (the last position
 * of every sequence, before the LM head). Counting in 16-bit units serves f32 and bf16 tensors alike.
 *
 * Entry point (kernels/llamagen_kernels.h): copy_rows(src, dst, CopyRowsParams). Design: grid.y walks rows
 * (grid-stride), grid.x × blockDim.x threads walk a row; 4-byte moves when every offset and length is even
 * (f32 tensors, even-width bf16 ones), 2-byte moves otherwise.
 * Napkin math (TakeLast, GPT-XL prefill of 16 t2i sequences: 16 rows × 1280 bf16 = 41 KB): launch bound.
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

extern "C" __global__ void copy_rows(const __nv_bfloat16* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                                     CopyRowsParams p) {
    const bool words = ((p.len | p.src_stride | p.dst_stride) & 1) == 0 && (reinterpret_cast<uintptr_t>(src) & 3) == 0 &&
                       (reinterpret_cast<uintptr_t>(dst) & 3) == 0;
    for (int r = (int)blockIdx.y; r < p.rows; r += (int)gridDim.y) {
        const __nv_bfloat16* s = src + (size_t)r * (size_t)p.src_stride;
        __nv_bfloat16* d = dst + (size_t)r * (size_t)p.dst_stride;
        const int start = (int)(blockIdx.x * blockDim.x + threadIdx.x), step = (int)(gridDim.x * blockDim.x);
        if (words) {
            const uint32_t* s4 = reinterpret_cast<const uint32_t*>(s);
            uint32_t* d4 = reinterpret_cast<uint32_t*>(d);
            for (int j = start; j < p.len / 2; j += step) gst(d4 + j, gld(s4 + j));
        } else {
            for (int j = start; j < p.len; j += step) gst(d + j, gld(s + j));
        }
    }
}
