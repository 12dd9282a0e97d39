/*
 * codebook.cu: the VQ quantizer's codebook operations (spec §9), f32 (the VQ runs in f32).
 *
 * Entry points (kernels/llamagen_kernels.h):
 *   codebook_f32(codes i32 [n·hw], codebook f32 [size, dim], out f32 [n, dim, hw], err i32 [1], CodebookParams)
 *       decode lookup: out[img, c, pos] = codebook[codes[img·hw + pos], c] (backend::cpu::codebook::codebook_lookup);
 *   quantize_f32(z f32 [n, dim, hw], codebook f32 [size, dim], codes i32 [n·hw], CodebookParams)
 *       encode: the nearest code of every normalised latent vector (backend::cpu::codebook::quantize).
 * The codebook is the L2-normalised one: the host normalises it once at load (model::vq runs
 * cpu::codebook::l2_normalize_rows on `quantize.embedding.weight`), so both kernels read it as it is.
 *
 * Bad codes (codebook_f32): a code outside 0..size writes zeros and is recorded in the error word, as embed_* do:
 * atomicMax over its bits as uint32 (the caller zeroes *err; 0 = all valid, else the bad code read back as i32).
 *
 * quantize_f32 reproduces the reference bit for bit: ẑ = z / max(‖z‖, 1e-12) with ‖z‖ accumulated in f64 and rounded
 * once, ‖ẑ‖², ‖ê‖² and ẑ·ê summed in index order in f32 without FMA contraction (__fmul_rn/__fadd_rn), and
 * d = (‖ẑ‖² + ‖ê‖²) − 2ẑ·ê; the lowest index wins exact ties (the reference's strict `<` in index order).
 *
 * Design. codebook_f32: tiles of 32 positions; the block reads their codebook rows with consecutive threads along
 * the embedding (a code's row is contiguous) into a shared [dim][33] tile and writes it back with consecutive
 * threads along the positions (a channel plane is contiguous), so both sides coalesce; dims over 64 take a direct
 * one-thread-per-output path. The codebook (≤ 512 KB) and the codes stay in L1/L2. quantize_f32: a block takes QP = 4 positions (their
 * ẑ in shared memory, QP·dim floats of dynamic shared), its threads stride over the codes, each keeping its best
 * (d, j) per position, then an argmin over the block (warp shuffles for the first n lanes, per-warp partials): the
 * order (d, then j) is total, so the result does not depend on the block size or the schedule.
 *
 * Napkin math (LlamaGen VQ-16: 16384 codes × 8, a 256×256 image = 16×16 latents; H100 SXM):
 *   codebook_f32, batch 8: 8·256·8 outputs, 64 KB written + 8 KB of codes: launch bound (< 0.1 µs of traffic).
 *   quantize_f32, one image: 256 positions × 16384 codes × 8 × 2 FLOPs ≈ 67 MFLOP → 1 µs at 67 TFLOP/s f32; each of
 *     the 64 blocks streams the 512 KB codebook from L2 (32 MB, ~6 µs at ~5.5 TB/s): L2 bound, encode only.
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

/* Positions per quantize block. */
#define QP 4

static __device__ __forceinline__ void record_bad_index(int32_t* err, int32_t id) {
    atomicMax(reinterpret_cast<unsigned int*>(err), (unsigned int)id);
}

#define CB_TQ 32      /* positions per tile: one warp-wide store per channel */
#define CB_MAX_DIM 64 /* embedding dims the shared tile holds (LlamaGen: 8); wider ones take the direct path */
extern "C" __global__ void codebook_f32(const int32_t* __restrict__ codes, const float* __restrict__ codebook,
                                        float* __restrict__ out, int32_t* __restrict__ err, CodebookParams p) {
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x, dim = p.dim;
    if (dim > CB_MAX_DIM) {
        const size_t total = (size_t)p.n * dim * p.hw;
        for (size_t o = (size_t)blockIdx.x * nt + tid; o < total; o += (size_t)gridDim.x * nt) {
            const size_t plane = o / (size_t)p.hw, pos = o - plane * (size_t)p.hw;
            const size_t img = plane / (size_t)dim, c = plane - img * (size_t)dim;
            const int code = gld(codes + img * p.hw + pos);
            const bool ok = code >= 0 && code < p.size;
            if (!ok && c == 0) record_bad_index(err, code);
            gst(out + o, ok ? gld(codebook + (size_t)code * dim + c) : 0.0f);
        }
        return;
    }
    /* A tile of CB_TQ positions: read with lanes along the embedding (each code's row is contiguous), transposed in
     * shared memory, written with lanes along the positions (each channel plane is contiguous). */
    __shared__ float tile[CB_MAX_DIM][CB_TQ + 1];
    const int npos = p.n * p.hw;
    for (int p0 = (int)blockIdx.x * CB_TQ; p0 < npos; p0 += (int)gridDim.x * CB_TQ) {
        const int nq = min(CB_TQ, npos - p0);
        for (int e = tid; e < nq * dim; e += nt) {
            const int q = e / dim, c = e - q * dim;
            const int code = gld(codes + p0 + q);
            const bool ok = code >= 0 && code < p.size;
            if (!ok && c == 0) record_bad_index(err, code);
            tile[c][q] = ok ? gld(codebook + (size_t)code * dim + c) : 0.0f;
        }
        __syncthreads();
        for (int e = tid; e < CB_TQ * dim; e += nt) {
            const int c = e / CB_TQ, q = e - c * CB_TQ, pp = p0 + q;
            if (q >= nq) continue;
            const int img = pp / p.hw, pos = pp - img * p.hw;
            gst(out + ((size_t)img * dim + c) * p.hw + pos, tile[c][q]);
        }
        __syncthreads(); /* the next tile overwrites this one */
    }
}

static __device__ __forceinline__ bool better(float d2, int j2, float d1, int j1) {
    return d2 < d1 || (d2 == d1 && j2 < j1);
}

/* Argmin over the first n lanes (1 ≤ n ≤ 32) of the calling warp, which are exactly the lanes that call it; the
 * result is valid in lane 0. */
static __device__ __forceinline__ void warp_argmin_first(float& d, int& j, int lane, int n) {
    const unsigned mask = n >= 32 ? FULL_MASK : ((1u << n) - 1u);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float od = __shfl_down_sync(mask, d, o);
        const int oj = __shfl_down_sync(mask, j, o);
        if (lane + o < n && better(od, oj, d, j)) d = od, j = oj;
    }
}

extern "C" __global__ void quantize_f32(const float* __restrict__ z, const float* __restrict__ codebook,
                                        int32_t* __restrict__ codes, CodebookParams p) {
    DYNAMIC_SHARED(float, zs); /* [QP][dim] normalised vectors, then [QP] squared norms */
    __shared__ float wd[32][QP];
    __shared__ int wj[32][QP];
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x, dim = p.dim;
    const int lane = tid & 31, warp = tid >> 5, nwarps = (nt + 31) >> 5, lanes = min(32, nt - warp * 32);
    const int npos = p.n * p.hw;
    float* zz = zs + QP * dim;
    for (int base = (int)blockIdx.x * QP; base < npos; base += (int)gridDim.x * QP) {
        for (int q = tid; q < QP; q += nt) {
            const int pos = base + q;
            float* v = zs + q * dim;
            if (pos < npos) {
                const int img = pos / p.hw, s = pos - img * p.hw;
                const float* src = z + (size_t)img * dim * p.hw + s;
                double ss = 0.0;
                for (int c = 0; c < dim; c++) {
                    const float x = gld(src + (size_t)c * p.hw);
                    v[c] = x;
                    ss += (double)x * (double)x;
                }
                const float norm = fmaxf((float)sqrt(ss), 1e-12f);
                float acc = 0.0f;
                for (int c = 0; c < dim; c++) {
                    v[c] = v[c] / norm;
                    acc = __fadd_rn(acc, __fmul_rn(v[c], v[c]));
                }
                zz[q] = acc;
            } else {
                for (int c = 0; c < dim; c++) v[c] = 0.0f;
                zz[q] = 0.0f;
            }
        }
        __syncthreads();

        float bd[QP];
        int bj[QP];
#pragma unroll
        for (int q = 0; q < QP; q++) bd[q] = INFINITY, bj[q] = INT32_MAX;
        for (int j = tid; j < p.size; j += nt) {
            const float* e = codebook + (size_t)j * dim;
            float ee = 0.0f, dot[QP];
#pragma unroll
            for (int q = 0; q < QP; q++) dot[q] = 0.0f;
            for (int c = 0; c < dim; c++) {
                const float ev = e[c];
                ee = __fadd_rn(ee, __fmul_rn(ev, ev));
#pragma unroll
                for (int q = 0; q < QP; q++) dot[q] = __fadd_rn(dot[q], __fmul_rn(zs[q * dim + c], ev));
            }
#pragma unroll
            for (int q = 0; q < QP; q++) {
                const float d = __fsub_rn(__fadd_rn(zz[q], ee), 2.0f * dot[q]);
                if (d < bd[q]) bd[q] = d, bj[q] = j; /* j increases: strict < keeps the first of equal distances */
            }
        }
#pragma unroll
        for (int q = 0; q < QP; q++) {
            warp_argmin_first(bd[q], bj[q], lane, lanes);
            if (lane == 0) wd[warp][q] = bd[q], wj[warp][q] = bj[q];
        }
        __syncthreads();
        for (int q = tid; q < QP; q += nt) {
            float d = wd[0][q];
            int j = wj[0][q];
            for (int w = 1; w < nwarps; w++)
                if (better(wd[w][q], wj[w][q], d, j)) d = wd[w][q], j = wj[w][q];
            /* no finite distance (a NaN latent): the reference keeps index 0 */
            if (base + q < npos) codes[base + q] = j == INT32_MAX ? 0 : j;
        }
        __syncthreads(); /* zs, wd and wj are rewritten by the next group of positions */
    }
}
