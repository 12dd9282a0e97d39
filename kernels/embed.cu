/*
 * embed.cu: ids -> rows of an embedding table (the GPT's token and class embeddings).
 *
 * Entry points (kernels/llamagen_kernels.h):
 *   embed_f32 (ids i32 [rows], table f32 [n, d], out f32 [rows, d], err i32 [1], EmbedParams)
 *   embed_bf16(ids i32 [rows], table bf16 [n, d], out bf16 [rows, d], err i32 [1], EmbedParams)
 * A pure copy: bit-exact with backend::cpu::embed (which widens bf16 tables to f32 exactly).
 *
 * Bad ids: ids come from user files and the sampler, so an id outside 0..n must not read out of bounds. Its row is
 * written as zeros and the id is recorded in the error word: atomicMax over the id's bits as uint32. The caller
 * zeroes *err before the launch; afterwards 0 means every id was valid (0 is never bad since n ≥ 1, and every bad
 * id is nonzero), anything else read back as i32 is a bad id (with several bad ids: the largest as uint32, i.e.
 * negative ids before large positive ones). backend::cuda::embed::bad_index decodes it.
 *
 * Design: grid (column blocks, rows), grid-stride over both axes so any grid and block work; each thread copies
 * 16-byte vectors (4 f32 / 8 bf16) when d is a multiple of the vector width and both pointers are aligned, scalar
 * elements otherwise. The id is read once per thread (a broadcast load, L1 hit). No shared memory.
 *
 * Napkin math (GPT-XL: d = 1280, bf16; H100 SXM 3.35 TB/s):
 *   bytes/call = rows·d·2·s (read the table rows, write out) + 4·rows; no FLOPs.
 *   decode, batch 8 with CFG (16 rows): 82 KB → 0.02 µs; launch latency (~2-3 µs) dominates: graph it.
 *   t2i prefill is the caption projection, not this; c2i prefill embeds 16 class ids: the same 82 KB.
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

static __device__ __forceinline__ void record_bad_index(int32_t* err, int32_t id) {
    atomicMax(reinterpret_cast<unsigned int*>(err), (unsigned int)id);
}

template <typename T>
static __device__ __forceinline__ void embed_impl(const int32_t* __restrict__ ids, const T* __restrict__ table,
                                                  T* __restrict__ out, int32_t* __restrict__ err,
                                                  const EmbedParams& p) {
    constexpr int V = Pack16<T>::N;
    const bool vec = p.d % V == 0 && aligned16(table) && aligned16(out);
    const int units = vec ? p.d / V : p.d; /* vectors or elements per row */
    for (int row = (int)blockIdx.y; row < p.rows; row += (int)gridDim.y) {
        const int id = ids[row];
        const bool ok = id >= 0 && id < p.n;
        if (!ok && blockIdx.x == 0 && threadIdx.x == 0) record_bad_index(err, id);
        const T* src = table + (size_t)(ok ? id : 0) * (size_t)p.d;
        T* dst = out + (size_t)row * (size_t)p.d;
        for (int u = (int)(blockIdx.x * blockDim.x + threadIdx.x); u < units; u += (int)(gridDim.x * blockDim.x)) {
            if (vec) {
                Pack16<T> v;
                if (ok) {
                    v = load16(src + (size_t)u * V);
                } else {
#pragma unroll
                    for (int j = 0; j < V; j++) v.v[j] = from_float<T>(0.0f);
                }
                store16(dst + (size_t)u * V, v);
            } else {
                gst(dst + u, ok ? gld(src + u) : from_float<T>(0.0f));
            }
        }
    }
}

extern "C" __global__ void embed_f32(const int32_t* __restrict__ ids, const float* __restrict__ table,
                                     float* __restrict__ out, int32_t* __restrict__ err, EmbedParams p) {
    embed_impl<float>(ids, table, out, err, p);
}

extern "C" __global__ void embed_bf16(const int32_t* __restrict__ ids, const __nv_bfloat16* __restrict__ table,
                                      __nv_bfloat16* __restrict__ out, int32_t* __restrict__ err, EmbedParams p) {
    embed_impl<__nv_bfloat16>(ids, table, out, err, p);
}
