/*
 * rope.cu: 2-D rotary embedding of q and k, fused with the KV-cache write (the GPT's attention input).
 *
 * Entry points (kernels/llamagen_kernels.h):
 *   rope_f32 (qkv f32 [B', L, 3D], table f32 [R, d_h/2, 2], step, rows, q f32 [B', L, D], cache f32, RopeParams)
 *   rope_bf16(qkv bf16, table f32, step, rows, q bf16, cache bf16, RopeParams)
 * Row l of sequence b sits at absolute position p = step->pos + l (read from device memory, so a captured graph
 * replays for every decode step) in cache row b; with p.per_row, at rows[2b + 1] + l in cache row rows[2b]
 * (continuous batching: every sequence its own slot and position). Interleaved pairs (x[2j], x[2j+1]) of every head rotate by table row p:
 *   y0 = x0·cos − x1·sin,  y1 = x1·cos + x0·sin
 * q goes to the output, rotated k and unrotated v to the cache of `layer` at [layer][k|v][b][head][p][·]
 * (layout [layers][2][kv_batch][heads][seq][head_dim], the activation dtype). Condition positions have all-zero
 * table rows, so their q and k become exact zeros (the official behaviour). The products and the sum are
 * evaluated without FMA contraction (__fmul_rn/__fadd_rn), as backend::cpu::rope does, so f32 is bit-exact; bf16
 * widens to f32, rotates and rounds once (round = true in the CPU reference); v is copied bit for bit.
 * Rows with p ≥ min(seq, table_rows), or a cache row outside kv_batch, are skipped: the host validates positions
 * before it writes them (the kernel cannot report it), and this keeps a bad one from writing outside the cache.
 *
 * Design: one work item = 4 consecutive features (two pairs; head_dim is a multiple of 4, so an item never straddles
 * heads, and its 4 table values are one 16-byte load). Grid (items / blockDim, rows), items = 3·D/4 per token
 * (q, k and v parts), grid-stride over both axes so any grid and block work. 16-byte (f32) or 8-byte (bf16) vector
 * accesses when every base pointer is aligned for them, scalar otherwise. No shared memory, no barriers.
 *
 * Napkin math (GPT-XL: D = 1280, 20 heads of 64; H100 SXM 3.35 TB/s):
 *   bytes/token = 6·D·s (read q|k|v, write q, k, v; s = 2 bf16, 4 f32) + the table row (d_h·4, shared by every head
 *   and sequence: an L1/L2 hit); FLOPs/token ≈ 3·D: memory bound (≤ 0.25 FLOP/B).
 *   decode, batch 8 with CFG (16 tokens), bf16: 246 KB → 0.07 µs at the roofline; the ~2-3 µs launch latency
 *     dominates (8 × 16 = 128 blocks of 128 threads: one wave), so this belongs in the decode graph.
 *   t2i prefill, 16 sequences × 120 caption tokens (1920 tokens), bf16: 29.5 MB → 8.8 µs.
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

/* Four consecutive elements, loaded and stored as one vector when `vec` (the caller checked the alignment). */
struct F4 {
    float v[4];
};

static __device__ __forceinline__ F4 load4(const float* p, bool vec) {
    F4 r;
    if (vec) {
        const float4 t = gld(reinterpret_cast<const float4*>(p));
        r.v[0] = t.x, r.v[1] = t.y, r.v[2] = t.z, r.v[3] = t.w;
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) r.v[i] = gld(p + i);
    }
    return r;
}
static __device__ __forceinline__ F4 load4(const __nv_bfloat16* p, bool vec) {
    F4 r;
    if (vec) {
        __nv_bfloat16 t[4];
        *reinterpret_cast<uint2*>(t) = gld(reinterpret_cast<const uint2*>(p));
#pragma unroll
        for (int i = 0; i < 4; i++) r.v[i] = __bfloat162float(t[i]);
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) r.v[i] = __bfloat162float(gld(p + i));
    }
    return r;
}
static __device__ __forceinline__ void store4(float* p, const F4& x, bool vec) {
    if (vec) {
        gst(reinterpret_cast<float4*>(p), make_float4(x.v[0], x.v[1], x.v[2], x.v[3]));
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) gst(p + i, x.v[i]);
    }
}
static __device__ __forceinline__ void store4(__nv_bfloat16* p, const F4& x, bool vec) {
    __nv_bfloat16 t[4];
#pragma unroll
    for (int i = 0; i < 4; i++) t[i] = __float2bfloat16_rn(x.v[i]);
    if (vec) {
        gst(reinterpret_cast<uint2*>(p), *reinterpret_cast<const uint2*>(t));
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) gst(p + i, t[i]);
    }
}
/* v is copied without a round trip through f32 (bit-exact, NaN payloads included). */
template <typename T> static __device__ __forceinline__ void copy4(const T* src, T* dst, bool vec) {
    if (vec && sizeof(T) == 4) {
        gst(reinterpret_cast<int4*>(dst), gld(reinterpret_cast<const int4*>(src)));
    } else if (vec) {
        gst(reinterpret_cast<uint2*>(dst), gld(reinterpret_cast<const uint2*>(src)));
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) gst(dst + i, gld(src + i));
    }
}

static __device__ __forceinline__ F4 rotate4(const F4& x, const F4& cs) {
    F4 y;
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const float x0 = x.v[2 * j], x1 = x.v[2 * j + 1], c = cs.v[2 * j], s = cs.v[2 * j + 1];
        y.v[2 * j] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        y.v[2 * j + 1] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
    }
    return y;
}

template <typename T>
static __device__ __forceinline__ void rope_impl(const T* __restrict__ qkv, const float* __restrict__ table,
                                                 const StepState* __restrict__ step, const int32_t* __restrict__ rows,
                                                 T* __restrict__ q, T* __restrict__ cache, const RopeParams& p) {
    constexpr int VB = 4 * (int)sizeof(T); /* bytes of one 4-element item */
    const bool vec = (reinterpret_cast<uintptr_t>(qkv) % VB) == 0 && (reinterpret_cast<uintptr_t>(q) % VB) == 0 &&
                     (reinterpret_cast<uintptr_t>(cache) % VB) == 0 && aligned16(table);
    const int d = p.heads * p.head_dim, per_part = d / 4, items = 3 * per_part, hq = p.head_dim / 4;
    const int nrows = p.batch * p.len, limit = min(p.seq, p.table_rows);
    for (int row = (int)blockIdx.y; row < nrows; row += (int)gridDim.y) {
        const int b = row / p.len, l = row - b * p.len;
        const RowPlace at = row_place(rows, step, p.per_row, b);
        const int ap = at.pos + l;
        if (ap < 0 || ap >= limit || at.slot < 0 || at.slot >= p.kv_batch) continue;
        const T* src = qkv + (size_t)row * (size_t)(3 * d);
        for (int it = (int)(blockIdx.x * blockDim.x + threadIdx.x); it < items; it += (int)(gridDim.x * blockDim.x)) {
            const int part = it / per_part, g = it - part * per_part; /* part 0 = q, 1 = k, 2 = v */
            const int h = g / hq, f = 4 * (g - h * hq);               /* head, feature within the head */
            const T* x = src + part * d + 4 * g;
            if (part == 0) {
                const F4 cs = load4(table + (size_t)ap * p.head_dim + f, vec);
                store4(q + (size_t)row * d + 4 * g, rotate4(load4(x, vec), cs), vec);
                continue;
            }
            const size_t ci = ((((size_t)p.layer * 2 + (size_t)(part - 1)) * p.kv_batch + at.slot) * p.heads + h) *
                                    (size_t)p.seq + (size_t)ap;
            T* dst = cache + ci * p.head_dim + f;
            if (part == 1) {
                const F4 cs = load4(table + (size_t)ap * p.head_dim + f, vec);
                store4(dst, rotate4(load4(x, vec), cs), vec);
            } else {
                copy4(x, dst, vec);
            }
        }
    }
}

extern "C" __global__ void rope_f32(const float* __restrict__ qkv, const float* __restrict__ table,
                                    const StepState* __restrict__ step, const int32_t* __restrict__ rows,
                                    float* __restrict__ q, float* __restrict__ cache, RopeParams p) {
    rope_impl<float>(qkv, table, step, rows, q, cache, p);
}

extern "C" __global__ void rope_bf16(const __nv_bfloat16* __restrict__ qkv, const float* __restrict__ table,
                                     const StepState* __restrict__ step, const int32_t* __restrict__ rows,
                                     __nv_bfloat16* __restrict__ q, __nv_bfloat16* __restrict__ cache, RopeParams p) {
    rope_impl<__nv_bfloat16>(qkv, table, step, rows, q, cache, p);
}
