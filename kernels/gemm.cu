/*
 * gemm.cu: the GPT's linear layers, y[m, n] = x[m, k] · w[n, k]ᵀ (+ residual), and a strided batched f32 GEMM for
 * the VQ decoder (1×1 convolutions, the attention products).
 *
 * Entry points (kernels/llamagen_kernels.h):
 *   gemm_tiled_{128x128,128x64,64x64}_bf16 (x bf16 [m, k], w bf16 [n, k], r bf16 [m, n] or null, y bf16 [m, n],
 *                    GemmParams)
 *   gemm_small_bf16 (same arguments)
 *   gemm_small_f32  (x, w, r, y f32, GemmParams): the f32 decode path, SIMT, 16 rows of x per block row
 *   gemm_strided_f32(a, b, bias, r, c f32, GemmStridedParams): also the GPT's f32 (faithful) linear layers for
 *                    m > 64, with a = x (strides k, 1), b(k, n) = w[n, k] (strides 1, k), c = y (strides n, 1).
 * bf16 numerics follow backend::cpu::matmul with round = true: products of bf16 values are exact in f32 and summed
 * in f32; the linear output is rounded to bf16, then residual + it is rounded again (two roundings, as the
 * reference's `h = x + self.wo(...)`). f32 follows round = false: y = Σ + r in f32.
 *
 * Design.
 *   gemm_tiled_<BM>x<BN>_bf16 (prefill, large batches; 128×128 with 8 warps, 128×64 and 64×64 with 4, each warp
 *     a 64×32 or 32×32 tile of m16n8k16 mmas; the launcher picks the largest tile that still gives ≥ 132 blocks,
 *     backend::cuda::gemm::pick_tile): k in stages of 32, a 3-stage cp.async pipeline (16-byte LDGSTS, zero-fill
 *     past m, n, k), shared rows of 64 bytes with an XOR swizzle of the 16-byte chunks (swz: ldmatrix phases and
 *     cp.async phases both conflict-free, no padding), A and B fragments by ldmatrix.x4, f32 accumulators; the
 *     epilogue stages the rounded tile through shared memory so that y (and the residual) move as 16-byte rows.
 *     Rows whose k % 8 != 0 or unaligned bases take the same pipeline through registers (no cp.async).
 *     Split-K (p.k_splits > 1, backend::cuda::gemm::split_k: when even 64×64 tiles leave SMs idle): grid.z blocks
 *     each run the pipeline over one range of whole 32-wide stages and store their f32 accumulators to `part`
 *     (8-byte fragment pairs, 4 lanes per 32-byte sector); gemm_splitk_reduce_bf16 then sums the ranges in order
 *     (deterministic) and applies the same round / + residual / round epilogue. Extra traffic 2·splits·m·n·4 bytes:
 *     at m = 128, n = 768, 6 splits 4.7 MB against the 1.2 MB weight it spreads over 6× the SMs.
 *   gemm_small_bf16 (decode, m ≤ 64 per block row): weight-streaming. A block owns 8 weight rows (one n8 mma
 *     column group) and up to 64 rows of x (4 m16 tiles), its warps split k in interleaved 32-wide chunks. A lane
 *     (g = lane/4, t = lane%4) loads w[n0 + g][kc + 8t .. +8] with one 16-byte load, which is exactly its B fragment
 *     for two mma k16 steps once k is permuted: logical k {2t, 2t+1, 2t+8, 2t+9} of step 0 are physical 8t+0..3, of
 *     step 1 physical 8t+4..7; A (x rows g and g+8) is loaded with the same permutation, and a dot product does not
 *     care about the order of k. So w is read exactly once from HBM, in 64-byte row segments, and shared by all m
 *     rows of the block through the tensor cores; x (≤ 64 × k bf16) stays in L1/L2. The next two chunks of w are
 *     in flight while the current one is multiplied. Per-warp partial tiles are summed over warps in shared memory in a
 *     fixed order (deterministic), then the epilogue applies the residual and the roundings.
 *   SwiGLU epilogue (p.swiglu, the FFN's w1|w3 with silu(a)·b; every bf16 kernel above and gemm_small_f32): the GEMM's n = 2f
 *     columns read W1 and W3 rows interleaved in groups of 4 (swiglu_row), so output 4j + c needs columns 8j + c
 *     and 8j + c + 4, which always share an n8 mma tile: the small kernel pairs them in its cross-warp sum, the
 *     tiled epilogue in its shared output tile (8 outputs per 16-byte store), the split-K reduce in one 32-byte
 *     sector of partials. Each half is rounded as the linear output, then silu, then the product (the unfused
 *     matmul + swiglu's roundings), and the [m, 2f] product never reaches memory.
 *   gemm_small_f32 (f32 decode): the same weight streaming on SIMT cores, lane (g, t) reads 8 floats of weight row
 *     g per chunk and dots them with each of up to 16 rows of x (one accumulator per row; grid.y covers m in
 *     groups of 16, re-reading w from L2 per group); lanes of a row are summed with shuffles, warps in shared
 *     memory, in a fixed order.
 *   gemm_strided_f32: classic SIMT tiling, 64×64 tile, k step 16, 256 threads each computing a 4×4 grid of
 *     outputs strided by 16 (conflict-free shared reads, coalesced stores when c_sn = 1). Global → shared loads walk
 *     whichever index has stride 1 (k or m for a, k or n for b), so both transposed layouts coalesce. Every index
 *     is guarded; offsets are computed in 64 bits. batch is grid.z.
 *
 * Napkin math (H100 SXM: 3.35 TB/s HBM3, ~990 TFLOP/s dense bf16 tensor, ~67 TFLOP/s f32):
 *   GPT-B decode step, batch 8 with CFG (m = 16): all linear layers stream ~222 MB of bf16 weights → ~66 µs at the
 *     roofline; FLOPs 2·16·111e6 ≈ 3.6 GFLOP → 3.6 µs of tensor time: memory bound by 20×, hence gemm_small_bf16.
 *     One qkv projection (n = 2304, k = 768): 3.5 MB → 1.1 µs, 288 blocks.
 *   t2i prefill, 16 sequences × 120 tokens (m = 1920), qkv: 6.8 GFLOP → 6.9 µs tensor, 15 MB → 4.5 µs HBM: compute
 *     bound; 128×128 tiles: 15 × 18 = 270 blocks, ~2 waves on 132 SMs; mma.sync reaches ~60-70 % of the dense
 *     peak at best (wgmma is needed beyond), so ~11 µs is the realistic target. The kernel lab (docs/KERNELS.md)
 *     counts its traffic: every global sector ideal, ldmatrix and cp.async stores conflict-free.
 *   VQ 1×1 conv c = 512 at 32×32 (f32): 2·512·512·1024 = 0.54 GFLOP → 8 µs at the f32 peak.
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

typedef __nv_bfloat16 bf16;

/* 8 consecutive elements row[k .. k+8) as one 16-byte pack; zeros past kend or when row is null (a row outside
 * the matrix). The 16-byte load needs vec (k % 8 == 0 rows, aligned base) and the whole chunk in range. */
static __device__ __forceinline__ Pack16<bf16> load_chunk8(const bf16* __restrict__ row, int k, int kend, bool vec) {
    Pack16<bf16> p;
    if (row != nullptr && vec && k + 8 <= kend) return load16(row + k);
#pragma unroll
    for (int j = 0; j < 8; j++) p.v[j] = (row != nullptr && k + j < kend) ? row[k + j] : from_float<bf16>(0.0f);
    return p;
}

static __device__ __forceinline__ uint32_t pack_word(const Pack16<bf16>& p, int i) {
    return reinterpret_cast<const uint32_t*>(&p)[i];
}

/* The epilogue shared by both bf16 kernels: round the linear output, add the residual, round again. */
static __device__ __forceinline__ void store_out_bf16(const bf16* __restrict__ r, bf16* __restrict__ y,
                                                      const GemmParams& p, int row, int col, float acc) {
    if (row >= p.m || col >= p.n) return;
    const size_t i = (size_t)row * (size_t)p.n + (size_t)col;
    const float lin = quantize<bf16>(acc);
    gst(y + i, from_float<bf16>(p.has_residual ? to_float(gld(r + i)) + lin : lin));
}

/* SwiGLU (p.swiglu): GEMM column v reads weight row swiglu_row(v), W1 and W3 rows interleaved in groups of 4:
 * v = 8j + c is W1 row 4j + c for c < 4 and W3 row f + 4j + c - 4 otherwise. Output 4j + c then pairs columns
 * 8j + c and 8j + c + 4: one n8 mma tile, one small-kernel block, one 32-byte sector of f32 partials. -1 past f. */
static __device__ __forceinline__ int swiglu_row(int v, int f) {
    const int o = 4 * (v >> 3) + (v & 3);
    return o < f ? ((v & 4) ? f + o : o) : -1;
}

/* The weight row GEMM column v reads (-1: none, a column past n). */
static __device__ __forceinline__ int weight_row(int v, const GemmParams& p) {
    return p.swiglu ? swiglu_row(v, p.n / 2) : (v < p.n ? v : -1);
}

/* ---- gemm_tiled_<BM>x<BN>_bf16 ------------------------------------------------------------------------------- */

#define TK 32     /* k per pipeline stage: one 64-byte row segment = 4 chunks of 16 bytes per tile row */
#define STAGES 3  /* cp.async stages in flight: copies of tiles kt+1, kt+2 overlap the mma of tile kt */

/* Byte offset of 16-byte chunk c (0..3) of row `row` in a stage tile of 64-byte rows. XOR swizzle: the 8 rows an
 * ldmatrix phase reads (rows r..r+7, r % 8 == 0, one logical chunk) land in 8 distinct 16-byte bank groups
 * ((row & 1)·4 + (c ^ ((row >> 1) & 3))), and so do the 8 chunks one cp.async phase writes (rows 2i, 2i+1,
 * chunks 0..3): both conflict-free, with no padding. */
static __device__ __forceinline__ int swz(int row, int c) { return row * 64 + ((c ^ ((row >> 1) & 3)) << 4); }

template <int BM, int BN, int WARPS_M, int WARPS_N> struct TiledGemm {
    static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
    static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N; /* warp tile */
    static constexpr int MI = WTM / 16, NI = WTN / 8;              /* mma tiles per warp */
    static constexpr int STAGE_BYTES = (BM + BN) * TK * 2;
    static constexpr int CLD = BN + 8; /* epilogue tile row, bf16: 16-byte aligned, fragment writes conflict-free */
    static constexpr int SMEM = STAGES * STAGE_BYTES > BM * CLD * 2 ? STAGES * STAGE_BYTES : BM * CLD * 2;
    static_assert(NI % 2 == 0, "B fragments are loaded two n8 tiles per ldmatrix.x4");
    static_assert(((BM + BN) * 4) % THREADS == 0, "whole chunks per thread");
    static_assert(SMEM <= 48 * 1024, "dynamic shared memory without the opt-in attribute");
};

template <int BM, int BN, int WARPS_M, int WARPS_N>
static __device__ __forceinline__ void gemm_tiled(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                  const bf16* __restrict__ r, bf16* __restrict__ y,
                                                  float* __restrict__ part, const GemmParams& p) {
    typedef TiledGemm<BM, BN, WARPS_M, WARPS_N> G;
    DYNAMIC_SHARED(unsigned char, smem);
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = (int)blockIdx.y * BM, n0 = (int)blockIdx.x * BN;
    const int wm = (warp / WARPS_N) * G::WTM, wn = (warp % WARPS_N) * G::WTN;
    /* cp.async needs 16-byte aligned sources: rows of k % 8 == 0 elements from aligned bases. Otherwise the same
     * pipeline stages through registers (plain loads, zero-padded), the GPT never takes that path. */
    const bool vec = p.k % 8 == 0 && aligned16(x) && aligned16(w);
    /* split-K: this block's k range [k_lo, k_hi); the stage loads zero-fill past k_hi as past k */
    const bool split = p.k_splits > 1;
    const int k_lo = split ? (int)blockIdx.z * p.k_chunk : 0, k_hi = split ? min(p.k, k_lo + p.k_chunk) : p.k;
    if (split && ((p.k_chunk & (TK - 1)) != 0 || part == nullptr)) __trap();
    const int ktiles = ceil_div(k_hi - k_lo, TK);

    /* Stage s of tile kt: chunk c = tid + THREADS·i is row c / 4 (A rows first, then B rows), k chunk c % 4. */
    auto load_stage = [&](int s, int kt) {
        unsigned char* base = smem + s * G::STAGE_BYTES;
#pragma unroll
        for (int i = 0; i < (BM + BN) * 4 / G::THREADS; i++) {
            const int c = tid + G::THREADS * i, row = c >> 2, kc = c & 3, kk = k_lo + kt * TK + kc * 8;
            const bool is_a = row < BM;
            const int grow = is_a ? (m0 + row < p.m ? m0 + row : -1) : weight_row(n0 + row - BM, p);
            const bf16* src = is_a ? x : w;
            unsigned char* dst = base + (is_a ? 0 : BM * 64) + swz(is_a ? row : row - BM, kc);
            const bool in = grow >= 0 && kk < k_hi; /* k_chunk % 8 == 0: a chunk is all in or all out */
            if (vec) {
                const bf16* g = in ? src + (size_t)grow * (size_t)p.k + kk : src;
                cp_async16(dst, g, in ? 16 : 0);
            } else {
                const bf16* rowp = grow >= 0 ? src + (size_t)grow * (size_t)p.k : nullptr;
                store16(reinterpret_cast<bf16*>(dst), load_chunk8(rowp, kk, k_hi, false));
            }
        }
    };

    float acc[G::MI][G::NI][4];
#pragma unroll
    for (int mi = 0; mi < G::MI; mi++)
#pragma unroll
        for (int ni = 0; ni < G::NI; ni++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[mi][ni][j] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ktiles) load_stage(s, s);
        cp_async_commit(); /* empty groups keep the wait count uniform */
    }
    /* ldmatrix lane roles: A x4 = (rows 0-7 | 8-15) × (k 0-7 | 8-15) in fragment order a0..a3; B x4 = two n8 tiles
     * × (k 0-7 | 8-15) = b[ni][0], b[ni][1], b[ni+1][0], b[ni+1][1]. */
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_kc = lane >> 4;
    const int b_row = (lane & 7) + (lane >> 4) * 8, b_kc = (lane >> 3) & 1;
    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait<STAGES - 2>(); /* this thread's copies of tile kt have landed ... */
        __syncthreads();             /* ... everyone's, and everyone is done with the stage refilled below */
        if (kt + STAGES - 1 < ktiles) load_stage((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
        cp_async_commit();
        const unsigned char* as = smem + (kt % STAGES) * G::STAGE_BYTES;
        const unsigned char* bs = as + BM * 64;
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            uint32_t a[G::MI][4], b[G::NI][2];
#pragma unroll
            for (int mi = 0; mi < G::MI; mi++) ldmatrix_x4(a[mi], as + swz(wm + mi * 16 + a_row, 2 * ks + a_kc));
#pragma unroll
            for (int ni = 0; ni < G::NI; ni += 2) {
                uint32_t t4[4];
                ldmatrix_x4(t4, bs + swz(wn + ni * 8 + b_row, 2 * ks + b_kc));
                b[ni][0] = t4[0];
                b[ni][1] = t4[1];
                b[ni + 1][0] = t4[2];
                b[ni + 1][1] = t4[3];
            }
#pragma unroll
            for (int mi = 0; mi < G::MI; mi++)
#pragma unroll
                for (int ni = 0; ni < G::NI; ni++) mma_m16n8k16_bf16(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
        }
    }
    cp_async_wait<0>();
    if (split) {
        /* f32 partial tile: each lane's fragment pairs as 8-byte stores, 4 lanes covering one 32-byte sector */
        float* pz = part + (size_t)blockIdx.z * (size_t)p.m * (size_t)p.n;
        const int g = lane >> 2, t = lane & 3;
        const bool pair = (p.n & 1) == 0 && aligned16(part);
#pragma unroll
        for (int mi = 0; mi < G::MI; mi++)
#pragma unroll
            for (int ni = 0; ni < G::NI; ni++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int row = m0 + wm + mi * 16 + g + 8 * h, col = n0 + wn + ni * 8 + 2 * t;
                    if (row >= p.m || col >= p.n) continue;
                    float* o = pz + (size_t)row * (size_t)p.n + col;
                    if (pair) {
                        gst(reinterpret_cast<float2*>(o), make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]));
                    } else {
                        gst(o, acc[mi][ni][2 * h]);
                        if (col + 1 < p.n) gst(o + 1, acc[mi][ni][2 * h + 1]);
                    }
                }
        return;
    }
    __syncthreads(); /* the pipeline's buffers become the output tile */

    /* Epilogue through shared memory: the linear output rounded to bf16 into a [BM][CLD] tile, then 16-byte rows
     * segments out (full 32-byte sectors), with the residual read the same way and the second rounding. */
    bf16* cs = reinterpret_cast<bf16*>(smem);
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < G::MI; mi++)
#pragma unroll
        for (int ni = 0; ni < G::NI; ni++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = wm + mi * 16 + g + 8 * h, col = wn + ni * 8 + 2 * t;
                *reinterpret_cast<__nv_bfloat162*>(cs + row * G::CLD + col) =
                    __floats2bfloat162_rn(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
            }
    __syncthreads();
    if (p.swiglu) {
        /* 8 outputs per thread from 16 tile columns: silu(a)·b of columns (c, c + 4) of each group of 8 */
        const int f = p.n / 2;
        const bool v16 = f % 8 == 0 && aligned16(y);
        for (int e = tid; e < BM * BN / 16; e += G::THREADS) {
            const int row = e / (BN / 16), j = e % (BN / 16), gm = m0 + row, gf = n0 / 2 + 8 * j;
            if (gm >= p.m || gf >= f) continue;
            const Pack16<bf16> lo = load16(cs + row * G::CLD + 16 * j), hi = load16(cs + row * G::CLD + 16 * j + 8);
            Pack16<bf16> out;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                out.v[c] = swiglu_one<bf16>(lo.v[c], lo.v[c + 4]);
                out.v[c + 4] = swiglu_one<bf16>(hi.v[c], hi.v[c + 4]);
            }
            bf16* o = y + (size_t)gm * (size_t)f + gf;
            if (v16 && gf + 8 <= f) store16(o, out);
            else for (int c = 0; c < 8 && gf + c < f; c++) o[c] = out.v[c];
        }
        return;
    }
    const bool vout = p.n % 8 == 0 && aligned16(y) && (!p.has_residual || aligned16(r));
    for (int e = tid; e < BM * BN / 8; e += G::THREADS) {
        const int row = e / (BN / 8), col = (e % (BN / 8)) * 8, gm = m0 + row, gn = n0 + col;
        if (gm >= p.m || gn >= p.n) continue;
        const Pack16<bf16> lin = load16(cs + row * G::CLD + col);
        const size_t o = (size_t)gm * (size_t)p.n + (size_t)gn;
        if (vout && gn + 8 <= p.n) {
            Pack16<bf16> out = lin;
            if (p.has_residual) {
                const Pack16<bf16> res = load16(r + o);
#pragma unroll
                for (int j = 0; j < 8; j++) out.v[j] = from_float<bf16>(to_float(res.v[j]) + to_float(lin.v[j]));
            }
            store16(y + o, out);
        } else {
            for (int j = 0; j < 8 && gn + j < p.n; j++) {
                const float v = to_float(lin.v[j]);
                y[o + j] = from_float<bf16>(p.has_residual ? to_float(r[o + j]) + v : v);
            }
        }
    }
}

/* The three tile shapes (launcher: backend::cuda::gemm::Tile): 8 warps of 64×32 warp tiles, 4 of 64×32, 4 of
 * 32×32. Dynamic shared memory: TiledGemm<..>::SMEM bytes (48 KiB, 36 KiB, 24 KiB). */
extern "C" __global__ __launch_bounds__(256) void gemm_tiled_128x128_bf16(const bf16* __restrict__ x, const bf16* __restrict__ w, const bf16* __restrict__ r,
                            bf16* __restrict__ y, float* __restrict__ part, GemmParams p) {
    gemm_tiled<128, 128, 2, 4>(x, w, r, y, part, p);
}
extern "C" __global__ __launch_bounds__(128) void gemm_tiled_128x64_bf16(const bf16* __restrict__ x, const bf16* __restrict__ w, const bf16* __restrict__ r,
                           bf16* __restrict__ y, float* __restrict__ part, GemmParams p) {
    gemm_tiled<128, 64, 2, 2>(x, w, r, y, part, p);
}
extern "C" __global__ __launch_bounds__(128) void gemm_tiled_64x64_bf16(const bf16* __restrict__ x, const bf16* __restrict__ w, const bf16* __restrict__ r,
                          bf16* __restrict__ y, float* __restrict__ part, GemmParams p) {
    gemm_tiled<64, 64, 2, 2>(x, w, r, y, part, p);
}

/* ---- gemm_splitk_reduce_bf16 --------------------------------------------------------------------------------- */

/* y = round(r + round(Σ_z part[z])) over the m·n outputs, the splits summed in order z = 0, 1, .. (deterministic; the
 * f32 sum differs from one pass over k only in its order, as the CPU's blocked sums do). 4 partials per thread:
 * float4 loads, 8-byte bf16 residual and output stores; with p.swiglu, silu(a)·b of the W1 and W3 partials (lane
 * pairs exchange them), 4-byte stores. 1-D grid of 256-thread blocks over ceil(m·n / 4). */
extern "C" __global__ void gemm_splitk_reduce_bf16(const float* __restrict__ part, const bf16* __restrict__ r,
                                                   bf16* __restrict__ y, GemmParams p) {
    const size_t mn = (size_t)p.m * (size_t)p.n, i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int cnt = i >= mn ? 0 : mn - i >= 4 ? 4 : (int)(mn - i);
    const bool v4 = cnt == 4 && (mn & 3) == 0 && aligned16(part);
    for (int z = 0; z < p.k_splits; z++) {
        const float* pz = part + (size_t)z * mn + i;
        if (v4) {
            const float4 v = gld(reinterpret_cast<const float4*>(pz));
            s[0] += v.x, s[1] += v.y, s[2] += v.z, s[3] += v.w;
        } else {
            for (int j = 0; j < cnt; j++) s[j] += gld(pz + j);
        }
    }
    if (p.swiglu) {
        /* n = 2f, f % 4 == 0 (cnt is 4 or 0, lane pairs stay together): partials i .. i+3 are one W1 group (i % 8
         * == 0) or the W3 group after it (swiglu_row), held by the two lanes of a pair. Each lane takes the other's
         * four and forms two of the group's outputs 4·(i / 8) + 0..3: two bf16 per lane, contiguous across lanes. */
        float o[4];
#pragma unroll
        for (int j = 0; j < 4; j++) o[j] = __shfl_xor_sync(FULL_MASK, s[j], 1);
        if (cnt == 0) return;
        const bool w1 = (i & 4) == 0;
        const float a0 = w1 ? s[0] : o[2], a1 = w1 ? s[1] : o[3], b0 = w1 ? o[0] : s[2], b1 = w1 ? o[1] : s[3];
        const size_t at = i / 8 * 4 + (w1 ? 0 : 2);
        const bf16 lo = swiglu_one<bf16>(from_float<bf16>(a0), from_float<bf16>(b0));
        const bf16 hi = swiglu_one<bf16>(from_float<bf16>(a1), from_float<bf16>(b1));
        if ((reinterpret_cast<uintptr_t>(y + at) & 3) == 0) {
            gst(reinterpret_cast<uint32_t*>(y + at), pack_bf16x2(to_float(lo), to_float(hi)));
        } else {
            gst(y + at, lo);
            gst(y + at + 1, hi);
        }
        return;
    }
    if (cnt == 0) return;
    bf16 out[4], res[4];
    const bool v8 = cnt == 4 && (reinterpret_cast<uintptr_t>(y + i) & 7) == 0 &&
                    (!p.has_residual || (reinterpret_cast<uintptr_t>(r + i) & 7) == 0);
    if (p.has_residual) {
        if (v8) *reinterpret_cast<uint2*>(res) = gld(reinterpret_cast<const uint2*>(r + i));
        else for (int j = 0; j < cnt; j++) res[j] = gld(r + i + j);
    }
    for (int j = 0; j < cnt; j++) {
        const float lin = quantize<bf16>(s[j]);
        out[j] = from_float<bf16>(p.has_residual ? to_float(res[j]) + lin : lin);
    }
    if (v8) gst(reinterpret_cast<uint2*>(y + i), *reinterpret_cast<const uint2*>(out));
    else for (int j = 0; j < cnt; j++) gst(y + i + j, out[j]);
}

/* ---- gemm_small_bf16 ------------------------------------------------------------------------------------------ */

#define SMALL_MTILES 4 /* 64 rows of x per block row (grid.y covers the rest) */
#define SMALL_MAX_WARPS 8

extern "C" __global__ void gemm_small_bf16(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                           const bf16* __restrict__ r, bf16* __restrict__ y, GemmParams p) {
    __shared__ float red[SMALL_MAX_WARPS * SMALL_MTILES * 128];
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nwarps = (int)blockDim.x >> 5; /* the launcher passes whole warps, at most SMALL_MAX_WARPS */
    const int g = lane >> 2, t = lane & 3;
    const int n0 = (int)blockIdx.x * 8, m0 = (int)blockIdx.y * (16 * SMALL_MTILES);
    const int mtiles = min(SMALL_MTILES, ceil_div(p.m - m0, 16));
    const bool vec = p.k % 8 == 0 && aligned16(x) && aligned16(w);

    /* swiglu: this block's 8 columns are W1 rows 4b .. 4b+3 and the same rows of W3 */
    const int wr = weight_row(n0 + g, p);
    const bf16* wrow = wr >= 0 ? w + (size_t)wr * (size_t)p.k : nullptr;
    const bf16* xrow[SMALL_MTILES][2];
#pragma unroll
    for (int i = 0; i < SMALL_MTILES; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = m0 + 16 * i + 8 * h + g;
            xrow[i][h] = row < p.m ? x + (size_t)row * (size_t)p.k : nullptr;
        }

    float acc[SMALL_MTILES][4];
#pragma unroll
    for (int i = 0; i < SMALL_MTILES; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    /* Two chunks of w in flight per lane ahead of the one being multiplied (chunks past k load nothing). */
    const int step = 32 * nwarps;
    int kc = 32 * warp;
    Pack16<bf16> w0 = load_chunk8(wrow, kc + 8 * t, p.k, vec);
    Pack16<bf16> w1 = load_chunk8(wrow, kc + step + 8 * t, p.k, vec);
    for (; kc < p.k; kc += step) {
        const Pack16<bf16> cur = w0;
        w0 = w1;
        if (kc + 2 * step < p.k) w1 = load_chunk8(wrow, kc + 2 * step + 8 * t, p.k, vec);
#pragma unroll
        for (int i = 0; i < SMALL_MTILES; i++) {
            if (i >= mtiles) break; /* uniform over the block: every lane of a warp takes the same branch */
            const Pack16<bf16> lo = load_chunk8(xrow[i][0], kc + 8 * t, p.k, vec);
            const Pack16<bf16> hi = load_chunk8(xrow[i][1], kc + 8 * t, p.k, vec);
#pragma unroll
            for (int s = 0; s < 2; s++) {
                const uint32_t a[4] = {pack_word(lo, 2 * s), pack_word(hi, 2 * s), pack_word(lo, 2 * s + 1),
                                       pack_word(hi, 2 * s + 1)};
                const uint32_t b[2] = {pack_word(cur, 2 * s), pack_word(cur, 2 * s + 1)};
                mma_m16n8k16_bf16(acc[i], a, b, acc[i]);
            }
        }
    }

#pragma unroll
    for (int i = 0; i < SMALL_MTILES; i++) {
        if (i >= mtiles) break;
#pragma unroll
        for (int j = 0; j < 4; j++) red[((warp * SMALL_MTILES + i) * 32 + lane) * 4 + j] = acc[i][j];
    }
    __syncthreads();
    /* Sum over warps of tile element (row rr, column cc) of m-tile i: owning lane (rr % 8)·4 + cc / 2, register
     * (cc & 1) + 2·(rr >= 8) (the C fragment). */
    auto total = [&](int i, int rr, int cc) {
        const int l = (rr & 7) * 4 + (cc >> 1), j = (cc & 1) + (rr >= 8 ? 2 : 0);
        float s = 0.0f;
        for (int v = 0; v < nwarps; v++) s += red[(v * SMALL_MTILES * 32 + i * 32 + l) * 4 + j];
        return s;
    };
    if (p.swiglu) {
        /* output column 4b + c from the W1 column c and the W3 column c + 4, each rounded as the linear output */
        for (int e = tid; e < mtiles * 64; e += (int)blockDim.x) {
            const int i = e >> 6, rr = (e >> 2) & 15, c = e & 3, row = m0 + 16 * i + rr, col = 4 * (int)blockIdx.x + c;
            if (row >= p.m || col >= p.n / 2) continue;
            const bf16 a = from_float<bf16>(total(i, rr, c)), b = from_float<bf16>(total(i, rr, c + 4));
            gst(y + (size_t)row * (size_t)(p.n / 2) + col, swiglu_one<bf16>(a, b));
        }
        return;
    }
    /* Element e of the block's tile: m-tile e / 128, owning lane (e / 4) % 32, register e % 4 (the C fragment). */
    for (int e = tid; e < mtiles * 128; e += (int)blockDim.x) {
        const int i = e >> 7, l = (e >> 2) & 31, j = e & 3;
        float s = 0.0f;
        for (int v = 0; v < nwarps; v++) s += red[(v * SMALL_MTILES * 32 + i * 32 + l) * 4 + j];
        const int row = m0 + 16 * i + (l >> 2) + (j >= 2 ? 8 : 0), col = n0 + 2 * (l & 3) + (j & 1);
        store_out_bf16(r, y, p, row, col, s);
    }
}

/* ---- gemm_small_f32 ------------------------------------------------------------------------------------------- */

#define SMALL_F32_ROWS 16 /* rows of x per block row: one accumulator each per lane */

/* 4 consecutive floats row[k .. k+4), zeros past kend or for a null row; 16-byte load when vec and in range. */
static __device__ __forceinline__ Pack16<float> load_chunk4(const float* __restrict__ row, int k, int kend, bool vec) {
    Pack16<float> p;
    if (row != nullptr && vec && k + 4 <= kend) return load16(row + k);
#pragma unroll
    for (int j = 0; j < 4; j++) p.v[j] = (row != nullptr && k + j < kend) ? gld(row + k + j) : 0.0f;
    return p;
}

/* The f32 twin of gemm_small_bf16 without tensor cores: the block owns 8 weight rows, lane (g, t) streams
 * w[n0 + g][kc + 8t .. +8] (two 16-byte loads) and dots it with up to 16 rows of x (L1/L2-resident); the four lanes
 * of a row are summed with shuffles, the warps in shared memory, in a fixed order. */
extern "C" __global__ void gemm_small_f32(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ r, float* __restrict__ y, GemmParams p) {
    __shared__ float red[SMALL_MAX_WARPS * SMALL_F32_ROWS * 8];
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nwarps = (int)blockDim.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = (int)blockIdx.x * 8, m0 = (int)blockIdx.y * SMALL_F32_ROWS;
    const int rows = min(SMALL_F32_ROWS, p.m - m0);
    const bool vec = p.k % 4 == 0 && aligned16(x) && aligned16(w);
    const int wr = weight_row(n0 + g, p); /* swiglu: W1 rows 4b .. 4b+3 and the same rows of W3 */
    const float* wrow = wr >= 0 ? w + (size_t)wr * (size_t)p.k : nullptr;

    float acc[SMALL_F32_ROWS];
#pragma unroll
    for (int i = 0; i < SMALL_F32_ROWS; i++) acc[i] = 0.0f;

    const int step = 32 * nwarps;
    int kc = 32 * warp;
    Pack16<float> w0 = load_chunk4(wrow, kc + 8 * t, p.k, vec), w1 = load_chunk4(wrow, kc + 8 * t + 4, p.k, vec);
    for (; kc < p.k; kc += step) {
        const Pack16<float> c0 = w0, c1 = w1;
        if (kc + step < p.k) {
            w0 = load_chunk4(wrow, kc + step + 8 * t, p.k, vec);
            w1 = load_chunk4(wrow, kc + step + 8 * t + 4, p.k, vec);
        }
#pragma unroll
        for (int i = 0; i < SMALL_F32_ROWS; i++) {
            if (i >= rows) break;
            const float* xr = x + (size_t)(m0 + i) * (size_t)p.k;
            const Pack16<float> x0 = load_chunk4(xr, kc + 8 * t, p.k, vec);
            const Pack16<float> x1 = load_chunk4(xr, kc + 8 * t + 4, p.k, vec);
            float s = acc[i];
#pragma unroll
            for (int j = 0; j < 4; j++) s = fmaf(x0.v[j], c0.v[j], s);
#pragma unroll
            for (int j = 0; j < 4; j++) s = fmaf(x1.v[j], c1.v[j], s);
            acc[i] = s;
        }
    }

#pragma unroll
    for (int i = 0; i < SMALL_F32_ROWS; i++) {
        if (i >= rows) break;
        float v = acc[i];
        v += __shfl_xor_sync(FULL_MASK, v, 1);
        v += __shfl_xor_sync(FULL_MASK, v, 2);
        if (t == 0) red[(warp * SMALL_F32_ROWS + i) * 8 + g] = v;
    }
    __syncthreads();
    if (p.swiglu) {
        /* output column 4b + c: silu of the W1 column c times the W3 column c + 4 (f32: no roundings) */
        const int f = p.n / 2;
        for (int e = tid; e < rows * 4; e += (int)blockDim.x) {
            const int i = e >> 2, c = e & 3, col = 4 * (int)blockIdx.x + c;
            if (col >= f) continue;
            float a = 0.0f, b = 0.0f;
            for (int v = 0; v < nwarps; v++) {
                const float* rv = red + (v * SMALL_F32_ROWS + i) * 8;
                a += rv[c], b += rv[c + 4];
            }
            gst(y + (size_t)(m0 + i) * (size_t)f + col, swiglu_one<float>(a, b));
        }
        return;
    }
    for (int e = tid; e < rows * 8; e += (int)blockDim.x) {
        const int i = e >> 3, gg = e & 7;
        float s = 0.0f;
        for (int v = 0; v < nwarps; v++) s += red[(v * SMALL_F32_ROWS + i) * 8 + gg];
        const int row = m0 + i, col = n0 + gg;
        if (col >= p.n) continue;
        const size_t o = (size_t)row * (size_t)p.n + (size_t)col;
        gst(y + o, p.has_residual ? s + gld(r + o) : s);
    }
}

/* ---- gemm_strided_f32 ----------------------------------------------------------------------------------------- */

#define ST_M 64
#define ST_N 64
#define ST_K 16
#define ST_THREADS 256

extern "C" __global__ void gemm_strided_f32(const float* __restrict__ a, const float* __restrict__ b,
                                            const float* __restrict__ bias, const float* r, float* c,
                                            GemmStridedParams p) {
    __shared__ float as[ST_K][ST_M];
    __shared__ float bs[ST_K][ST_N];
    const int tid = (int)threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = (int)blockIdx.y * ST_M, n0 = (int)blockIdx.x * ST_N, bat = (int)blockIdx.z;
    const float* ab = a + (int64_t)bat * p.a_sb;
    const float* bb = b + (int64_t)bat * p.b_sb;
    /* Which tile index the 256 threads walk fastest: the one with unit stride, so global loads coalesce. */
    const bool a_kfast = p.a_sk == 1 && p.a_sm != 1;
    const bool b_nfast = p.b_sn == 1 || p.b_sk != 1;

    float ar[4], br[4];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int e = tid + ST_THREADS * i;
            const int am = a_kfast ? e >> 4 : e & 63, ak = a_kfast ? e & 15 : e >> 6;
            const int gm = m0 + am, gk = k0 + ak;
            ar[i] = gm < p.m && gk < p.k ? gld(ab + (int64_t)gm * p.a_sm + (int64_t)gk * p.a_sk) : 0.0f;
            const int bn = b_nfast ? e & 63 : e >> 4, bk = b_nfast ? e >> 6 : e & 15;
            const int gn = n0 + bn, gk2 = k0 + bk;
            br[i] = gn < p.n && gk2 < p.k ? gld(bb + (int64_t)gk2 * p.b_sk + (int64_t)gn * p.b_sn) : 0.0f;
        }
    };

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    fetch(0);
    for (int k0 = 0; k0 < p.k; k0 += ST_K) {
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int e = tid + ST_THREADS * i;
            if (a_kfast) as[e & 15][e >> 4] = ar[i];
            else as[e >> 6][e & 63] = ar[i];
            if (b_nfast) bs[e >> 6][e & 63] = br[i];
            else bs[e & 15][e >> 4] = br[i];
        }
        __syncthreads();
        if (k0 + ST_K < p.k) fetch(k0 + ST_K);
#pragma unroll
        for (int kk = 0; kk < ST_K; kk++) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) av[i] = as[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
    }

    const int64_t cb = (int64_t)bat * p.c_sb;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int gm = m0 + ty + 16 * i;
        if (gm >= p.m) continue;
        const float bm = p.has_bias ? bias[gm] : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int gn = n0 + tx + 16 * j;
            if (gn >= p.n) continue;
            const int64_t o = cb + (int64_t)gm * p.c_sm + (int64_t)gn * p.c_sn;
            float v = p.alpha * acc[i][j] + bm;
            if (p.has_residual) v += gld(r + o);
            gst(c + o, v);
        }
    }
}
