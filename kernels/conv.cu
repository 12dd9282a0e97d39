/*
 * conv.cu: the VQ tokenizer's convolutions in f32, NCHW (the reference runs the VQ encoder/decoder in f32).
 *
 * Entry points (kernels/llamagen_kernels.h), each also as <name>_t128 (same parameters, 128 × 128 tile, below):
 *   conv2d_f32          (x [n, c_in, h, w], w [c_out, c_in, kh, kw], bias [c_out] | null, residual | null,
 *                        norm [n, c_in, 4] | null, out [n, c_out, oh, ow], Conv2dParams)
 *       torch Conv2d (cross-correlation) with stride and asymmetric zero padding (top, left given; bottom and right
 *       only shape oh, ow); out = conv + bias (+ residual, the ResnetBlock shortcut, same shape as out; it may be
 *       the out buffer itself: each element is read and written by the same thread). With p.norm (CONV_NORM_*,
 *       halo launches only) the conv is of GroupNorm(x) (then swish): the halo loader normalises each chunk in
 *       shared memory from norm's per-(image, channel) records (groupnorm.cu's groupnorm_affine_f32), so the
 *       normalised tensor is never stored (Halo::normalize; op groupnorm_conv).
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
 * Registers (ptxas 13.0, sm_80 | sm_90): conv2d_f32 93 | 96, upsample_conv_f32 89 | 90; the T128 kernels capped at
 * 128 by __launch_bounds__(256, 2) for two blocks per SM (conv2d 128 | 128, upsample 127 | 128); no spills in any
 * conv kernel (build.rs prints the current figures).
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


/* ---- halo tiles: a block's input rows staged once per 16 channels -------------------------------------------- */

/* For a 3×3 stride-1 pad-1 conv (and the upsample's phases, whose 2×2 taps cover the same 3×3 neighbourhood) a
 * block's 128 (T64: 64) output pixels are a rectangle of rh = 128 / rw rows × rw columns of the flattened (image, row) × column
 * grid, and the inputs all its taps read are that rectangle grown by one pixel on each side. The halo path stages
 * that region of 16 input channels at a time in shared memory with aligned 16-byte cp.async (every global request
 * a whole, aligned span: the gathers' shifted rows cost 5 sectors per 4, or 3 per 2 on 16-wide images) and reads
 * every tap from there: each input element leaves global memory (rh + 2) / rh times per block instead of up to 9.
 * Rows of the flattened grid are consecutive image rows, so a tap that would cross into the next or previous image
 * is masked to the zero padding (the top / bottom flags of each pixel). Layout per channel: rh + 2 rows of rs floats,
 * input column x0 + c at float 4 + c of its row. Whole-width tiles (rw = w) need only zero pads, and the 4 floats
 * before row j + 1 serve as row j's right pad: rs = rw + 4, plus 4 after the last row. Partial rows (w > 64) load
 * the aligned 4-float chunks on both sides (zero-filled outside the image): rs = rw + 8. Two buffers (the next
 * chunk lands while this one is read), at most 16 · 276 floats each (2 rows of 64: 4 · 68 + 4). The host picks rw
 * (halo_width): rw = w for w in {8, 16, 32, 64}, 32 for larger multiples of 32; c_in % 16 == 0, so K is whole
 * chunks of 144 (3×3) or 64 (2×2) terms and no K tile straddles two. The terms are summed in the same order as the
 * gathers (k ascending).
 * Why whole rows up to 64 and 32-column pieces beyond: a piece's edge columns cost a half-used aligned chunk each
 * (6 sectors per 32-float row piece for 5 sectors of requested bytes: 0.87 of the ideal), which whole rows avoid,
 * and per 128 pixels and channel 2 rows of 64 touch 4 · 8 = 32 sectors against 6 · 6 = 36 for 4 × 32 pieces.
 * Wider rows only move the trade: 1 × 128 reads 3 input rows per output row (48 sectors whole, 54 as pieces), so
 * 33-50 % more L2 traffic per FLOP for a better ratio: a 16-channel chunk of a 128 × 128 block is 4.7 MFLOP
 * against 18.4 KB of 4 × 32 halo, so at 80 % of an H100's dense bf16 peak the halo alone reads 3.1 TB/s from L2,
 * and the 54-sector shape would read 4.6. */
#define HALO_CH 16
#define HALO_MAX_CS 276
#define HALO_BYTES (2 * HALO_CH * HALO_MAX_CS * 4)

template <class P> struct Halo {
    /* The geometry is read from the kernel's parameters (constant bank) each time it is needed rather than held in
     * registers: the SIMT 128 × 128 tile is at its 128-register cap. */
    const P& p;     /* n, c_in, h, w, halo_rw (Conv2dParams / UpsampleConvParams) */
    const float* x; /* input (n, c_in, h, w) */
    float* s;       /* two buffers of HALO_CH · cs floats */
    int tile;       /* the block's output pixels: 128, or 64 for the T64 SIMT tile */

    __device__ __forceinline__ Halo(const P& p_, const float* x_, float* s_, int tile_) : p(p_), x(x_), s(s_), tile(tile_) {
        if (rw() <= 0 || tile % rw() != 0 || p.w % rw() != 0 || (rw() & 3) != 0 || cs() > HALO_MAX_CS ||
            p.c_in % HALO_CH != 0 || !aligned16(x))
            __trap(); /* the host's halo_width guarantees these */
    }
    __device__ __forceinline__ int rw() const { return p.halo_rw; }
    __device__ __forceinline__ bool full() const { return p.halo_rw == p.w; }
    __device__ __forceinline__ int rh() const { return tile / p.halo_rw; }
    __device__ __forceinline__ int rs() const { return p.halo_rw + (full() ? 4 : 8); }
    __device__ __forceinline__ int cs() const { return (rh() + 2) * rs() + (full() ? 4 : 0); }
    __device__ __forceinline__ int r0() const { return ((int)blockIdx.x / (p.w / p.halo_rw)) * rh(); }
    __device__ __forceinline__ int x0() const { return ((int)blockIdx.x % (p.w / p.halo_rw)) * p.halo_rw; }
    /* Flattened output pixel ((img·h + y)·w + x) of tile pixel n, -1 past the last row. */
    __device__ __forceinline__ int pixel(int n) const {
        const int r = r0() + n / rw();
        return r < p.n * p.h ? r * p.w + x0() + n % rw() : -1;
    }
    /* Whole-width tiles: the pads are never loaded; zero them once in both buffers (before the first barrier). */
    __device__ __forceinline__ void zero_pads(int tid) const {
        if (!full()) return;
        const int rows = rh() + 3;
        for (int i = tid; i < 2 * HALO_CH * rows; i += CONV_THREADS) {
            const int ch = i / rows, j = i - ch * rows;
            *reinterpret_cast<float4*>(s + ch * cs() + j * rs()) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }
    __device__ __forceinline__ const float* buf(int chunk) const { return s + (chunk & 1) * HALO_CH * cs(); }
    /* Calls f(dst, src, in, rec) for each aligned 16-byte piece of channels 16·chunk .. +16 that this thread copies
     * into buffer chunk & 1: src its global address when `in` (inside the image), rec its (image, channel) index. */
    template <class F> __device__ __forceinline__ void pieces(int chunk, int tid, F&& f) const {
        float* b = s + (chunk & 1) * HALO_CH * cs();
        const int q0 = full() ? 1 : 0, nq = full() ? rw() / 4 : rw() / 4 + 2, per_ch = (rh() + 2) * nq;
        const int r0v = r0(), x0v = x0(), rsv = rs(), csv = cs(), rows = p.n * p.h;
        for (int i = tid; i < HALO_CH * per_ch; i += CONV_THREADS) {
            const int ch = i / per_ch, r = i - ch * per_ch, j = r / nq, q = q0 + (r - j * nq);
            const int row = r0v - 1 + j, col = x0v - 4 + 4 * q;
            const bool in = row >= 0 && row < rows && col >= 0 && col < p.w;
            const int img = in ? row / p.h : 0, iy = in ? row - img * p.h : 0, c = HALO_CH * chunk + ch;
            f(b + ch * csv + j * rsv + 4 * q, x + (((size_t)img * p.c_in + c) * p.h + iy) * p.w + col, in,
              img * p.c_in + c);
        }
    }
    /* Issues the copies of channels 16·chunk .. +16 into buffer chunk & 1 (the caller commits); pieces outside the
     * image are zero-filled. */
    __device__ __forceinline__ void load(int chunk, int tid) const {
        pieces(chunk, tid, [&](float* dst, const float* src, bool in, int) {
            cp_async16(dst, in ? src : x, in ? 16 : 0);
        });
    }
    /* The GroupNorm (+ swish) prologue (Conv2dParams.norm): after this thread's wait for chunk `chunk`, normalises in
     * place the pieces it copied itself (its own cp.async writes are visible to it after the wait; the barrier that
     * follows publishes the result), from the records rec[(image, channel)] = (mean hi, mean lo, scale, shift) of
     * groupnorm_affine_f32. The pieces outside the image stay zero: the conv pads the normalised tensor. */
    __device__ __forceinline__ void normalize(int chunk, int tid, const float* __restrict__ rec, bool act) const {
        pieces(chunk, tid, [&](float* dst, const float*, bool in, int ri) {
            if (!in) return;
            const float4 r = __ldg(reinterpret_cast<const float4*>(rec) + ri);
            float4 v = *reinterpret_cast<const float4*>(dst);
            v.x = groupnorm_apply(v.x, r.x, r.y, r.z, r.w, act);
            v.y = groupnorm_apply(v.y, r.x, r.y, r.z, r.w, act);
            v.z = groupnorm_apply(v.z, r.x, r.y, r.z, r.w, act);
            v.w = groupnorm_apply(v.w, r.x, r.y, r.z, r.w, act);
            *reinterpret_cast<float4*>(dst) = v;
        });
    }
    /* A tile pixel's place in a buffer and whether it sits on its image's top (bit 0) or bottom (bit 1) row. */
    struct Pix {
        int off, edge;
    };
    __device__ __forceinline__ Pix pix(int n) const {
        const int hr = n / rw(), hc = n - hr * rw(), y = (r0() + hr) % p.h;
        return Pix{hr * rs() + 3 + hc, (y == 0 ? 1 : 0) | (y == p.h - 1 ? 2 : 0)};
    }
    /* Term kl of a chunk (k order as in the weights: (ci, ky, kx) for 3×3, (ci, dy, dx) for phase (a, b)) as a
     * buffer offset and its row tap ky3 in 0..2 (the 3×3 neighbourhood). */
    template <bool PHASE> __device__ __forceinline__ void term(int kl, int a, int b, int& off, int& ky3) const {
        int ci, kx3;
        if (PHASE) {
            ci = kl >> 2, ky3 = a + ((kl >> 1) & 1), kx3 = b + (kl & 1);
        } else {
            ci = kl / 9;
            const int tap = kl - 9 * ci;
            ky3 = tap / 3, kx3 = tap - 3 * ky3;
        }
        off = ci * cs() + ky3 * rs() + kx3;
    }
    static __device__ __forceinline__ float at(const float* b, int off, int ky3, const Pix& p) {
        const bool pad = (ky3 == 0 && (p.edge & 1)) || (ky3 == 2 && (p.edge & 2));
        return pad ? 0.0f : b[off + p.off];
    }
};

/* The B operand (input terms) of the SIMT implicit GEMM, two sources with one interface: pixel(n) maps tile pixel
 * n to its flattened output pixel (-1: none), own(n) makes n this thread's loader pixel, value(k) is its term k
 * (0 where the term is padding or k ≥ K), and three hooks around the K loop's first barrier keep a staged source
 * in step. */
template <class G> struct GatherB {
    G g;
    int p0, N;
    typename G::Pix px;
    bool ok;
    __device__ __forceinline__ int pixel(int n) const { return p0 + n < N ? p0 + n : -1; }
    __device__ __forceinline__ void own(int n) {
        ok = p0 + n < N;
        px = g.pixel(ok ? p0 + n : 0);
    }
    __device__ __forceinline__ float value(int k) const { return ok && k < g.K ? g.gather(px, k) : 0.0f; }
    __device__ __forceinline__ void prologue(int) {}
    __device__ __forceinline__ void before_barrier(int) {}
    __device__ __forceinline__ void after_barrier(int, int) {}
};

/* The B source from a halo (3×3 convs; PHASE: the upsample's 2×2 phase taps, both column phases through value2
 * for conv_igemm's PAIR): chunk c's buffer is complete (waited before the barrier) when the first load of its terms
 * is about to run, and chunk c + 1 is issued just after that barrier, into the buffer of chunk c − 1, whose last
 * terms every thread loaded in the previous iteration (PAIR reads a step's terms before that step's barrier, so the
 * same holds). */
template <int TILE, class P = Conv2dParams, bool PHASE = false> struct HaloB {
    static constexpr int KC = HALO_CH * (PHASE ? 4 : 9);
    Halo<P> hl;
    typename Halo<P>::Pix px;
    const float* rec; /* the GroupNorm prologue's records, or null (always null for the upsample) */
    bool act;         /* the prologue's swish */
    __device__ __forceinline__ HaloB(const P& p, const float* x, float* s, const float* rec_, bool act_)
        : hl(p, x, s, TILE), rec(rec_), act(act_) {}
    __device__ __forceinline__ int K() const { return hl.p.c_in * (PHASE ? 4 : 9); }
    __device__ __forceinline__ int pixel(int n) const { return hl.pixel(n); }
    __device__ __forceinline__ void own(int n) { px = hl.pix(n); }
    __device__ __forceinline__ float value(int k) const {
        const int c = k / KC;
        int off, ky3;
        hl.template term<PHASE>(k - c * KC, 0, 0, off, ky3);
        return Halo<P>::at(hl.buf(c), off, ky3, px);
    }
    /* PHASE: term k of row phase a = blockIdx.z (re-read, not held: the 128 × 128 tile is at its register cap) for
     * both column phases: phase (a, 1) reads the same taps one column right. k < K always, as in value(): K is whole
     * chunks of 64 terms (c_in % 16 == 0, checked by Halo), so no K step runs past it. */
    __device__ __forceinline__ void value2(int k, float& v0, float& v1) const {
        const int a = (int)blockIdx.z;
        const int c = k / KC;
        int off, ky3;
        hl.template term<true>(k - c * KC, a, 0, off, ky3);
        v0 = Halo<P>::at(hl.buf(c), off, ky3, px);
        v1 = Halo<P>::at(hl.buf(c), off + 1, ky3, px);
    }
    __device__ __forceinline__ void landed(int chunk, int tid) const {
        if (rec) hl.normalize(chunk, tid, rec, act);
    }
    __device__ __forceinline__ void prologue(int tid) {
        hl.zero_pads(tid);
        hl.load(0, tid);
        cp_async_commit();
        cp_async_wait<0>();
        landed(0, tid);
        __syncthreads();
        if (KC < K()) hl.load(1, tid);
        cp_async_commit();
    }
    __device__ __forceinline__ void before_barrier(int k_next) {
        if (k_next < K() && k_next % KC == 0) {
            cp_async_wait<0>();
            landed(k_next / KC, (int)threadIdx.x);
        }
    }
    __device__ __forceinline__ void after_barrier(int k_next, int tid) {
        if (k_next < K() && k_next % KC == 0 && k_next + KC < K()) {
            hl.load(k_next / KC + 1, tid);
            cp_async_commit();
        }
    }
};

/* conv_igemm's PAIR epilogue: lanes l (phase 0) and l ^ 16 (phase 1) hold the same channels and 4 consecutive pixels; each
 * sends the other the two values it stores, so lane l writes output columns 2x .. 2x + 3 of pixels x, x + 1 and lane
 * l ^ 16 columns 2x + 4 .. 2x + 7: one 16-byte store each, 32 lanes writing 512 contiguous bytes. The 4 pixels lie
 * in one row of the halo tile (rw % 4 == 0), so they are all valid or all past the last row. */
template <int TM, int TN, class G, class S>
static __device__ __forceinline__ void pair_epilogue(const float (&acc)[TM][TN], const G& g, const S& src, int M,
                                                     int m0, const float* __restrict__ bias, float* out) {
    const int tid = (int)threadIdx.x, tx = tid % 16, ty = tid / 16, b = ty & 1;
    const size_t cs = g.cstride();
    const bool al = aligned16(out) && (g.ow & 1) == 0;
#pragma unroll
    for (int jj = 0; jj < TN / 4; jj++) {
        const int pq = src.pixel(4 * tx + 64 * jj);
        const size_t b0 = pq >= 0 ? g.out_base(pq) : 0; /* column 2x of phase (a, 0) */
#pragma unroll
        for (int i = 0; i < TM; i++) {
            const int m = m0 + (i & 3) + 4 * (ty >> 1) + 32 * (i >> 2);
            const float bm = bias && m < M ? bias[m] : 0.0f;
            const float v[4] = {acc[i][4 * jj] + bm, acc[i][4 * jj + 1] + bm, acc[i][4 * jj + 2] + bm,
                                acc[i][4 * jj + 3] + bm};
            /* every lane takes part in the exchange, whatever it then stores */
            const float r0 = __shfl_xor_sync(FULL_MASK, b ? v[0] : v[2], 16);
            const float r1 = __shfl_xor_sync(FULL_MASK, b ? v[1] : v[3], 16);
            if (pq < 0 || m >= M) continue;
            float* o = out + b0 + (size_t)m * cs;
            if (al) {
                gst(reinterpret_cast<float4*>(o + 4 * b),
                    b ? make_float4(r0, v[2], r1, v[3]) : make_float4(v[0], r0, v[1], r1));
            } else {
#pragma unroll
                for (int q = 0; q < 4; q++) gst(o + 2 * q + b, v[q]);
            }
        }
    }
}

/* The implicit GEMM: out tile (blockIdx.y·BM .. +BM channels) × (the source's 128 or 64 tile pixels). M = c_out;
 * g.K terms per output; g gives the weights and the output addressing, src the input terms. bias / residual may be
 * null.
 * PAIR (the SIMT upsample on a halo): BM / 2 channels × both column phases of row phase a = blockIdx.z in one
 * block, so that the stores are contiguous; g is phase (a, 0), src a PHASE HaloB, and the two B tiles follow the A
 * tile in shared memory. Tile row r = 4·ty + q + 64·h (as the threads own them) is phase b = ty & 1 of output
 * channel m0 + q + 4·(ty >> 1) + 32·h: a thread's channels are all of one phase, the two phases of the same
 * channels and pixels sit in lanes l and l ^ 16 of one warp (pair_epilogue), and each reads only its phase's B tile
 * (phase (a, 1)'s holds the taps one column right). The A loader's rows am + (256 / BK)·j are then one phase,
 * (am >> 2) & 1, and channels (am & 3) + 4·(am >> 3) + (128 / BK)·j. The B tiles are filled straight from the halo
 * at the top of each K step (no register prefetch: the source is shared memory, and the 128 × 128 tile is at its
 * register cap). */
template <class Tl, bool PAIR = false, class G, class S>
static __device__ __forceinline__ void conv_igemm(const G& g, S& src, int M, const float* __restrict__ bias,
                                                  const float* residual, float* out, float* smem) {
    constexpr int BM = Tl::BM, BN = Tl::BN, BK = Tl::BK, AS = Tl::AS;
    constexpr int TM = Tl::TM, TN = Tl::TN, A_PER = Tl::A_PER, B_PER = Tl::B_PER;
    if (blockDim.x != CONV_THREADS || blockDim.y != 1 || blockDim.z != 1) __trap();
    float* As = smem;           /* [BK][AS] */
    float* Bs = smem + BK * AS; /* [BK][BN] (PAIR: phase 0's, then phase 1's) */
    const int tid = (int)threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = (int)blockIdx.y * (PAIR ? BM / 2 : BM), K = g.K;
    const float* Bt = Bs + (PAIR ? (ty & 1) * BK * BN : 0); /* the B tile this thread reads */

    /* loader roles: A element (m0 + am + (256/BK)·r, k0 + ak); B element (k0 + bk + (256/BN)·r, tile pixel bp) */
    const int ak = tid % BK, am = tid / BK;
    const int bp = tid % BN, bk = tid / BN;
    src.own(bp);
    src.prologue(tid);

    float ra[A_PER], rb[PAIR ? 1 : B_PER]; /* PAIR: no B prefetch */
    auto load = [&](int k0) {
#pragma unroll
        for (int r = 0; r < A_PER; r++) {
            const int ka = k0 + ak;
            if constexpr (PAIR) {
                const int m = m0 + (am & 3) + 4 * (am >> 3) + (128 / BK) * r;
                ra[r] = m < M && ka < K ? __ldg(g.w + ((size_t)((am >> 2) & 1) * M + m) * K + ka) : 0.0f;
            } else {
                const int m = m0 + am + (CONV_THREADS / BK) * r;
                ra[r] = m < M && ka < K ? g.weight(m, ka) : 0.0f;
            }
        }
        if constexpr (!PAIR) {
#pragma unroll
            for (int r = 0; r < B_PER; r++) rb[r] = src.value(k0 + bk + (CONV_THREADS / BN) * r);
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
        for (int r = 0; r < B_PER; r++) {
            const int o = (bk + (CONV_THREADS / BN) * r) * BN + bp;
            if constexpr (PAIR) {
                /* chunk (k0 / KC) was published by the barrier before this step (or the prologue's) */
                float v0, v1;
                src.value2(k0 + bk + (CONV_THREADS / BN) * r, v0, v1);
                Bs[o] = v0, Bs[BK * BN + o] = v1;
            } else {
                Bs[o] = rb[r];
            }
        }
        src.before_barrier(k0 + BK);
        __syncthreads();
        src.after_barrier(k0 + BK, tid);
        if (k0 + BK < K) load(k0 + BK); /* in flight while this tile is consumed */
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            float bv[TN];
#pragma unroll
            for (int h = 0; h < TN / 4; h++) {
                const float4 v = *reinterpret_cast<const float4*>(Bt + kk * BN + 4 * tx + 64 * h);
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
    if constexpr (PAIR) {
        pair_epilogue<TM, TN>(acc, g, src, M, m0, bias, out);
        return;
    }

    /* Epilogue: a thread's 4 consecutive pixels as one float4 where they are 4 consecutive output elements (one
     * image, 16-byte aligned), so that each warp instruction writes 256 contiguous bytes per channel; scalar
     * otherwise (upsample phases, odd sizes). */
    const size_t cs = g.cstride();
    const bool al = aligned16(out) && (residual == nullptr || aligned16(residual)) && (cs & 3) == 0;
#pragma unroll
    for (int jj = 0; jj < TN / 4; jj++) {
        const int n0 = 4 * tx + 64 * jj, pq = src.pixel(n0);
        if (pq < 0) continue;
        const size_t b0 = g.out_base(pq);
        const int p3 = src.pixel(n0 + 3);
        const bool v4 = al && p3 == pq + 3 && (b0 & 3) == 0 && g.out_base(p3) == b0 + 3;
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
                const int pp = src.pixel(n0 + q);
                if (pp < 0) continue;
                const size_t o = g.out_base(pp) + (size_t)m * cs;
                float v = acc[i][4 * jj + q] + bm;
                if (residual) v += gld(residual + o);
                gst(out + o, v);
            }
        }
    }
}

template <int KH, int KW> static __device__ __forceinline__ ConvGeo<KH, KW, false> conv2d_geo(const float* x,
                                                                                         const float* w,
                                                                                         const Conv2dParams& p) {
    ConvGeo<KH, KW, false> g;
    g.x = x, g.w = w, g.c_in = p.c_in, g.h = p.h, g.wd = p.w, g.kh = p.kh, g.kw = p.kw, g.stride = p.stride;
    g.top = p.pad_top, g.left = p.pad_left, g.oh = p.oh, g.ow = p.ow, g.c_out = p.c_out;
    g.K = p.c_in * p.kh * p.kw, g.a = 0, g.b = 0;
    return g;
}

/* Phase (a, b) of an upsample_conv: the phase's weights are the (c_out, c_in, 2, 2) slice a·2 + b of w. */
static __device__ __forceinline__ ConvGeo<2, 2, true> phase_geo(const float* x, const float* w,
                                                                const UpsampleConvParams& p, int a, int b) {
    ConvGeo<2, 2, true> g;
    g.K = p.c_in * 4;
    g.x = x, g.w = w + (size_t)(a * 2 + b) * p.c_out * g.K, g.c_in = p.c_in, g.h = p.h, g.wd = p.w, g.kh = 2;
    g.kw = 2, g.stride = 1, g.top = 1 - a, g.left = 1 - b, g.oh = p.h, g.ow = p.w, g.c_out = p.c_out, g.a = a, g.b = b;
    return g;
}

template <class Tl, int KH, int KW>
static __device__ __forceinline__ void conv2d_run(const float* x, const float* w, const float* bias,
                                                  const float* residual, const float* norm, float* out,
                                                  const Conv2dParams& p, float* smem) {
    const auto g = conv2d_geo<KH, KW>(x, w, p);
    const float* bi = p.has_bias ? bias : nullptr;
    const float* re = p.has_residual ? residual : nullptr;
    if (KH == 3 && KW == 3 && p.halo_rw > 0) {
        HaloB<Tl::BN> src(p, x, smem + Tl::SMEM_FLOATS, p.norm != CONV_NORM_NONE ? norm : nullptr,
                          p.norm == CONV_NORM_GROUPNORM_SILU);
        conv_igemm<Tl>(g, src, p.c_out, bi, re, out, smem);
        return;
    }
    if (p.norm != CONV_NORM_NONE) __trap(); /* the prologue lives in the halo loader (the launcher checks) */
    GatherB<ConvGeo<KH, KW, false>> src;
    src.g = g, src.p0 = (int)blockIdx.x * Tl::BN, src.N = p.n * p.oh * p.ow;
    conv_igemm<Tl>(g, src, p.c_out, bi, re, out, smem);
}

template <class Tl>
static __device__ __forceinline__ void conv2d_entry(const float* x, const float* w, const float* bias,
                                                    const float* residual, const float* norm, float* out,
                                                    const Conv2dParams& p) {
    DYNAMIC_SHARED(float, smem);
    /* uniform branch: the common sizes get constant divisors in the gather */
    if (p.kh == 3 && p.kw == 3) conv2d_run<Tl, 3, 3>(x, w, bias, residual, norm, out, p, smem);
    else if (p.kh == 1 && p.kw == 1) conv2d_run<Tl, 1, 1>(x, w, bias, residual, norm, out, p, smem);
    else conv2d_run<Tl, 0, 0>(x, w, bias, residual, norm, out, p, smem);
}

/* Gathers: blockIdx.z = output phase a·2 + b. Halo (p.halo_rw > 0): blockIdx.z = row phase a, both column phases
 * of BM / 2 channels per block (PAIR), so the stores are contiguous; the second B tile and then the halo buffers
 * follow the tile's shared memory. */
template <class Tl>
static __device__ __forceinline__ void upsample_conv_entry(const float* x, const float* w, const float* bias,
                                                           float* out, const UpsampleConvParams& p) {
    DYNAMIC_SHARED(float, smem);
    const float* bi = p.has_bias ? bias : nullptr;
    if (p.halo_rw > 0) {
        const int a = (int)blockIdx.z;
        HaloB<Tl::BN, UpsampleConvParams, true> src(p, x, smem + Tl::SMEM_FLOATS + Tl::BK * Tl::BN, nullptr, false);
        conv_igemm<Tl, true>(phase_geo(x, w, p, a, 0), src, p.c_out, bi, nullptr, out, smem);
        return;
    }
    const int phase = (int)blockIdx.z;
    GatherB<ConvGeo<2, 2, true>> src;
    src.g = phase_geo(x, w, p, phase >> 1, phase & 1), src.p0 = (int)blockIdx.x * Tl::BN, src.N = p.n * p.h * p.w;
    conv_igemm<Tl>(src.g, src, p.c_out, bi, nullptr, out, smem);
}

extern "C" __global__ void conv2d_f32(const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ bias, const float* residual,
                                      const float* __restrict__ norm, float* out, Conv2dParams p) {
    conv2d_entry<T64>(x, w, bias, residual, norm, out, p);
}
extern "C" __global__ __launch_bounds__(CONV_THREADS, 2) void conv2d_t128_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                    const float* residual, const float* __restrict__ norm, float* out, Conv2dParams p) {
    conv2d_entry<T128>(x, w, bias, residual, norm, out, p);
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
/* ---- tensor cores: TF32 / bf16 implicit GEMM (conv2d_tc_f32, upsample_conv_tc_f32) ----------------------------- */

/* The same implicit GEMM (M = c_out, N = pixels, K = c_in·kh·kw) on mma.sync: 128 × 128 tile, 8 warps of 64 × 32, K
 * step 16. A (weights, f32 [m][k] with k contiguous) is copied in 16-byte chunks (4-byte ones when K % 4 != 0, e.g.
 * conv_in's K = 27) into 64-byte rows swizzled like gemm.cu's, read by ldmatrix.x4, which hands a lane exactly its
 * TF32 A fragment (an 8×8 b16 matrix is an 8×4 f32 one). B: gathered into a staged tile (conv_igemm_tc, 3-stage
 * cp.async pipeline, 48 KiB), or read from a halo (conv_halo_tc, 50.5 KiB). p.tc_math (tc_mma_tile):
 *   CONV_TC_TF32: operands rounded to 10 mantissa bits (~1e-3 relative per product, ~1e-4 on a K = 1152 sum);
 *   CONV_TC_TF32X3: a = big + small, D += a_s·b_b + a_b·b_s + a_b·b_b: ~f32 accuracy at 3× the tensor work, still
 *     ~2.5× the f32 FMA peak on an H100;
 *   CONV_TC_BF16: operands rounded to bf16 (8 significant bits, products exact in f32), m16n8k16 at twice the TF32
 *     rate (H100 SXM: 989 against 494 TFLOP/s dense).
 * Epilogue: + bias, then + residual, staged through shared memory so that every store instruction writes 32
 * consecutive pixels of one channel. */
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

/* One K tile (16 k) of a warp's 64 × 32 tile: A fragments by ldmatrix from stage `as` (two k8 halves), B values
 * (f32: bv[ks][ni][h] = B[8·ks + t + 4·h][n8 block ni, column g]) given. TF32: two m16n8k8 per (mi, ni) (3xTF32:
 * six, both operands split into big + small). BF16: one m16n8k16 per (mi, ni), over the same 16 k in a permuted
 * order that both operands share: the mma's k pair (2t, 2t + 1) is the tile's k (t, t + 4) and (2t + 8, 2t + 9) is
 * (8 + t, 12 + t), exactly the values the TF32 fragments already put in this lane. */
template <int MATH>
static __device__ __forceinline__ void tc_mma_tile(float (&acc)[4][4][4], const unsigned char* as, int wm,
                                                   const float (&bv)[2][4][2]) {
    const int lane = (int)threadIdx.x & 31, a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_kc = lane >> 4;
    if (MATH == CONV_TC_BF16) {
        uint32_t a[4][4], b[4][2];
#pragma unroll
        for (int mi = 0; mi < 4; mi++) {
            uint32_t r0[4], r1[4]; /* f32: [0] A[g][t], [1] A[g+8][t], [2] A[g][t+4], [3] A[g+8][t+4] */
            ldmatrix_x4(r0, as + tc_swz(wm + mi * 16 + a_row, a_kc));
            ldmatrix_x4(r1, as + tc_swz(wm + mi * 16 + a_row, 2 + a_kc));
            a[mi][0] = pack_bf16x2(bits_f32(r0[0]), bits_f32(r0[2]));
            a[mi][1] = pack_bf16x2(bits_f32(r0[1]), bits_f32(r0[3]));
            a[mi][2] = pack_bf16x2(bits_f32(r1[0]), bits_f32(r1[2]));
            a[mi][3] = pack_bf16x2(bits_f32(r1[1]), bits_f32(r1[3]));
        }
#pragma unroll
        for (int ni = 0; ni < 4; ni++) {
            b[ni][0] = pack_bf16x2(bv[0][ni][0], bv[0][ni][1]);
            b[ni][1] = pack_bf16x2(bv[1][ni][0], bv[1][ni][1]);
        }
#pragma unroll
        for (int mi = 0; mi < 4; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++) mma_m16n8k16_bf16(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
        return;
    }
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
        uint32_t ab[4][4], asm_[4][4], bb[4][2], bsm[4][2];
#pragma unroll
        for (int mi = 0; mi < 4; mi++) {
            uint32_t raw[4];
            ldmatrix_x4(raw, as + tc_swz(wm + mi * 16 + a_row, 2 * ks + a_kc));
#pragma unroll
            for (int e = 0; e < 4; e++) {
                ab[mi][e] = to_tf32(bits_f32(raw[e]));
                if (MATH == CONV_TC_TF32X3) asm_[mi][e] = to_tf32(bits_f32(raw[e]) - bits_f32(ab[mi][e]));
            }
        }
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                bb[ni][h] = to_tf32(bv[ks][ni][h]);
                if (MATH == CONV_TC_TF32X3) bsm[ni][h] = to_tf32(bv[ks][ni][h] - bits_f32(bb[ni][h]));
            }
#pragma unroll
        for (int mi = 0; mi < 4; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                if (MATH == CONV_TC_TF32X3) {
                    mma_m16n8k8_tf32(acc[mi][ni], asm_[mi], bb[ni], acc[mi][ni]);
                    mma_m16n8k8_tf32(acc[mi][ni], ab[mi], bsm[ni], acc[mi][ni]);
                }
                mma_m16n8k8_tf32(acc[mi][ni], ab[mi], bb[ni], acc[mi][ni]);
            }
    }
}

/* A stage: 128 weight rows × 16 k, row r from wrow(r) (null: zero), in 16-byte chunks where K % 4 == 0 and the
 * rows are 16-byte aligned (avec), 4-byte ones otherwise (conv_in's K = 27). */
template <class W>
static __device__ __forceinline__ void tc_load_a(unsigned char* as, const W& wrow, int k0, int K, bool avec,
                                                 const float* dummy) {
    const int tid = (int)threadIdx.x;
    if (avec) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int c = tid + CONV_THREADS * i, row = c >> 2, kc = c & 3, k = k0 + 4 * kc;
            const float* r = wrow(row);
            const bool in = r != nullptr && k < K;
            cp_async16(as + tc_swz(row, kc), in ? r + k : dummy, in ? 16 : 0);
        }
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int e = tid + CONV_THREADS * i, row = e >> 4, kk = e & 15, k = k0 + kk;
            const float* r = wrow(row);
            const bool in = r != nullptr && k < K;
            cp_async4(as + tc_swz(row, kk >> 2) + 4 * (kk & 3), in ? r + k : dummy, in ? 4 : 0);
        }
    }
}

/* Stages half the block's C (warp rows' m blocks 2·half, 2·half + 1: 64 rows × 128 pixels) in st: row
 * 32·(wm / 64) + (m within the half), as 8-byte pairs (row stride TC_EPI_LD = 8 mod 32 banks: each 16-lane phase
 * covers all 32 banks once). The caller syncs before (buffers free) and after (rows complete). */
static __device__ __forceinline__ void tc_stage_half(const float (&acc)[4][4][4], float* st, int half, int wm,
                                                     int wn) {
    const int lane = (int)threadIdx.x & 31, gq = lane >> 2, t = lane & 3;
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const int mi = 2 * half + j;
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int row = (wm >> 1) + 16 * j + gq + 8 * r, col = wn + 8 * ni + 2 * t;
                *reinterpret_cast<float2*>(st + row * TC_EPI_LD + col) =
                    make_float2(acc[mi][ni][2 * r], acc[mi][ni][2 * r + 1]);
            }
    }
}

/* Epilogue of a 128-channel block: + bias, then + residual, half the tile at a time through shared memory, so that
 * each warp writes whole rows, 32 consecutive pixels of one channel per instruction, instead of the fragments'
 * 8 channels × 4 pixel pairs (twice the sectors). pixel(n): the flattened output pixel of tile pixel n, or -1. */
template <class G, class P>
static __device__ __forceinline__ void tc_epilogue(const float (&acc)[4][4][4], const G& g, const P& pixel, int M,
                                                   int m0, const float* __restrict__ bias, const float* residual,
                                                   float* out, unsigned char* smem, int wm, int wn) {
    static_assert(64 * TC_EPI_LD * 4 <= 2 * TC_A_BYTES + HALO_BYTES, "the staged half tile must fit the buffers");
    float* st = reinterpret_cast<float*>(smem);
    const size_t cs = g.cstride();
#pragma unroll
    for (int half = 0; half < 2; half++) {
        __syncthreads(); /* every warp is done with the pipeline's buffers, or with the previous half */
        tc_stage_half(acc, st, half, wm, wn);
        __syncthreads();
        for (int i = (int)threadIdx.x; i < 64 * TC_BN; i += CONV_THREADS) {
            const int row = i / TC_BN, col = i % TC_BN;
            const int m = m0 + (row >> 5) * 64 + 32 * half + (row & 31), p = pixel(col);
            if (m >= M || p < 0) continue;
            const size_t o = g.out_base(p) + (size_t)m * cs;
            float v = st[row * TC_EPI_LD + col] + (bias ? bias[m] : 0.0f);
            if (residual) v += gld(residual + o);
            gst(out + o, v);
        }
    }
}

static __device__ __forceinline__ void tc_zero(float (&acc)[4][4][4]) {
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;
}

/* The gather path: B (the im2col terms, [k][pixel]) copied element by element with 4-byte cp.async, zero-filled
 * where the tap falls in the padding or past K, into rows of 128 floats with the pixel index XOR-ed by (k & 3)·8:
 * the gather's 32 consecutive pixels and the fragment reads B[t][g], B[t+4][g] are both conflict-free. 3 stages. */
template <int MATH, class G>
static __device__ __forceinline__ void conv_igemm_tc(const G& g, int M, int N, const float* __restrict__ bias,
                                                     const float* residual, float* out, unsigned char* smem) {
    if (blockDim.x != CONV_THREADS || blockDim.y != 1 || blockDim.z != 1) __trap();
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, t = lane & 3;
    const int m0 = (int)blockIdx.y * TC_BM, p0 = (int)blockIdx.x * TC_BN, K = g.K;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    const bool avec = K % 4 == 0 && (reinterpret_cast<uintptr_t>(g.w) & 15) == 0;
    const int ktiles = ceil_div(K, TC_BK);
    auto wrow = [&](int r) -> const float* { return m0 + r < M ? g.w + (size_t)(m0 + r) * K : nullptr; };

    /* B loader: pixel p0 + tid % 128, k rows tid / 128 + 2i (i < 8); the pixel decoding happens once. */
    const int bp = tid % TC_BN, bk = tid / TC_BN;
    const bool pvalid = p0 + bp < N;
    const typename G::Pix px = g.pixel(pvalid ? p0 + bp : 0);
    auto load_stage = [&](int s, int kt) {
        unsigned char* as = smem + s * TC_STAGE_BYTES;
        float* bs = reinterpret_cast<float*>(as + TC_A_BYTES);
        const int k0 = kt * TC_BK;
        tc_load_a(as, wrow, k0, K, avec, g.w);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int kk = bk + 2 * i, k = k0 + kk;
            bool in = false;
            const float* src = (pvalid && k < K) ? g.at(px, k, in) : g.x;
            cp_async4(bs + tc_bidx(kk, bp), in ? src : g.x, in ? 4 : 0);
        }
    };

    float acc[4][4][4];
    tc_zero(acc);
#pragma unroll
    for (int s = 0; s < TC_STAGES - 1; s++) {
        if (s < ktiles) load_stage(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait<TC_STAGES - 2>();
        __syncthreads();
        if (kt + TC_STAGES - 1 < ktiles) load_stage((kt + TC_STAGES - 1) % TC_STAGES, kt + TC_STAGES - 1);
        cp_async_commit();
        const unsigned char* as = smem + (kt % TC_STAGES) * TC_STAGE_BYTES;
        const float* bs = reinterpret_cast<const float*>(as + TC_A_BYTES);
        float bv[2][4][2];
#pragma unroll
        for (int ks = 0; ks < 2; ks++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int h = 0; h < 2; h++) bv[ks][ni][h] = bs[tc_bidx(8 * ks + t + 4 * h, wn + 8 * ni + gq)];
        tc_mma_tile<MATH>(acc, as, wm, bv);
    }
    cp_async_wait<0>();
    auto pixel = [&](int n) { return p0 + n < N ? p0 + n : -1; };
    tc_epilogue(acc, g, pixel, M, m0, bias, residual, out, smem, wm, wn);
}

/* The halo path (see Halo): 2 stages of A (16 KiB) and the two halo buffers (34.5 KiB); the B fragments are read
 * straight from the halo, so no B tile is built. Chunk c + 1 is issued with the first K tile of chunk c (into the
 * buffer chunk c − 1 used, free after that tile's barrier) and waited for a chunk later. PHASE: upsample_conv with
 * both column phases b of row phase a in one block (A rows 0-63: phase (a, 0), 64-127: (a, 1), of channels
 * blockIdx.y·64 ..): warp row b reads its taps shifted by b, and the epilogue interleaves the two phases, so each
 * store instruction writes 32 consecutive floats of an output row instead of every other one. */
template <int MATH, bool PHASE, class G, class H>
static __device__ __forceinline__ void conv_halo_tc(const G& g, const H& hl, int M, int a, const float* __restrict__ bias,
                                                    const float* residual, const float* __restrict__ rec, bool act,
                                                    float* out, unsigned char* smem) {
    constexpr int KC = HALO_CH * (PHASE ? 4 : 9), TPC = KC / TC_BK;
    static_assert(KC % TC_BK == 0, "K tiles within chunks");
    if (blockDim.x != CONV_THREADS || blockDim.y != 1 || blockDim.z != 1) __trap();
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, t = lane & 3;
    const int K = g.K, ktiles = K / TC_BK, chunks = K / KC;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32, wb = PHASE ? wm >> 6 : 0;
    const int m0 = (int)blockIdx.y * (PHASE ? 64 : TC_BM);
    /* PHASE: g is phase (a, 0); phase (a, 1)'s weights follow c_out rows later */
    auto wrow = [&](int r) -> const float* {
        const int m = m0 + (PHASE ? r & 63 : r);
        return m < M ? g.w + ((size_t)(PHASE ? (r >> 6) * M : 0) + m) * K : nullptr;
    };
    const bool avec = (reinterpret_cast<uintptr_t>(g.w) & 15) == 0 && K % 4 == 0;
    typename H::Pix px[4];
#pragma unroll
    for (int ni = 0; ni < 4; ni++) px[ni] = hl.pix(wn + 8 * ni + gq);

    float acc[4][4][4];
    tc_zero(acc);
    hl.zero_pads(tid);
    tc_load_a(smem, wrow, 0, K, avec, g.w);
    hl.load(0, tid);
    cp_async_commit();
    for (int kt = 0; kt < ktiles; kt++) {
        cp_async_wait<0>();
        if (rec != nullptr && kt % TPC == 0) hl.normalize(kt / TPC, tid, rec, act); /* chunk kt / TPC, first use */
        __syncthreads();
        if (kt + 1 < ktiles) tc_load_a(smem + ((kt + 1) & 1) * TC_A_BYTES, wrow, (kt + 1) * TC_BK, K, avec, g.w);
        if (kt % TPC == 0 && kt / TPC + 1 < chunks) hl.load(kt / TPC + 1, tid);
        cp_async_commit();
        const unsigned char* as = smem + (kt & 1) * TC_A_BYTES;
        const float* buf = hl.buf(kt / TPC);
        float bv[2][4][2];
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            int off[2], ky3[2];
#pragma unroll
            for (int h = 0; h < 2; h++)
                hl.template term<PHASE>((kt % TPC) * TC_BK + 8 * ks + t + 4 * h, a, wb, off[h], ky3[h]);
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int h = 0; h < 2; h++) bv[ks][ni][h] = H::at(buf, off[h], ky3[h], px[ni]);
        }
        tc_mma_tile<MATH>(acc, as, wm, bv);
    }
    cp_async_wait<0>();
    auto pixel = [&](int n) { return hl.pixel(n); };
    if (!PHASE) {
        tc_epilogue(acc, g, pixel, M, m0, bias, residual, out, smem, wm, wn);
        return;
    }
    /* both phases: staged row 32·b + (channel within the half); output x = 2·col + b, b fastest */
    float* st = reinterpret_cast<float*>(smem);
    const size_t cs = g.cstride();
#pragma unroll
    for (int half = 0; half < 2; half++) {
        __syncthreads();
        tc_stage_half(acc, st, half, wm, wn);
        __syncthreads();
        for (int i = tid; i < 32 * 2 * TC_BN; i += CONV_THREADS) {
            const int r = i / (2 * TC_BN), col = (i >> 1) % TC_BN, b = i & 1;
            const int m = m0 + 32 * half + r, p = pixel(col);
            if (m >= M || p < 0) continue;
            const size_t o = g.out_base(p) + b + (size_t)m * cs;
            gst(out + o, st[(32 * b + r) * TC_EPI_LD + col] + (bias ? bias[m] : 0.0f));
        }
    }
}

template <int KH, int KW, int MATH>
static __device__ __forceinline__ void conv2d_tc_run(const float* x, const float* w, const float* bias,
                                                     const float* residual, const float* norm, float* out,
                                                     const Conv2dParams& p, unsigned char* smem) {
    const auto g = conv2d_geo<KH, KW>(x, w, p);
    const float* bi = p.has_bias ? bias : nullptr;
    const float* re = p.has_residual ? residual : nullptr;
    if (KH == 3 && KW == 3 && p.halo_rw > 0) {
        const Halo<Conv2dParams> hl(p, x, reinterpret_cast<float*>(smem + 2 * TC_A_BYTES), TC_BN);
        const float* rec = p.norm != CONV_NORM_NONE ? norm : nullptr;
        conv_halo_tc<MATH, false>(g, hl, p.c_out, 0, bi, re, rec, p.norm == CONV_NORM_GROUPNORM_SILU, out, smem);
    } else {
        if (p.norm != CONV_NORM_NONE) __trap(); /* the prologue lives in the halo loader (the launcher checks) */
        conv_igemm_tc<MATH>(g, p.c_out, p.n * p.oh * p.ow, bi, re, out, smem);
    }
}

template <int MATH>
static __device__ __forceinline__ void conv2d_tc_entry(const float* x, const float* w, const float* bias,
                                                       const float* residual, const float* norm, float* out,
                                                       const Conv2dParams& p, unsigned char* smem) {
    if (p.kh == 3 && p.kw == 3) conv2d_tc_run<3, 3, MATH>(x, w, bias, residual, norm, out, p, smem);
    else if (p.kh == 1 && p.kw == 1) conv2d_tc_run<1, 1, MATH>(x, w, bias, residual, norm, out, p, smem);
    else conv2d_tc_run<0, 0, MATH>(x, w, bias, residual, norm, out, p, smem);
}

/* Gathers: grid z = phase a·2 + b. Halo (p.halo_rw > 0): grid z = row phase a, both column phases per block. */
template <int MATH>
static __device__ __forceinline__ void upsample_tc_entry(const float* x, const float* w, const float* bias, float* out,
                                                         const UpsampleConvParams& p, unsigned char* smem) {
    const float* bi = p.has_bias ? bias : nullptr;
    if (p.halo_rw > 0) {
        const int a = (int)blockIdx.z;
        const Halo<UpsampleConvParams> hl(p, x, reinterpret_cast<float*>(smem + 2 * TC_A_BYTES), TC_BN);
        conv_halo_tc<MATH, true>(phase_geo(x, w, p, a, 0), hl, p.c_out, a, bi, nullptr, nullptr, false, out, smem);
    } else {
        const int phase = (int)blockIdx.z;
        conv_igemm_tc<MATH>(phase_geo(x, w, p, phase >> 1, phase & 1), p.c_out, p.n * p.h * p.w, bi, nullptr, out,
                              smem);
    }
}

/* Dynamic shared memory: TC_STAGES · TC_STAGE_BYTES = 48 KiB (gathers), 2 · TC_A_BYTES + HALO_BYTES = 50.5 KiB (halo:
 * over the 48 KiB default, the host raises each function's limit at module load);
 * p.tc_math one of CONV_TC_* (anything else traps). */
extern "C" __global__ __launch_bounds__(CONV_THREADS) void conv2d_tc_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                                          const float* __restrict__ bias, const float* residual,
                                                                          const float* __restrict__ norm, float* out,
                                                                          Conv2dParams p) {
    DYNAMIC_SHARED(float, smem);
    unsigned char* sm = reinterpret_cast<unsigned char*>(smem);
    if (p.tc_math == CONV_TC_TF32X3) conv2d_tc_entry<CONV_TC_TF32X3>(x, w, bias, residual, norm, out, p, sm);
    else if (p.tc_math == CONV_TC_TF32) conv2d_tc_entry<CONV_TC_TF32>(x, w, bias, residual, norm, out, p, sm);
    else if (p.tc_math == CONV_TC_BF16) conv2d_tc_entry<CONV_TC_BF16>(x, w, bias, residual, norm, out, p, sm);
    else __trap();
}

extern "C" __global__ __launch_bounds__(CONV_THREADS) void upsample_conv_tc_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                                                 const float* __restrict__ bias, float* __restrict__ out,
                                                                                 UpsampleConvParams p) {
    DYNAMIC_SHARED(float, smem);
    unsigned char* sm = reinterpret_cast<unsigned char*>(smem);
    if (p.tc_math == CONV_TC_TF32X3) upsample_tc_entry<CONV_TC_TF32X3>(x, w, bias, out, p, sm);
    else if (p.tc_math == CONV_TC_TF32) upsample_tc_entry<CONV_TC_TF32>(x, w, bias, out, p, sm);
    else if (p.tc_math == CONV_TC_BF16) upsample_tc_entry<CONV_TC_BF16>(x, w, bias, out, p, sm);
    else __trap();
}
