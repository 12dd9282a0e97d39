/*
 * conv.cu: the VQ tokenizer's convolutions in f32, NCHW (the reference runs the VQ encoder/decoder in f32).
 *
 * Entry points (kernels/llamagen_kernels.h), each also as <name>_t128 (same parameters, 128 × 128 tile, below):
 *   conv2d_f32          (x [n, c_in, h, w], w [c_out, c_in, kh, kw], bias [c_out] | null, residual | null,
 *                        out [n, c_out, oh, ow], Conv2dParams)
 *       torch Conv2d (cross-correlation) with stride and asymmetric zero padding (top, left given; bottom and right
 *       only shape oh, ow); out = conv + bias (+ residual, the ResnetBlock shortcut, same shape as out; it may be
 *       the out buffer itself: each element is read and written by the same thread).
 *   upsample_conv_f32   (x [n, c_in, h, w], w [4, c_out, c_in, 2, 2], bias | null, out [n, c_out, 2h, 2w],
 *                        UpsampleConvParams)
 *       nearest ×2 upsample then 3×3 pad-1 conv, computed as four output phases (a, b) = (Y % 2, X % 2), each a
 *       2×2 conv of the low-resolution input: out(2y+a, 2x+b) = Σ_{ci,dy,dx} Wp[a·2+b][co][ci][dy][dx] ·
 *       x(y+a+dy−1, x+b+dx−1), zero outside. Wp is the 3×3 weight folded on the host once
 *       (backend::cuda::conv::upsample_fold_weights: Wp[.., dy, dx] = Σ of the 3×3 taps in FOLD[a][dy] ×
 *       FOLD[b][dx], FOLD = [[{0}, {1,2}], [{0,1}, {2}]]); each phase's slice is a torch-layout 2×2 conv weight.
 *       16 MACs per input pixel and channel pair instead of the 36 of upsample-then-conv (2.25× fewer).
 *
 * Design: one implicit GEMM core for both, no im2col buffer. GEMM M = output channels, N = output pixels of
 * all images flattened (p = (img·oh + oy)·ow + ox, so small images still fill blocks), K = c_in·kh·kw in torch
 * order (k = (ci·kh + ky)·kw + kx). Two tiles, each entry point built for both (`<op>_f32` = T64, `<op>_t128_f32`
 * = T128; the launcher picks, backend::cuda::conv::Tile::pick):
 *   T64:  64 channels × 64 pixels per block, K step 16, 4 × 4 outputs per thread (small images, few channels);
 *   T128: 128 × 128, K step 8, 8 × 8 outputs per thread: 64 FFMA per 4 LDS.128 instead of 16 per 2.
 * 256 threads as 16 × 16: thread (tx, ty) owns channels 4·ty + (i & 3) + 64·(i >> 2) and pixels 4·tx + (j & 3) +
 * 64·(j >> 2), so every shared read is an aligned LDS.128 (A broadcast across a row of 16 lanes). Each K step,
 * every thread loads 4 weights and 4 gathered input values into registers, stores them to shared memory (A
 * transposed to [k][m] with a 4-float row pad: 16-byte aligned rows, stores conflict-free for T128 and 2-way for
 * T64), and while the tile is consumed the next one's global loads are already in flight (register prefetch, one
 * shared buffer, two barriers per step). The gather computes (ci, ky, kx) from k with divisions by compile-time
 * constants for the 1×1, 2×2 (phases) and 3×3 cases (runtime kh, kw otherwise) and zero-fills padding, partial
 * tiles and k ≥ K, so every multiply-add of a stored output is a real term. Each output's sum runs over k in
 * increasing order, one fmaf per term, in f32 (both tiles give bit-identical results); then + bias, then +
 * residual (the CPU reference's order). Per-thread pixel decoding happens once per block, outside the K loop.
 * The kernels require blockDim = (256, 1, 1) (they trap otherwise); grid = (ceil(N/BN), ceil(c_out/BM), phases).
 * Dynamic shared memory: T64 (16·68 + 16·64)·4 = 8448 B, T128 (8·132 + 8·128)·4 = 8320 B (Tile::shared_bytes).
 * Registers (ptxas, sm_80 | sm_90): T64 ~70-77; T128 capped at 128 by __launch_bounds__(256, 2) for two blocks
 * per SM; upsample_conv_t128 spills 56 B on sm_90 (unverified where; probably the epilogue's index math).
 *
 * Napkin math (VQ-16 decoder, 3×3 128→128 at 256×256, n = 1; H100 SXM: 3.35 TB/s, ~67 TFLOP/s f32 FMA,
 * ~495 TFLOP/s TF32 tensor):
 *   FLOPs = 2·128·128·9·65536 = 19.3 GFLOP; bytes ≥ 33.5 MB in + 33.5 MB out + 0.6 MB weights = 67.7 MB.
 *   Intensity ~285 FLOP/B, far past the ridge (~20): compute bound. Roofline 288 µs in f32 FMA (20 µs of DRAM).
 *   T128 (picked here, 512 blocks): per k step a warp issues 64 FFMA against 4 LDS.128 (2 broadcast), FMA-issue
 *   bound on paper; a classic 128×128 SGEMM of this shape reaches 60–75% of peak, so expect ~0.4–0.5 ms. T64
 *   (16 FFMA per 2 LDS.128) is shared-memory bound near ~50%. The tensor-core TF32 path (the reference allows
 *   TF32) would be ~39 µs at its roofline: a later mma.sync m16n8k8 version.
 *   Upsample 128→128 from 128×128 to 256×256: 2·128·128·16·16384 = 8.6 GFLOP (19.3 unfolded), 128 µs roofline.
 *   Encoder Downsample (3×3 s2, pad 0/1/0/1, 128 ch, 256→128): 4.8 GFLOP, 72 µs. conv_in 3→128 / conv_out 128→3
 *   at 256×256 are K- or M-starved (K = 27, or M = 3 in a 64-row tile: 5% of the lanes useful); ~0.45 GFLOP each.
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include "common.cuh"
#include "llamagen_kernels.h"

/* Two tiles, both 256 threads as 16 × 16 (tx = tid % 16 over pixels, ty = tid / 16 over channels):
 *   T64:  64 channels × 64 pixels, K step 16, 4 × 4 outputs per thread;
 *   T128: 128 channels × 128 pixels, K step 8, 8 × 8 outputs per thread (twice the FMAs per shared load).
 * Thread (tx, ty) owns channels 4·ty + (i & 3) + 64·(i >> 2) and pixels 4·tx + (j & 3) + 64·(j >> 2): every
 * shared read is an aligned LDS.128 (A broadcast across the 16 lanes of a row, B 16 distinct float4). */
#define CONV_THREADS 256
template <int BM_, int BN_, int BK_> struct ConvTile {
    static constexpr int BM = BM_, BN = BN_, BK = BK_;
    static constexpr int AS = BM + 4; /* A row pad: aligned float4 rows; the [k][m] transposing store is
                                         conflict-free (T128) or 2-way (T64) */
    static constexpr int TM = BM / 16, TN = BN / 16;
    static constexpr int A_PER = BM * BK / CONV_THREADS, B_PER = BK * BN / CONV_THREADS;
    static constexpr int SMEM_FLOATS = BK * AS + BK * BN;
    static_assert(A_PER * CONV_THREADS == BM * BK && B_PER * CONV_THREADS == BK * BN, "tile / block mismatch");
    static_assert((TM == 4 || TM == 8) && (TN == 4 || TN == 8), "4 or 8 outputs per thread and dimension");
};
typedef ConvTile<64, 64, 16> T64;
typedef ConvTile<128, 128, 8> T128;

/* Conv2d gather (KH, KW > 0: compile-time kernel size; 0: the runtime kh, kw). PHASE: upsample_conv's output
 * mapping, pixel (y, x) of phase (a, b) stored at (2y + a, 2x + b) of the 2h × 2w image. */
template <int KH, int KW, bool PHASE> struct ConvGeo {
    const float* x;
    const float* w;
    int c_in, h, wd, kh, kw, stride, top, left, oh, ow, c_out, K;
    int a, b; /* PHASE only */

    __device__ __forceinline__ int khv() const { return KH > 0 ? KH : kh; }
    __device__ __forceinline__ int kwv() const { return KW > 0 ? KW : kw; }

    struct Pix {
        const float* xi;
        int iy0, ix0;
    };
    __device__ __forceinline__ Pix pixel(int p) const {
        const int ohw = oh * ow, img = p / ohw, q = p - img * ohw, oy = q / ow, ox = q - oy * ow;
        return Pix{x + (size_t)img * c_in * h * wd, oy * stride - top, ox * stride - left};
    }
    /* Address of input term k of pixel px, and whether it lies inside the image (else the term is padding). */
    __device__ __forceinline__ const float* at(const Pix& px, int k, bool& in) const {
        const int taps = khv() * kwv(), ci = k / taps, r = k - ci * taps, ky = r / kwv(), kx = r - ky * kwv();
        const int iy = px.iy0 + ky, ix = px.ix0 + kx;
        in = (unsigned)iy < (unsigned)h && (unsigned)ix < (unsigned)wd;
        return px.xi + ((size_t)ci * h + iy) * wd + ix;
    }
    __device__ __forceinline__ float gather(const Pix& px, int k) const {
        bool in;
        const float* a = at(px, k, in);
        return in ? __ldg(a) : 0.0f;
    }
    __device__ __forceinline__ float weight(int m, int k) const { return __ldg(w + (size_t)m * K + k); }
    /* Output element of pixel p, channel 0; channels are cstride() apart. */
    __device__ __forceinline__ size_t out_base(int p) const {
        const int ohw = oh * ow, img = p / ohw, q = p - img * ohw;
        if (!PHASE) return (size_t)img * c_out * ohw + q;
        const int y = q / ow, xx = q - y * ow;
        return (size_t)img * c_out * 4 * ohw + (size_t)(2 * y + a) * (size_t)(2 * ow) + (size_t)(2 * xx + b);
    }
    __device__ __forceinline__ size_t cstride() const { return PHASE ? (size_t)4 * oh * ow : (size_t)oh * ow; }
};


/* The implicit GEMM: out tile (blockIdx.y·BM .. +BM channels) × (blockIdx.x·BN .. +BN pixels). M = c_out, N =
 * pixels; g.K terms per output. bias / residual may be null. */
template <class Tl, class G>
static __device__ __forceinline__ void conv_igemm(const G& g, int M, int N, const float* __restrict__ bias,
                                                  const float* residual, float* out, float* smem) {
    constexpr int BM = Tl::BM, BN = Tl::BN, BK = Tl::BK, AS = Tl::AS;
    constexpr int TM = Tl::TM, TN = Tl::TN, A_PER = Tl::A_PER, B_PER = Tl::B_PER;
    if (blockDim.x != CONV_THREADS || blockDim.y != 1 || blockDim.z != 1) __trap();
    float* As = smem;           /* [BK][AS] */
    float* Bs = smem + BK * AS; /* [BK][BN] */
    const int tid = (int)threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = (int)blockIdx.y * BM, p0 = (int)blockIdx.x * BN, K = g.K;

    /* loader roles: A element (m0 + am + (256/BK)·r, k0 + ak); B element (k0 + bk + (256/BN)·r, pixel p0 + bp) */
    const int ak = tid % BK, am = tid / BK;
    const int bp = tid % BN, bk = tid / BN;
    const bool pvalid = p0 + bp < N;
    const typename G::Pix px = g.pixel(pvalid ? p0 + bp : 0);

    float ra[A_PER], rb[B_PER];
    auto load = [&](int k0) {
#pragma unroll
        for (int r = 0; r < A_PER; r++) {
            const int m = m0 + am + (CONV_THREADS / BK) * r, ka = k0 + ak;
            ra[r] = m < M && ka < K ? g.weight(m, ka) : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < B_PER; r++) {
            const int kb = k0 + bk + (CONV_THREADS / BN) * r;
            rb[r] = pvalid && kb < K ? g.gather(px, kb) : 0.0f;
        }
    };

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;

    load(0);
    for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
        for (int r = 0; r < A_PER; r++) As[ak * AS + am + (CONV_THREADS / BK) * r] = ra[r];
#pragma unroll
        for (int r = 0; r < B_PER; r++) Bs[(bk + (CONV_THREADS / BN) * r) * BN + bp] = rb[r];
        __syncthreads();
        if (k0 + BK < K) load(k0 + BK); /* in flight while this tile is consumed */
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            float bv[TN];
#pragma unroll
            for (int h = 0; h < TN / 4; h++) {
                const float4 v = *reinterpret_cast<const float4*>(Bs + kk * BN + 4 * tx + 64 * h);
                bv[4 * h] = v.x, bv[4 * h + 1] = v.y, bv[4 * h + 2] = v.z, bv[4 * h + 3] = v.w;
            }
            /* one float4 of A at a time: 4 fewer live registers in the 8 × 8 tile */
#pragma unroll
            for (int h = 0; h < TM / 4; h++) {
                const float4 v = *reinterpret_cast<const float4*>(As + kk * AS + 4 * ty + 64 * h);
                const float av[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < TN; j++) acc[4 * h + i][j] = fmaf(av[i], bv[j], acc[4 * h + i][j]);
            }
        }
        __syncthreads(); /* the next iteration overwrites the tile */
    }

    /* Epilogue: a thread's 4 consecutive pixels as one float4 where they are 4 consecutive output elements (one
     * image, 16-byte aligned), so that each warp instruction writes 256 contiguous bytes per channel; scalar
     * otherwise (upsample phases, odd sizes). */
    const size_t cs = g.cstride();
    const bool al = aligned16(out) && (residual == nullptr || aligned16(residual)) && (cs & 3) == 0;
#pragma unroll
    for (int jj = 0; jj < TN / 4; jj++) {
        const int pq = p0 + 4 * tx + 64 * jj;
        if (pq >= N) continue;
        const size_t b0 = g.out_base(pq);
        const bool v4 = al && pq + 3 < N && (b0 & 3) == 0 && g.out_base(pq + 3) == b0 + 3;
#pragma unroll
        for (int i = 0; i < TM; i++) {
            const int m = m0 + 4 * ty + (i & 3) + 64 * (i >> 2);
            if (m >= M) continue;
            const float bm = bias ? bias[m] : 0.0f;
            if (v4) {
                const size_t o = b0 + (size_t)m * cs;
                float4 v = make_float4(acc[i][4 * jj] + bm, acc[i][4 * jj + 1] + bm, acc[i][4 * jj + 2] + bm,
                                       acc[i][4 * jj + 3] + bm);
                if (residual) {
                    const float4 r = gld(reinterpret_cast<const float4*>(residual + o));
                    v.x += r.x, v.y += r.y, v.z += r.z, v.w += r.w;
                }
                gst(reinterpret_cast<float4*>(out + o), v);
                continue;
            }
#pragma unroll
            for (int q = 0; q < 4; q++) {
                if (pq + q >= N) continue;
                const size_t o = g.out_base(pq + q) + (size_t)m * cs;
                float v = acc[i][4 * jj + q] + bm;
                if (residual) v += gld(residual + o);
                gst(out + o, v);
            }
        }
    }
}

template <class Tl, int KH, int KW>
static __device__ __forceinline__ void conv2d_run(const float* x, const float* w, const float* bias,
                                                  const float* residual, float* out, const Conv2dParams& p,
                                                  float* smem) {
    ConvGeo<KH, KW, false> g;
    g.x = x, g.w = w, g.c_in = p.c_in, g.h = p.h, g.wd = p.w, g.kh = p.kh, g.kw = p.kw, g.stride = p.stride;
    g.top = p.pad_top, g.left = p.pad_left, g.oh = p.oh, g.ow = p.ow, g.c_out = p.c_out;
    g.K = p.c_in * p.kh * p.kw, g.a = 0, g.b = 0;
    conv_igemm<Tl>(g, p.c_out, p.n * p.oh * p.ow, p.has_bias ? bias : nullptr, p.has_residual ? residual : nullptr,
                   out, smem);
}

template <class Tl>
static __device__ __forceinline__ void conv2d_entry(const float* x, const float* w, const float* bias,
                                                    const float* residual, float* out, const Conv2dParams& p) {
    DYNAMIC_SHARED(float, smem);
    /* uniform branch: the common sizes get constant divisors in the gather */
    if (p.kh == 3 && p.kw == 3) conv2d_run<Tl, 3, 3>(x, w, bias, residual, out, p, smem);
    else if (p.kh == 1 && p.kw == 1) conv2d_run<Tl, 1, 1>(x, w, bias, residual, out, p, smem);
    else conv2d_run<Tl, 0, 0>(x, w, bias, residual, out, p, smem);
}

/* blockIdx.z = output phase a·2 + b; the phase's weights are the (c_out, c_in, 2, 2) slice z of w. */
template <class Tl>
static __device__ __forceinline__ void upsample_conv_entry(const float* x, const float* w, const float* bias,
                                                           float* out, const UpsampleConvParams& p) {
    DYNAMIC_SHARED(float, smem);
    const int phase = (int)blockIdx.z, a = phase >> 1, b = phase & 1;
    ConvGeo<2, 2, true> g;
    g.K = p.c_in * 4;
    g.x = x, g.w = w + (size_t)phase * p.c_out * g.K, g.c_in = p.c_in, g.h = p.h, g.wd = p.w, g.kh = 2, g.kw = 2;
    g.stride = 1, g.top = 1 - a, g.left = 1 - b, g.oh = p.h, g.ow = p.w, g.c_out = p.c_out, g.a = a, g.b = b;
    conv_igemm<Tl>(g, p.c_out, p.n * p.h * p.w, p.has_bias ? bias : nullptr, nullptr, out, smem);
}

extern "C" __global__ void conv2d_f32(const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ bias, const float* residual, float* out,
                                      Conv2dParams p) {
    conv2d_entry<T64>(x, w, bias, residual, out, p);
}
extern "C" __global__ __launch_bounds__(CONV_THREADS, 2) void conv2d_t128_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                    const float* residual, float* out, Conv2dParams p) {
    conv2d_entry<T128>(x, w, bias, residual, out, p);
}
extern "C" __global__ void upsample_conv_f32(const float* __restrict__ x, const float* __restrict__ w,
                                             const float* __restrict__ bias, float* __restrict__ out,
                                             UpsampleConvParams p) {
    upsample_conv_entry<T64>(x, w, bias, out, p);
}
extern "C" __global__ __launch_bounds__(CONV_THREADS, 2) void upsample_conv_t128_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                           float* __restrict__ out, UpsampleConvParams p) {
    upsample_conv_entry<T128>(x, w, bias, out, p);
}
/* ---- tensor cores: TF32 implicit GEMM (conv2d_tc_f32, upsample_conv_tc_f32) ----------------------------------- */

/* The same implicit GEMM (M = c_out, N = pixels, K = c_in·kh·kw) on mma.m16n8k8 TF32: 128 × 128 tile, 8 warps of
 * 64 × 32, K step 16, a 3-stage cp.async pipeline (48 KiB). A (weights, [m][k] with k contiguous) is copied in
 * 16-byte chunks (4-byte ones when K % 4 != 0, e.g. conv_in's K = 27) into 64-byte rows swizzled like gemm.cu's,
 * read by ldmatrix.x4, which hands a lane exactly its TF32 A fragment (an 8×8 b16 matrix is an 8×4 f32 one).
 * B (the im2col gather, [k][pixel]) is copied element by element with 4-byte cp.async, zero-filled where the tap
 * falls in the padding or past K, into rows of 128 floats with the pixel index XOR-ed by (k & 3)·8: the gather's
 * 32 consecutive pixels and the fragment reads B[t][g], B[t+4][g] are both conflict-free. p.tf32_passes: 1 = plain
 * TF32 (operands rounded to 10 mantissa bits: ~1e-3 relative per product, ~1e-4 on a K = 1152 sum), 3 = 3xTF32
 * (a = big + small, D += a_s·b_b + a_b·b_s + a_b·b_b: ~f32 accuracy at 3× the tensor work, still ~2.5× the f32
 * FMA peak on an H100). Epilogue: + bias, then + residual, staged through shared memory so that every store
 * instruction writes 32 consecutive pixels of one channel. */
#define TC_BM 128
#define TC_BN 128
#define TC_BK 16
#define TC_STAGES 3
#define TC_A_BYTES (TC_BM * TC_BK * 4)
#define TC_STAGE_BYTES (TC_A_BYTES + TC_BK * TC_BN * 4)
#define TC_EPI_LD (TC_BN + 8) /* floats per row of the staged epilogue: 64 rows fit the pipeline's buffers */

static __device__ __forceinline__ int tc_swz(int row, int c) { return row * 64 + ((c ^ ((row >> 1) & 3)) << 4); }
static __device__ __forceinline__ int tc_bidx(int k, int n) { return k * TC_BN + (n ^ ((k & 3) << 3)); }
static __device__ __forceinline__ float bits_f32(uint32_t u) { return __uint_as_float(u); }

template <int PASSES, class G>
static __device__ __forceinline__ void conv_igemm_tc(const G& g, int M, int N, const float* __restrict__ bias,
                                                     const float* residual, float* out, unsigned char* smem) {
    constexpr int WARPS_N = 4, MI = 4, NI = 4;
    if (blockDim.x != CONV_THREADS || blockDim.y != 1 || blockDim.z != 1) __trap();
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, t = lane & 3;
    const int m0 = (int)blockIdx.y * TC_BM, p0 = (int)blockIdx.x * TC_BN, K = g.K;
    const int wm = (warp / WARPS_N) * 64, wn = (warp % WARPS_N) * 32;
    const bool avec = K % 4 == 0 && (reinterpret_cast<uintptr_t>(g.w) & 15) == 0;
    const int ktiles = ceil_div(K, TC_BK);

    /* B loader: pixel p0 + tid % 128, k rows tid / 128 + 2i (i < 8); the pixel decoding happens once. */
    const int bp = tid % TC_BN, bk = tid / TC_BN;
    const bool pvalid = p0 + bp < N;
    const typename G::Pix px = g.pixel(pvalid ? p0 + bp : 0);
    auto load_stage = [&](int s, int kt) {
        unsigned char* as = smem + s * TC_STAGE_BYTES;
        float* bs = reinterpret_cast<float*>(as + TC_A_BYTES);
        const int k0 = kt * TC_BK;
        if (avec) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int c = tid + CONV_THREADS * i, row = c >> 2, kc = c & 3, m = m0 + row, k = k0 + 4 * kc;
                const bool in = m < M && k < K;
                cp_async16(as + tc_swz(row, kc), in ? g.w + (size_t)m * K + k : g.w, in ? 16 : 0);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int e = tid + CONV_THREADS * i, row = e >> 4, kk = e & 15, m = m0 + row, k = k0 + kk;
                const bool in = m < M && k < K;
                cp_async4(as + tc_swz(row, kk >> 2) + 4 * (kk & 3), in ? g.w + (size_t)m * K + k : g.w, in ? 4 : 0);
            }
        }
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int kk = bk + 2 * i, k = k0 + kk;
            bool in = false;
            const float* src = (pvalid && k < K) ? g.at(px, k, in) : g.x;
            cp_async4(bs + tc_bidx(kk, bp), in ? src : g.x, in ? 4 : 0);
        }
    };

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < TC_STAGES - 1; s++) {
        if (s < ktiles) load_stage(s, s);
        cp_async_commit();
    }
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_kc = lane >> 4;
    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait<TC_STAGES - 2>();
        __syncthreads();
        if (kt + TC_STAGES - 1 < ktiles) load_stage((kt + TC_STAGES - 1) % TC_STAGES, kt + TC_STAGES - 1);
        cp_async_commit();
        const unsigned char* as = smem + (kt % TC_STAGES) * TC_STAGE_BYTES;
        const float* bs = reinterpret_cast<const float*>(as + TC_A_BYTES);
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            uint32_t ab[MI][4], asm_[MI][4], bb[NI][2], bsm[NI][2];
#pragma unroll
            for (int mi = 0; mi < MI; mi++) {
                uint32_t raw[4];
                ldmatrix_x4(raw, as + tc_swz(wm + mi * 16 + a_row, 2 * ks + a_kc));
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    ab[mi][e] = to_tf32(bits_f32(raw[e]));
                    if (PASSES == 3) asm_[mi][e] = to_tf32(bits_f32(raw[e]) - bits_f32(ab[mi][e]));
                }
            }
#pragma unroll
            for (int ni = 0; ni < NI; ni++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const float v = bs[tc_bidx(8 * ks + t + 4 * h, wn + 8 * ni + gq)];
                    bb[ni][h] = to_tf32(v);
                    if (PASSES == 3) bsm[ni][h] = to_tf32(v - bits_f32(bb[ni][h]));
                }
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
#pragma unroll
                for (int ni = 0; ni < NI; ni++) {
                    if (PASSES == 3) {
                        mma_m16n8k8_tf32(acc[mi][ni], asm_[mi], bb[ni], acc[mi][ni]);
                        mma_m16n8k8_tf32(acc[mi][ni], ab[mi], bsm[ni], acc[mi][ni]);
                    }
                    mma_m16n8k8_tf32(acc[mi][ni], ab[mi], bb[ni], acc[mi][ni]);
                }
        }
    }
    cp_async_wait<0>();

    /* Epilogue through shared memory, half the tile (64 channels x 128 pixels) at a time: the C fragments go in as
     * 8-byte pairs (row stride TC_EPI_LD = 8 mod 32 banks: each 16-lane phase covers all 32 banks once), then each
     * warp writes whole rows, 32 consecutive pixels of one channel per instruction, instead of the fragments'
     * 8 channels x 4 pixel pairs (twice the sectors). */
    static_assert(64 * TC_EPI_LD * 4 <= TC_STAGES * TC_STAGE_BYTES, "the staged half tile must fit the pipeline");
    float* st = reinterpret_cast<float*>(smem);
    const size_t cs = g.cstride();
#pragma unroll
    for (int half = 0; half < 2; half++) {
        __syncthreads(); /* every warp is done with the pipeline's buffers, or with the previous half */
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int mi = 2 * half + j;
#pragma unroll
            for (int ni = 0; ni < NI; ni++)
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const int row = (wm >> 1) + 16 * j + gq + 8 * r, col = wn + 8 * ni + 2 * t;
                    *reinterpret_cast<float2*>(st + row * TC_EPI_LD + col) =
                        make_float2(acc[mi][ni][2 * r], acc[mi][ni][2 * r + 1]);
                }
        }
        __syncthreads();
        for (int i = tid; i < 64 * TC_BN; i += CONV_THREADS) {
            const int row = i / TC_BN, col = i % TC_BN;
            const int m = m0 + (row >> 5) * 64 + 32 * half + (row & 31), p = p0 + col;
            if (m >= M || p >= N) continue;
            const size_t o = g.out_base(p) + (size_t)m * cs;
            float v = st[row * TC_EPI_LD + col] + (bias ? bias[m] : 0.0f);
            if (residual) v += gld(residual + o);
            gst(out + o, v);
        }
    }
}

template <int KH, int KW, int PASSES>
static __device__ __forceinline__ void conv2d_tc_run(const float* x, const float* w, const float* bias,
                                                     const float* residual, float* out, const Conv2dParams& p,
                                                     unsigned char* smem) {
    ConvGeo<KH, KW, false> g;
    g.x = x, g.w = w, g.c_in = p.c_in, g.h = p.h, g.wd = p.w, g.kh = p.kh, g.kw = p.kw, g.stride = p.stride;
    g.top = p.pad_top, g.left = p.pad_left, g.oh = p.oh, g.ow = p.ow, g.c_out = p.c_out;
    g.K = p.c_in * p.kh * p.kw, g.a = 0, g.b = 0;
    conv_igemm_tc<PASSES>(g, p.c_out, p.n * p.oh * p.ow, p.has_bias ? bias : nullptr,
                          p.has_residual ? residual : nullptr, out, smem);
}

template <int PASSES>
static __device__ __forceinline__ void conv2d_tc_entry(const float* x, const float* w, const float* bias,
                                                       const float* residual, float* out, const Conv2dParams& p,
                                                       unsigned char* smem) {
    if (p.kh == 3 && p.kw == 3) conv2d_tc_run<3, 3, PASSES>(x, w, bias, residual, out, p, smem);
    else if (p.kh == 1 && p.kw == 1) conv2d_tc_run<1, 1, PASSES>(x, w, bias, residual, out, p, smem);
    else conv2d_tc_run<0, 0, PASSES>(x, w, bias, residual, out, p, smem);
}

/* Dynamic shared memory: TC_STAGES · TC_STAGE_BYTES = 48 KiB; p.tf32_passes 1 or 3 (anything else traps). */
extern "C" __global__ __launch_bounds__(CONV_THREADS) void conv2d_tc_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                                          const float* __restrict__ bias, const float* residual,
                                                                          float* out, Conv2dParams p) {
    DYNAMIC_SHARED(float, smem);
    unsigned char* sm = reinterpret_cast<unsigned char*>(smem);
    if (p.tf32_passes == 3) conv2d_tc_entry<3>(x, w, bias, residual, out, p, sm);
    else if (p.tf32_passes == 1) conv2d_tc_entry<1>(x, w, bias, residual, out, p, sm);
    else __trap();
}

extern "C" __global__ __launch_bounds__(CONV_THREADS) void upsample_conv_tc_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                                                 const float* __restrict__ bias, float* __restrict__ out,
                                                                                 UpsampleConvParams p) {
    DYNAMIC_SHARED(float, smem);
    unsigned char* sm = reinterpret_cast<unsigned char*>(smem);
    const int phase = (int)blockIdx.z, a = phase >> 1, b = phase & 1;
    ConvGeo<2, 2, true> g;
    g.K = p.c_in * 4;
    g.x = x, g.w = w + (size_t)phase * p.c_out * g.K, g.c_in = p.c_in, g.h = p.h, g.wd = p.w, g.kh = 2, g.kw = 2;
    g.stride = 1, g.top = 1 - a, g.left = 1 - b, g.oh = p.h, g.ow = p.w, g.c_out = p.c_out, g.a = a, g.b = b;
    const float* bi = p.has_bias ? bias : nullptr;
    if (p.tf32_passes == 3) conv_igemm_tc<3>(g, p.c_out, p.n * p.h * p.w, bi, nullptr, out, sm);
    else if (p.tf32_passes == 1) conv_igemm_tc<1>(g, p.c_out, p.n * p.h * p.w, bi, nullptr, out, sm);
    else __trap();
}
