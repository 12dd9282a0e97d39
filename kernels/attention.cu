/*
 * attention.cu: causal attention of the GPT over the static KV cache. Query l of sequence b sits at absolute
 * position p = pos + l (pos = step->pos, read from device memory) and attends the cached keys 0..=p with scale
 * 1/sqrt(d_h) and an exact softmax; with a condition mask [B', T] (1 = visible), a condition key k < T whose mask is 0
 * is invisible to every query except the query at position k itself (the reference's forced diagonal).
 *
 * Entry points (kernels/llamagen_kernels.h), T = float or __nv_bfloat16, all with AttentionParams:
 *   attention_decode_<T> (q [B', L, D], kv cache, mask [B', T] or unused, step, rows, out [B', L, D], ws f32)
 *   attention_combine_<T>(ws, step, rows, out)                  merges the split-KV partials of attention_decode
 *   attention_tiled_<T>  (q, kv cache, mask, step, rows, out)   prefill / full recompute, L up to the cache length
 * With p.per_row, sequence b reads cache row rows[2b] from position rows[2b + 1] instead of (b, step->pos)
 * (continuous batching); everything else is unchanged.
 * D = heads·d_h, head h at features h·d_h..; the cache is [layer][k|v][cache_batch][head][seq][d_h] in T (what the
 * rope kernel writes; backend::cpu::kv_cache). Scores, softmax and the P·V sums are f32; the bf16 kernels round only
 * the output, exactly as backend::cpu::attention does with round = true. A position outside the cache
 * (pos < 0 or pos + L > seq) cannot be reported from a graph replay, so the kernels write NaN to their output rows
 * instead of reading out of bounds.
 *
 * Decode (attention_decode + attention_combine), flash-decoding: grid (splits, heads, B'·L), one block per query
 * row, head and split of `split_keys` consecutive keys; any block of whole warps (the launcher uses 4). A key row of
 * d_h elements is read by a group of G lanes (G = d_h / CH rounded up to a power of two, CH = 8 bf16 or 4 f32 per
 * 16-byte load; 4 bf16 per 8-byte load when d_h is not a multiple of 8, e.g. d_h = 100; scalar loads when a pointer
 * is misaligned), so a warp scores 32/G keys at once: a G-lane shuffle reduction gives the score, and each group
 * keeps an online softmax (max m, sum l, unnormalised accumulator of its CH features). Groups merge by shuffles,
 * warps through dynamic shared memory (nwarps·(d_h + 2) floats). With one split the block writes the output;
 * otherwise it writes the partial (acc, m, l) to the workspace and attention_combine rescales and sums the splits.
 * The grid covers the whole cache (seq keys) because pos is only known on the device: blocks whose split starts
 * after p exit at once without writing, and the combine reads only splits 0..p / split_keys.
 *
 * Tiled (attention_tiled): grid (ceil(L / BQ), heads, B'), BQ = 4 queries per warp; the block stages its queries
 * (f32) and tiles of 32 keys and values (f32, the K tile padded to d_h + 1 floats per row so that lane-per-key reads
 * are conflict-free) in dynamic shared memory. Lane j scores key j of the tile for the warp's 4 queries; the tile's
 * max and sum come from warp shuffles; for P·V lane j owns features j, j+32, .. (d_h <= 128: 4 per query) and the
 * probabilities are broadcast by shuffles. Online softmax across tiles; no tensor cores (correctness first: the
 * prefill runs once per image, the full recompute only as a check).
 *
 * Flash (attention_flash_bf16, the bf16 prefill / recompute when d_h % 8 == 0 and q, kv are 16-byte aligned): grid
 * (ceil(L / 64), heads, B'), 4 warps of 16 queries. Q (64 × DP, DP = d_h padded to 64 or 128 by cp.async's zero
 * fill) and K/V tiles of BKV = 64 (DP 64) or 32 (DP 128) keys are staged by cp.async into 128-byte-XOR-swizzled
 * shared memory, K/V double-buffered so the copies of tile j+1 overlap the mma of tile j. Per warp and tile:
 * S = Q·Kᵀ by mma m16n8k16 (Q fragments held in registers, K by ldmatrix.x4), scale and masks on the C fragment,
 * online softmax with the row max/sum over the 4 lanes of a row (two shuffles), then O += P·V with P from the S
 * registers as the A operand and V by ldmatrix.x4.trans. P goes in as bf16 hi + bf16 lo (two mmas): 16 significant
 * bits, so the output keeps the CPU's f32 P·V up to summation order (NMSE 1e-8 against 4e-6 with P rounded to bf16
 * as FlashAttention does), for a third more tensor work. Warps skip key tiles entirely after their last query
 * (causal). The output goes through the warp's rows of the Q tile, 16-byte stores.
 *
 * Napkin math (H100 SXM: 3.35 TB/s HBM3, ~67 TFLOP/s f32 non-tensor, ~990 TFLOP/s dense bf16 tensor):
 *   decode, GPT-XL (H = 20, d_h = 64) c2i 384 px, batch 8 with CFG (16 rows), bf16, at the last position p = 576:
 *     K+V read = 16·20·577·64·2·2 B = 47.3 MB per layer → 14 µs at the roofline (7 µs averaged over the image);
 *     4·16·20·577·64 = 47 MFLOP, negligible. 320 (row, head) blocks fill 132 SMs: one split, no combine launch.
 *   decode, GPT-B (H = 12, d_h = 64), one image with CFG (2 rows): 24 (row, head) pairs would leave 108 SMs idle, so
 *     the launcher splits the 584-key cache into 8 splits of 80 keys (192 blocks) and adds the combine launch
 *     (2·12·8·66·4 B = 51 KB of partials, ~2 µs of launch latency, which a CUDA graph hides).
 *   t2i prefill, GPT-XL, 16 sequences × 120 condition positions: 16·20·120·60·64·4 ≈ 0.59 GFLOP f32 → ~9 µs at the
 *     f32 peak, K/V 16·20·120·64·2·2 B = 9.8 MB read once per 16-query block (L2-resident).
 *   full recompute, t2i 512 px (L = 1143): 16·20·1143·572·64·4 ≈ 54 GFLOP → 0.8 ms per layer at the f32 peak,
 *     shared-memory bound in practice (a few times slower): acceptable for a check, a tensor-core (mma) version is
 *     the upgrade if the recompute ever runs in production. The flash kernel does the same in 3 mmas of 2 FLOPs
 *     per (query, key, feature) pair after causal skipping: 16·20·1143·572·64·6 ≈ 80 GFLOP of tensor work →
 *     ~0.1 ms per layer at the dense bf16 peak (more realistically 0.2-0.3 ms at mma.sync's ~60 % of it).
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

typedef __nv_bfloat16 bf16;

#define ATTN_TILE_K 32 /* keys per tile of attention_tiled: one per lane */
#define ATTN_TILE_QW 4 /* queries per warp in attention_tiled */
#define ATTN_MAX_HEAD_DIM 128

/* exp(a - b) that is 0 for a = -inf (also when b = -inf: an empty partial merged into an empty partial). */
static __device__ __forceinline__ float exp_diff(float a, float b) { return a == -INFINITY ? 0.0f : expf(a - b); }

/* ---- chunk loads: CH consecutive elements into f32 registers -------------------------------------------------- */

template <typename T> struct __align__(8) Pack8 {
    T v[8 / sizeof(T)];
};

/* VEC: one 16-byte (CH·sizeof(T) = 16) or 8-byte (= 8) load; the caller checked the alignment. Otherwise scalar. */
template <typename T, int CH, bool VEC>
static __device__ __forceinline__ void load_chunk(const T* __restrict__ p, float (&f)[CH]) {
    if constexpr (VEC && CH * sizeof(T) == 16) {
        const Pack16<T> v = load16(p);
#pragma unroll
        for (int j = 0; j < CH; j++) f[j] = to_float(v.v[j]);
    } else if constexpr (VEC && CH * sizeof(T) == 8) {
        Pack8<T> v;
        *reinterpret_cast<uint2*>(&v) = gld(reinterpret_cast<const uint2*>(p));
#pragma unroll
        for (int j = 0; j < CH; j++) f[j] = to_float(v.v[j]);
    } else {
#pragma unroll
        for (int j = 0; j < CH; j++) f[j] = to_float(gld(p + j));
    }
}

/* ---- shared index helpers -------------------------------------------------------------------------------------- */

struct AttnRow {
    int b, l, p;      /* sequence, query index, absolute position */
    bool pos_ok;      /* pos >= 0 and pos + L <= seq */
};

static __device__ __forceinline__ bool pos_valid(int pos, const AttentionParams& p) {
    return pos >= 0 && pos <= p.seq - p.len;
}

/* The placement of sequence b, and whether it fits the cache. */
static __device__ __forceinline__ bool place_valid(const RowPlace& at, const AttentionParams& p) {
    return pos_valid(at.pos, p) && at.slot >= 0 && at.slot < p.cache_batch;
}

/* Key row (kv = 0) or value row (kv = 1) of position k for sequence b, head h. */
template <typename T>
static __device__ __forceinline__ const T* cache_row(const T* __restrict__ cache, const AttentionParams& p, int kv,
                                                     int b, int h, int k) {
    const size_t idx = ((((size_t)p.layer * 2 + (size_t)kv) * (size_t)p.cache_batch + (size_t)b) * (size_t)p.heads +
                        (size_t)h) * (size_t)p.seq + (size_t)k;
    return cache + idx * (size_t)p.head_dim;
}

/* Is key k visible to the query at position qp of sequence b? (k <= qp is the caller's.) */
template <typename T>
static __device__ __forceinline__ bool key_visible(const T* __restrict__ mask, const AttentionParams& p, int b, int k,
                                                   int qp) {
    if (k >= p.mask_len || k == qp) return true;
    return to_float(mask[(size_t)b * (size_t)p.mask_len + (size_t)k]) != 0.0f;
}

/* ---- decode: flash-decoding over splits ------------------------------------------------------------------------ */

template <typename T, int CH, bool VEC>
static __device__ void decode_impl(const T* __restrict__ q, const T* __restrict__ kv, const T* __restrict__ mask,
                                   int slot, int pos, T* __restrict__ out, float* __restrict__ ws,
                                   const AttentionParams& p) {
    const int r = (int)blockIdx.z, h = (int)blockIdx.y, s = (int)blockIdx.x;
    const int b = r / p.len, l = r % p.len;
    const int qp = pos + l;
    const int d = p.head_dim;
    const int k0 = s * p.split_keys;
    if (k0 > qp) return; /* uniform over the block, before any barrier: the combine never reads this split */
    const int k1 = min(k0 + p.split_keys, qp + 1);

    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = (int)(blockDim.x >> 5);
    const int nch = d / CH;
    int G = 1;
    while (G < nch) G <<= 1;
    const int kpw = 32 / G;       /* keys per warp and step */
    const int c = lane & (G - 1); /* this lane's chunk of the head vector */
    const int sub = lane / G;     /* which of the warp's keys */
    const bool active = c < nch;

    const size_t row_off = (size_t)r * (size_t)p.heads * (size_t)d + (size_t)h * (size_t)d;
    float qv[CH], acc[CH];
#pragma unroll
    for (int j = 0; j < CH; j++) qv[j] = acc[j] = 0.0f;
    if (active) load_chunk<T, CH, VEC>(q + row_off + (size_t)c * CH, qv);
    float m = -INFINITY, lsum = 0.0f;

    for (int kb = k0 + warp * kpw; kb < k1; kb += nwarps * kpw) {
        const int k = kb + sub;
        const bool vis = k < k1 && key_visible(mask, p, b, k, qp);
        float kf[CH], vf[CH];
        float dot = 0.0f;
        if (vis && active) {
            load_chunk<T, CH, VEC>(cache_row(kv, p, 0, slot, h, k) + c * CH, kf);
            load_chunk<T, CH, VEC>(cache_row(kv, p, 1, slot, h, k) + c * CH, vf);
#pragma unroll
            for (int j = 0; j < CH; j++) dot += qv[j] * kf[j];
        } else {
#pragma unroll
            for (int j = 0; j < CH; j++) vf[j] = 0.0f;
        }
        /* Sum over the G lanes of the group (xor offsets below G stay inside the aligned group). */
        for (int o = G >> 1; o > 0; o >>= 1) dot += __shfl_xor_sync(FULL_MASK, dot, o);
        if (vis) {
            const float sc = dot * p.scale;
            const float mn = fmaxf(m, sc);
            const float alpha = exp_diff(m, mn), w = expf(sc - mn);
            lsum = lsum * alpha + w;
#pragma unroll
            for (int j = 0; j < CH; j++) acc[j] = acc[j] * alpha + w * vf[j];
            m = mn;
        }
    }

    /* Merge the warp's key groups (lanes with the same chunk index c, xor offsets G..16). */
    for (int o = G; o < 32; o <<= 1) {
        const float mo = __shfl_xor_sync(FULL_MASK, m, o);
        const float lo = __shfl_xor_sync(FULL_MASK, lsum, o);
        const float mn = fmaxf(m, mo);
        const float a = exp_diff(m, mn), bb = exp_diff(mo, mn);
        lsum = lsum * a + lo * bb;
#pragma unroll
        for (int j = 0; j < CH; j++) acc[j] = acc[j] * a + __shfl_xor_sync(FULL_MASK, acc[j], o) * bb;
        m = mn;
    }

    /* Merge the warps: [nwarps][d] accumulators, then [nwarps] maxima and [nwarps] sums. */
    DYNAMIC_SHARED(float, smem);
    float* s_acc = smem;
    float* s_m = smem + (size_t)nwarps * d;
    float* s_l = s_m + nwarps;
    if (sub == 0 && active) {
#pragma unroll
        for (int j = 0; j < CH; j++) s_acc[warp * d + c * CH + j] = acc[j];
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = lsum;
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < nwarps; w++) M = fmaxf(M, s_m[w]);
    float L = 0.0f;
    for (int w = 0; w < nwarps; w++) L += s_l[w] * exp_diff(s_m[w], M);
    if (p.splits == 1) {
        /* The only split holds the diagonal key, so L > 0. */
        const float inv = 1.0f / L;
        for (int i = tid; i < d; i += (int)blockDim.x) {
            float a = 0.0f;
            for (int w = 0; w < nwarps; w++) a += s_acc[w * d + i] * exp_diff(s_m[w], M);
            gst(out + row_off + i, from_float<T>(a * inv));
        }
    } else {
        const size_t part = ((size_t)r * (size_t)p.heads + (size_t)h) * (size_t)p.splits + (size_t)s;
        float* wacc = ws + part * (size_t)d;
        float* wml = ws + (size_t)p.batch * p.len * p.heads * p.splits * (size_t)d + part * 2;
        for (int i = tid; i < d; i += (int)blockDim.x) {
            float a = 0.0f;
            for (int w = 0; w < nwarps; w++) a += s_acc[w * d + i] * exp_diff(s_m[w], M);
            gst(wacc + i, a);
        }
        if (tid == 0) {
            wml[0] = M;
            wml[1] = L;
        }
    }
}

/* NaN into this block's share of the output rows when pos does not fit the cache. */
template <typename T>
static __device__ void write_nan_rows(T* __restrict__ out, size_t row_off, int d) {
    for (int i = (int)threadIdx.x; i < d; i += (int)blockDim.x) gst(out + row_off + i, from_float<T>(NAN));
}

template <typename T>
static __device__ __forceinline__ void decode_entry(const T* __restrict__ q, const T* __restrict__ kv,
                                                    const T* __restrict__ mask, const StepState* __restrict__ step,
                                                    const int32_t* __restrict__ rows, T* __restrict__ out,
                                                    float* __restrict__ ws, const AttentionParams& p) {
    const RowPlace at = row_place(rows, step, p.per_row, (int)blockIdx.z / p.len);
    if (!place_valid(at, p)) {
        if (p.splits == 1)
            write_nan_rows(out, (size_t)blockIdx.z * p.heads * p.head_dim + (size_t)blockIdx.y * p.head_dim,
                           p.head_dim);
        return; /* with splits, attention_combine writes the NaNs */
    }
    constexpr int CH16 = 16 / sizeof(T);
    const bool al16 = aligned16(q) && aligned16(kv);
    const bool al8 = ((reinterpret_cast<uintptr_t>(q) | reinterpret_cast<uintptr_t>(kv)) & 7) == 0;
    if (p.head_dim % CH16 == 0 && al16)
        decode_impl<T, CH16, true>(q, kv, mask, at.slot, at.pos, out, ws, p);
    else if (CH16 > 4 && al8) /* bf16, d_h a multiple of 4 only (d_h = 100): 8-byte loads */
        decode_impl<T, 4, true>(q, kv, mask, at.slot, at.pos, out, ws, p);
    else
        decode_impl<T, 4, false>(q, kv, mask, at.slot, at.pos, out, ws, p);
}

extern "C" __global__ void attention_decode_f32(const float* __restrict__ q, const float* __restrict__ kv,
                                                const float* __restrict__ mask, const StepState* __restrict__ step,
                                                const int32_t* __restrict__ rows, float* __restrict__ out,
                                                float* __restrict__ ws, AttentionParams p) {
    decode_entry<float>(q, kv, mask, step, rows, out, ws, p);
}

extern "C" __global__ void attention_decode_bf16(const __nv_bfloat16* __restrict__ q,
                                                 const __nv_bfloat16* __restrict__ kv,
                                                 const __nv_bfloat16* __restrict__ mask,
                                                 const StepState* __restrict__ step, const int32_t* __restrict__ rows,
                                                 __nv_bfloat16* __restrict__ out, float* __restrict__ ws,
                                                 AttentionParams p) {
    decode_entry<__nv_bfloat16>(q, kv, mask, step, rows, out, ws, p);
}

/* ---- combine: one block per (query row, head), threads over the features --------------------------------------- */

template <typename T>
static __device__ __forceinline__ void combine_impl(const float* __restrict__ ws, const StepState* __restrict__ step,
                                                    const int32_t* __restrict__ rows, T* __restrict__ out,
                                                    const AttentionParams& p) {
    const int d = p.head_dim;
    const size_t nrh = (size_t)p.batch * p.len * p.heads;
    for (size_t rh = blockIdx.x; rh < nrh; rh += gridDim.x) {
        const size_t row_off = rh * (size_t)d; /* (r·heads + h)·d_h = r·D + h·d_h */
        const size_t r = rh / (size_t)p.heads;
        const RowPlace at = row_place(rows, step, p.per_row, (int)(r / (size_t)p.len));
        if (!place_valid(at, p)) {
            write_nan_rows(out, row_off, d);
            continue;
        }
        const int l = (int)(r % (size_t)p.len);
        const int used = (at.pos + l) / p.split_keys + 1; /* splits that hold keys 0..=p */
        const float* ml = ws + nrh * p.splits * (size_t)d + rh * p.splits * 2;
        const float* acc = ws + rh * p.splits * (size_t)d;
        float M = -INFINITY;
        for (int s = 0; s < used; s++) M = fmaxf(M, ml[2 * s]);
        float L = 0.0f;
        for (int s = 0; s < used; s++) L += ml[2 * s + 1] * exp_diff(ml[2 * s], M);
        const float inv = 1.0f / L;
        for (int i = (int)threadIdx.x; i < d; i += (int)blockDim.x) {
            float a = 0.0f;
            for (int s = 0; s < used; s++) a += gld(acc + (size_t)s * d + i) * exp_diff(ml[2 * s], M);
            gst(out + row_off + i, from_float<T>(a * inv));
        }
    }
}

extern "C" __global__ void attention_combine_f32(const float* __restrict__ ws, const StepState* __restrict__ step,
                                                 const int32_t* __restrict__ rows, float* __restrict__ out,
                                                 AttentionParams p) {
    combine_impl<float>(ws, step, rows, out, p);
}

extern "C" __global__ void attention_combine_bf16(const float* __restrict__ ws, const StepState* __restrict__ step,
                                                  const int32_t* __restrict__ rows, __nv_bfloat16* __restrict__ out,
                                                  AttentionParams p) {
    combine_impl<__nv_bfloat16>(ws, step, rows, out, p);
}

/* ---- tiled: prefill and full recompute ------------------------------------------------------------------------- */

template <typename T, bool VEC>
static __device__ __forceinline__ void stage_rows(float* __restrict__ dst, int dst_stride, const T* __restrict__ src,
                                                  size_t src_stride, int rows, int valid_rows, int d) {
    /* rows × d elements in chunks of 4 (d_h is a multiple of 4); rows >= valid_rows are zero. */
    const int nch = d / 4;
    for (int i = (int)threadIdx.x; i < rows * nch; i += (int)blockDim.x) {
        const int row = i / nch, c = i % nch;
        float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (row < valid_rows) load_chunk<T, 4, VEC>(src + (size_t)row * src_stride + (size_t)c * 4, f);
#pragma unroll
        for (int j = 0; j < 4; j++) dst[row * dst_stride + c * 4 + j] = f[j];
    }
}

template <typename T, bool VEC>
static __device__ void tiled_impl(const T* __restrict__ q, const T* __restrict__ kv, const T* __restrict__ mask,
                                  int slot, int pos, T* __restrict__ out, const AttentionParams& p) {
    constexpr int QW = ATTN_TILE_QW, BK = ATTN_TILE_K, FPL = ATTN_MAX_HEAD_DIM / 32; /* features per lane */
    const int d = p.head_dim, D = p.heads * d;
    const int h = (int)blockIdx.y, b = (int)blockIdx.z;
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = (int)(blockDim.x >> 5);
    const int BQ = nwarps * QW;
    const int q0 = (int)blockIdx.x * BQ;
    if (q0 >= p.len) return; /* uniform: a grid larger than needed */
    const int nq = min(BQ, p.len - q0);
    const int kend = pos + q0 + nq; /* keys 0..kend-1 are seen by some query of the block */

    DYNAMIC_SHARED(float, smem);
    float* sq = smem;                    /* [BQ][d] */
    float* sk = sq + (size_t)BQ * d;     /* [BK][d + 1] */
    float* sv = sk + (size_t)BK * (d + 1); /* [BK][d] */

    const T* qbase = q + ((size_t)b * p.len + q0) * (size_t)D + (size_t)h * d;
    stage_rows<T, VEC>(sq, d, qbase, (size_t)D, BQ, nq, d);

    float m[QW], lsum[QW], acc[QW][FPL];
#pragma unroll
    for (int j = 0; j < QW; j++) {
        m[j] = -INFINITY;
        lsum[j] = 0.0f;
#pragma unroll
        for (int t = 0; t < FPL; t++) acc[j][t] = 0.0f;
    }

    const T* kbase = cache_row(kv, p, 0, slot, h, 0);
    const T* vbase = cache_row(kv, p, 1, slot, h, 0);
    for (int kt = 0; kt < kend; kt += BK) {
        const int nk = min(BK, kend - kt);
        __syncthreads(); /* every warp is done with the previous tile */
        stage_rows<T, VEC>(sk, d + 1, kbase + (size_t)kt * d, (size_t)d, BK, nk, d);
        stage_rows<T, VEC>(sv, d, vbase + (size_t)kt * d, (size_t)d, BK, nk, d);
        __syncthreads();

        const int k = kt + lane;
        float sc[QW];
#pragma unroll
        for (int j = 0; j < QW; j++) sc[j] = 0.0f;
        for (int e = 0; e < d; e++) {
            const float kf = sk[lane * (d + 1) + e];
#pragma unroll
            for (int j = 0; j < QW; j++) sc[j] += sq[(warp * QW + j) * d + e] * kf;
        }
#pragma unroll
        for (int j = 0; j < QW; j++) {
            const int qi = warp * QW + j;
            const int qp = pos + q0 + qi;
            const bool vis = qi < nq && k <= qp && key_visible(mask, p, b, k, qp);
            const float s = vis ? sc[j] * p.scale : -INFINITY;
            const float mn = fmaxf(m[j], warp_reduce_max(s));
            if (mn == -INFINITY) continue; /* nothing visible yet for this query: uniform over the warp */
            const float alpha = exp_diff(m[j], mn);
            const float w = vis ? expf(s - mn) : 0.0f;
            lsum[j] = lsum[j] * alpha + warp_reduce_sum(w);
#pragma unroll
            for (int t = 0; t < FPL; t++) acc[j][t] *= alpha;
#pragma unroll 4
            for (int kk = 0; kk < BK; kk++) {
                const float wk = __shfl_sync(FULL_MASK, w, kk);
#pragma unroll
                for (int t = 0; t < FPL; t++) {
                    const int e = lane + 32 * t;
                    if (e < d) acc[j][t] += wk * sv[kk * d + e];
                }
            }
            m[j] = mn;
        }
    }

#pragma unroll
    for (int j = 0; j < QW; j++) {
        const int qi = warp * QW + j;
        if (qi >= nq) continue;
        const float inv = 1.0f / lsum[j];
        T* o = out + ((size_t)b * p.len + q0 + qi) * (size_t)D + (size_t)h * d;
#pragma unroll
        for (int t = 0; t < FPL; t++) {
            const int e = lane + 32 * t;
            if (e < d) gst(o + e, from_float<T>(acc[j][t] * inv));
        }
    }
}

template <typename T>
static __device__ __forceinline__ void tiled_entry(const T* __restrict__ q, const T* __restrict__ kv,
                                                   const T* __restrict__ mask, const StepState* __restrict__ step,
                                                   const int32_t* __restrict__ rows, T* __restrict__ out,
                                                   const AttentionParams& p) {
    const RowPlace at = row_place(rows, step, p.per_row, (int)blockIdx.z);
    if (!place_valid(at, p)) {
        const int BQ = (int)(blockDim.x >> 5) * ATTN_TILE_QW;
        const int D = p.heads * p.head_dim;
        for (int qi = (int)blockIdx.x * BQ; qi < min(p.len, (int)(blockIdx.x + 1) * BQ); qi++)
            write_nan_rows(out, ((size_t)blockIdx.z * p.len + qi) * (size_t)D + (size_t)blockIdx.y * p.head_dim,
                           p.head_dim);
        return;
    }
    /* 4-element chunks: 16 bytes in f32, 8 bytes in bf16; d_h % 4 == 0 keeps every row aligned like the base. */
    constexpr uintptr_t A = 4 * sizeof(T) - 1;
    if (((reinterpret_cast<uintptr_t>(q) | reinterpret_cast<uintptr_t>(kv)) & A) == 0)
        tiled_impl<T, true>(q, kv, mask, at.slot, at.pos, out, p);
    else
        tiled_impl<T, false>(q, kv, mask, at.slot, at.pos, out, p);
}

extern "C" __global__ void attention_tiled_f32(const float* __restrict__ q, const float* __restrict__ kv,
                                               const float* __restrict__ mask, const StepState* __restrict__ step,
                                               const int32_t* __restrict__ rows, float* __restrict__ out,
                                               AttentionParams p) {
    tiled_entry<float>(q, kv, mask, step, rows, out, p);
}

extern "C" __global__ void attention_tiled_bf16(const __nv_bfloat16* __restrict__ q,
                                                const __nv_bfloat16* __restrict__ kv,
                                                const __nv_bfloat16* __restrict__ mask,
                                                const StepState* __restrict__ step, const int32_t* __restrict__ rows,
                                                __nv_bfloat16* __restrict__ out, AttentionParams p) {
    tiled_entry<__nv_bfloat16>(q, kv, mask, step, rows, out, p);
}

/* ---- flash: the bf16 prefill on tensor cores ------------------------------------------------------------------ */

#define FLASH_BQ 64 /* queries per block: 16 per warp, one m16 tile */
#define FLASH_THREADS 128

/* Byte offset of 16-byte chunk c of row `row` in a tile of RB-byte rows (RB = 128 or 256): the 128-byte XOR
 * swizzle, so the 8 rows of an ldmatrix phase (same logical chunk) and the 8 chunks of a cp.async phase land in 8
 * distinct bank groups. */
template <int RB> static __device__ __forceinline__ int fswz(int row, int c) { return row * RB + ((c ^ (row & 7)) << 4); }

/* DP: head_dim padded to 64 or 128 (zero-filled by cp.async past d); BKV: keys per tile (64 or 32, so that Q plus two
 * stages of K and V fit 48 KiB). */
template <int DP, int BKV>
static __device__ void flash_impl(const bf16* __restrict__ q, const bf16* __restrict__ kv, const bf16* __restrict__ mask,
                                  int slot, int pos, bf16* __restrict__ out, const AttentionParams& p) {
    constexpr int RB = DP * 2, CH = DP / 8, KS = DP / 16, NT = BKV / 8, NO = DP / 8;
    const int d = p.head_dim, D = p.heads * d;
    const int h = (int)blockIdx.y, b = (int)blockIdx.z;
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int q0 = (int)blockIdx.x * FLASH_BQ;
    if (q0 >= p.len) return; /* uniform: a grid larger than needed */
    const int nq = min(FLASH_BQ, p.len - q0);
    const int kend = pos + q0 + nq; /* keys 0..kend-1 are seen by some query of the block */

    DYNAMIC_SHARED(float, smem); /* nvcc: one type per extern __shared__ name in a file (the other kernels') */
    unsigned char* sq = reinterpret_cast<unsigned char*>(smem); /* [64][RB]: Q, later the output tile */
    unsigned char* skv = sq + FLASH_BQ * RB;                      /* [2 stages][K: BKV rows | V: BKV rows][RB] */
    const bf16* qbase = q + ((size_t)b * p.len + q0) * (size_t)D + (size_t)h * d;
    const bf16* kbase = cache_row(kv, p, 0, slot, h, 0);
    const bf16* vbase = cache_row(kv, p, 1, slot, h, 0);

    for (int c = tid; c < FLASH_BQ * CH; c += FLASH_THREADS) {
        const int row = c / CH, ch = c % CH;
        const bool in = row < nq && ch * 8 < d;
        cp_async16(sq + fswz<RB>(row, ch), in ? qbase + (size_t)row * D + ch * 8 : qbase, in ? 16 : 0);
    }
    auto load_kv = [&](int s, int kt) {
        unsigned char* base = skv + s * 2 * BKV * RB;
        for (int c = tid; c < 2 * BKV * CH; c += FLASH_THREADS) {
            const int row = c / CH, ch = c % CH, key = kt + row % BKV;
            const bool in = key < kend && ch * 8 < d;
            const bf16* src = (row < BKV ? kbase : vbase) + (size_t)key * d + ch * 8;
            cp_async16(base + fswz<RB>(row, ch), in ? src : kbase, in ? 16 : 0);
        }
    };
    load_kv(0, 0);
    cp_async_commit();

    /* This thread's two query rows: r = 0 → warp·16 + g, r = 1 → + 8 (the C fragment's rows). */
    int qp[2];
    bool qok[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int qi = warp * 16 + g + 8 * r;
        qok[r] = qi < nq;
        qp[r] = pos + q0 + qi;
    }
    const bool warp_rows = warp * 16 < nq;
    const int warp_last = pos + q0 + min(warp * 16 + 15, nq - 1); /* the warp's last query position */

    float o[NO][4], m[2] = {-INFINITY, -INFINITY}, lsum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < NO; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) o[i][j] = 0.0f;
    uint32_t qa[KS][4];
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_kc = lane >> 4;   /* A / V.trans lane roles */
    const int b_row = (lane & 7) + (lane >> 4) * 8, b_kc = (lane >> 3) & 1; /* K (B operand) lane roles */

    const int ntiles = ceil_div(kend, BKV);
    for (int j = 0; j < ntiles; j++) {
        if (j + 1 < ntiles) load_kv((j + 1) & 1, (j + 1) * BKV);
        cp_async_commit();
        cp_async_wait<1>(); /* Q and tile j have landed (this thread's copies) ... */
        __syncthreads();    /* ... and everyone's */
        if (j == 0) {
#pragma unroll
            for (int ks = 0; ks < KS; ks++) ldmatrix_x4(qa[ks], sq + fswz<RB>(warp * 16 + a_row, 2 * ks + a_kc));
        }
        const int kt = j * BKV;
        /* Warp-uniform skips: no valid query rows, or every key of the tile after the warp's last query. */
        if (warp_rows && kt <= warp_last) {
            const unsigned char* ks_ = skv + (j & 1) * 2 * BKV * RB;
            const unsigned char* vs_ = ks_ + BKV * RB;
            float s[NT][4];
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int i = 0; i < 4; i++) s[n][i] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ks++)
#pragma unroll
                for (int n = 0; n < NT; n += 2) {
                    uint32_t kb[4];
                    ldmatrix_x4(kb, ks_ + fswz<RB>(n * 8 + b_row, 2 * ks + b_kc));
                    const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
                    mma_m16n8k16_bf16(s[n], qa[ks], b0, s[n]);
                    mma_m16n8k16_bf16(s[n + 1], qa[ks], b1, s[n + 1]);
                }
            /* Scale, causal + condition mask, online softmax over the tile (rows shared by the 4 lanes of a g). */
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int r = i >> 1, key = kt + n * 8 + 2 * t + (i & 1);
                    const bool vis = qok[r] && key <= qp[r] && key_visible(mask, p, b, key, qp[r]);
                    s[n][i] = vis ? s[n][i] * p.scale : -INFINITY;
                    mx[r] = fmaxf(mx[r], s[n][i]);
                }
            float alpha[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
                const float mn = fmaxf(m[r], mx[r]);
                alpha[r] = mn == -INFINITY ? 1.0f : exp_diff(m[r], mn);
                m[r] = mn;
            }
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int r = i >> 1;
                    s[n][i] = s[n][i] == -INFINITY ? 0.0f : expf(s[n][i] - m[r]);
                }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float ps = 0.0f;
#pragma unroll
                for (int n = 0; n < NT; n++) ps += s[n][2 * r] + s[n][2 * r + 1];
                lsum[r] = lsum[r] * alpha[r] + ps; /* this lane's share; the 4 lanes are summed at the end */
            }
#pragma unroll
            for (int i = 0; i < NO; i++)
#pragma unroll
                for (int jj = 0; jj < 4; jj++) o[i][jj] *= alpha[jj >> 1];
            /* O += P·V with P = hi + lo, both bf16 (16 significant bits: P's rounding is 2^-17 relative, far below
             * the output's bf16 rounding, so the result stays the CPU's f32 P·V up to summation order). */
#pragma unroll
            for (int kk = 0; kk < BKV / 16; kk++) {
                uint32_t ahi[4], alo[4];
#pragma unroll
                for (int half = 0; half < 2; half++)
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        const float x0 = s[2 * kk + half][2 * r], x1 = s[2 * kk + half][2 * r + 1];
                        const float h0 = quantize<bf16>(x0), h1 = quantize<bf16>(x1);
                        ahi[2 * half + r] = pack_bf16x2(h0, h1);
                        alo[2 * half + r] = pack_bf16x2(x0 - h0, x1 - h1);
                    }
#pragma unroll
                for (int nf = 0; nf < NO; nf += 2) {
                    uint32_t vb[4];
                    ldmatrix_x4_trans(vb, vs_ + fswz<RB>(kk * 16 + a_row, nf + a_kc));
                    const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
                    mma_m16n8k16_bf16(o[nf], ahi, b0, o[nf]);
                    mma_m16n8k16_bf16(o[nf], alo, b0, o[nf]);
                    mma_m16n8k16_bf16(o[nf + 1], ahi, b1, o[nf + 1]);
                    mma_m16n8k16_bf16(o[nf + 1], alo, b1, o[nf + 1]);
                }
            }
        }
        __syncthreads(); /* everyone is done with stage j & 1 before iteration j + 1 refills it */
    }

    /* Normalise, round, and write through the warp's own 16 rows of the Q tile: 16-byte row segments out. */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        lsum[r] += __shfl_xor_sync(FULL_MASK, lsum[r], 1);
        lsum[r] += __shfl_xor_sync(FULL_MASK, lsum[r], 2);
    }
    if (!warp_rows) return; /* uniform over the warp; no barrier follows */
#pragma unroll
    for (int nf = 0; nf < NO; nf++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const float inv = 1.0f / lsum[r];
            *reinterpret_cast<uint32_t*>(sq + fswz<RB>(warp * 16 + g + 8 * r, nf) + 4 * t) =
                pack_bf16x2(o[nf][2 * r] * inv, o[nf][2 * r + 1] * inv);
        }
    __syncwarp();
    const bool vout = aligned16(out);
    for (int c = lane; c < 16 * CH; c += 32) {
        const int row = warp * 16 + c / CH, ch = c % CH;
        if (row >= nq || ch * 8 >= d) continue;
        bf16* dst = out + ((size_t)b * p.len + q0 + row) * (size_t)D + (size_t)h * d + ch * 8;
        const bf16* src = reinterpret_cast<const bf16*>(sq + fswz<RB>(row, ch));
        if (vout) {
            store16(dst, load16(src));
        } else {
            for (int e = 0; e < 8; e++) dst[e] = src[e];
        }
    }
}

/* bf16 prefill / full recompute on tensor cores: grid (ceil(L / 64), heads, B'), 128 threads; head_dim a multiple
 * of 8 up to 128, q and kv 16-byte aligned (the launcher checks; otherwise attention_tiled_bf16 runs). Dynamic
 * shared memory: 64·DP·2 + 2·2·BKV·DP·2 bytes (40 KiB at d_h <= 64, 48 KiB at d_h <= 128). */
extern "C" __global__ void attention_flash_bf16(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kv,
                                                const __nv_bfloat16* __restrict__ mask,
                                                const StepState* __restrict__ step, const int32_t* __restrict__ rows,
                                                __nv_bfloat16* __restrict__ out, AttentionParams p) {
    const RowPlace at = row_place(rows, step, p.per_row, (int)blockIdx.z);
    if (!place_valid(at, p)) {
        const int D = p.heads * p.head_dim;
        for (int qi = (int)blockIdx.x * FLASH_BQ; qi < min(p.len, (int)(blockIdx.x + 1) * FLASH_BQ); qi++)
            write_nan_rows(out, ((size_t)blockIdx.z * p.len + qi) * (size_t)D + (size_t)blockIdx.y * p.head_dim,
                           p.head_dim);
        return;
    }
    if (p.head_dim <= 64)
        flash_impl<64, 64>(q, kv, mask, at.slot, at.pos, out, p);
    else
        flash_impl<128, 32>(q, kv, mask, at.slot, at.pos, out, p);
}
