/*
 * groupnorm.cu: torch GroupNorm over NCHW f32 (biased variance, eps, affine gamma/beta), optionally fused with swish
 * x·σ(x): the VQ decoder's norm layers. f32 only (the VQ runs in f32).
 *
 * Entry points (kernels/llamagen_kernels.h), launched in this order by backend::cuda::groupnorm:
 *   groupnorm_stats_f32(x f32 [n, c, hw], part f32 [n·groups, chunks, 3], GroupnormParams)
 *   groupnorm_f32      (x, part, gamma f32 [c], beta f32 [c], y f32 [n, c, hw], GroupnormParams)
 * or, where a conv normalises its input as it loads it (op groupnorm_conv, backend::cuda::groupnorm::groupnorm_affine),
 *   groupnorm_affine_f32(part, gamma, beta, rec f32 [n, c, 4], GroupnormParams): per (image, channel) the record
 *       (mean hi, mean lo, rstd·gamma, beta) that conv.cu's prologue applies with groupnorm_apply (common.cuh), the
 *       function groupnorm_f32 applies too: both paths give the same values bit for bit.
 * The reference is backend::cpu::groupnorm (shifted f64 sums, mean kept as f32 hi + lo, y = ((x − hi) − lo)·s + b
 * with s = rstd·gamma[c]).
 *
 * Design. A group (sample s, group g) is (c/groups)·hw contiguous values: 4·65536 = 262144 at the 256×256 decoder
 * stage, so one block per group would leave most SMs idle and stream 1 MB through one SM. Both kernels split every
 * group into chunks of `chunk` values (8192 by default: 256 threads × 32 values), one block per (chunk, group):
 *   - stats: each block reduces its chunk two-pass in f32: m = Σx / cnt (tree: per-thread sums, warp shuffles,
 *     per-warp partials), then over the same values (an L1/L2 hit) s1 = Σ(x − m) and s2 = Σ(x − m)². The chunk's
 *     mean is m + s1/cnt and its centred sum of squares M2 = s2 − s1²/cnt: the centring is what keeps the variance
 *     when |mean| >> std (a single-pass f32 E[x²] − E[x]² loses it), and the s1 correction removes the f32 rounding
 *     of m. It writes (m, s1/cnt, M2).
 *   - normalise: thread 0 of each block merges its group's partials in f64 (Chan: mean = Σ cnt_i·μ_i / N,
 *     M2 = Σ M2_i + cnt_i·(μ_i − mean)²), splits the mean into f32 hi + lo and computes rstd = 1/sqrt(M2/N + eps) in
 *     f64 like the reference; then the block normalises its chunk (16-byte vectors when hw is a multiple of 4 and
 *     the pointers are aligned), swish as y / (1 + e^−y).
 * Both grids depend only on shapes; any block size 1..1024 works (block_reduce of common.cuh).
 * Measured NMSE against the CPU on the emulator (tests/kernel_groupnorm.rs): worst 1.0e-14 over the sweep, 5.5e-15
 * with |mean|/std = 1e3..3e4 (the f64 merge makes the statistics as accurate as the reference's; without the s1
 * correction that case measured 2.8e-9).
 *
 * Napkin math (VQ-16 decoder at 256×256: c = 128, hw = 65536, 32 groups, batch 1; H100 SXM 3.35 TB/s):
 *   stats reads x once from HBM (32 MB; the second pass over a 32 KB chunk hits L1/L2) → 10 µs; normalise reads x
 *   and writes y (64 MB) → 20 µs, ~30 µs per layer at the roofline, 1024 blocks per kernel. FLOPs ≈ 10 per value
 *   (+ ~20 with swish): far under the f32 roof, memory bound.
 * Measured: not yet on a GPU (no device in the development environment).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

extern "C" __global__ void groupnorm_stats_f32(const float* __restrict__ x, float* __restrict__ part,
                                               GroupnormParams p) {
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
    const int glen = (p.c / p.groups) * p.hw; /* fits int32 (the launcher checks) */
    const int ngroups = p.n * p.groups;
    const bool vec = aligned16(x) && glen % 4 == 0 && p.chunk % 4 == 0;
    for (int sg = (int)blockIdx.y; sg < ngroups; sg += (int)gridDim.y) {
        for (int ch = (int)blockIdx.x; ch < p.chunks; ch += (int)gridDim.x) {
            const int start = ch * p.chunk;
            const int cnt = min(p.chunk, glen - start);
            const float* src = x + (size_t)sg * glen + start;
            float s = 0.0f;
            if (vec) {
                for (int i = 4 * tid; i < cnt; i += 4 * nt) {
                    const float4 v = gld(reinterpret_cast<const float4*>(src + i));
                    s += (v.x + v.y) + (v.z + v.w);
                }
            } else {
                for (int i = tid; i < cnt; i += nt) s += gld(src + i);
            }
            const float m = block_reduce_sum(s) / (float)cnt;
            float s1 = 0.0f, s2 = 0.0f;
            if (vec) {
                for (int i = 4 * tid; i < cnt; i += 4 * nt) {
                    const float4 v = gld(reinterpret_cast<const float4*>(src + i));
                    const float a = v.x - m, b = v.y - m, c = v.z - m, d = v.w - m;
                    s1 += (a + b) + (c + d);
                    s2 += (a * a + b * b) + (c * c + d * d);
                }
            } else {
                for (int i = tid; i < cnt; i += nt) {
                    const float a = gld(src + i) - m;
                    s1 += a;
                    s2 += a * a;
                }
            }
            s1 = block_reduce_sum(s1);
            s2 = block_reduce_sum(s2);
            if (tid == 0) {
                float* o = part + ((size_t)sg * p.chunks + ch) * 3;
                o[0] = m;
                o[1] = s1 / (float)cnt;
                o[2] = fmaxf(s2 - s1 * (s1 / (float)cnt), 0.0f);
            }
        }
    }
}

/* The statistics of group sg from its chunks' partials, merged in f64 (Chan): the mean as f32 hi + lo and rstd =
 * 1/sqrt(M2/N + eps). groupnorm_f32 and groupnorm_affine_f32 both call it: the same values bit for bit. */
static __device__ void gn_merge(const float* __restrict__ part, int sg, const GroupnormParams& p, float& hi,
                                float& lo, float& rstd) {
    const int glen = (p.c / p.groups) * p.hw;
    const float* pp = part + (size_t)sg * p.chunks * 3;
    const double total = (double)glen;
    double mean = 0.0;
    for (int i = 0; i < p.chunks; i++) {
        const double cnt = (double)min(p.chunk, glen - i * p.chunk);
        mean += cnt * ((double)pp[3 * i] + (double)pp[3 * i + 1]);
    }
    mean /= total;
    double m2 = 0.0;
    for (int i = 0; i < p.chunks; i++) {
        const double cnt = (double)min(p.chunk, glen - i * p.chunk);
        const double dm = (double)pp[3 * i] + (double)pp[3 * i + 1] - mean;
        m2 += (double)pp[3 * i + 2] + cnt * dm * dm;
    }
    hi = (float)mean;
    lo = (float)(mean - (double)hi);
    rstd = (float)(1.0 / sqrt(m2 / total + (double)p.eps));
}

extern "C" __global__ void groupnorm_f32(const float* __restrict__ x, const float* __restrict__ part,
                                         const float* __restrict__ gamma, const float* __restrict__ beta,
                                         float* __restrict__ y, GroupnormParams p) {
    __shared__ float st[3]; /* mean hi, mean lo, rstd of the current group */
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
    const int cg = p.c / p.groups, hw = p.hw;
    const int glen = cg * hw;
    const int ngroups = p.n * p.groups;
    const bool silu = p.silu != 0;
    const bool vec = aligned16(x) && aligned16(y) && hw % 4 == 0 && p.chunk % 4 == 0;
    for (int sg = (int)blockIdx.y; sg < ngroups; sg += (int)gridDim.y) {
        const int c0 = (sg % p.groups) * cg; /* first channel of the group */
        for (int ch = (int)blockIdx.x; ch < p.chunks; ch += (int)gridDim.x) {
            if (tid == 0) gn_merge(part, sg, p, st[0], st[1], st[2]);
            __syncthreads();
            const float hi = st[0], lo = st[1], rstd = st[2];
            const int start = ch * p.chunk;
            const int cnt = min(p.chunk, glen - start);
            const size_t off = (size_t)sg * glen + start;
            if (vec) {
                for (int i = 4 * tid; i < cnt; i += 4 * nt) {
                    const int c = c0 + (start + i) / hw;
                    const float scale = rstd * gamma[c], b = beta[c];
                    float4 v = gld(reinterpret_cast<const float4*>(x + off + i));
                    v.x = groupnorm_apply(v.x, hi, lo, scale, b, silu);
                    v.y = groupnorm_apply(v.y, hi, lo, scale, b, silu);
                    v.z = groupnorm_apply(v.z, hi, lo, scale, b, silu);
                    v.w = groupnorm_apply(v.w, hi, lo, scale, b, silu);
                    gst(reinterpret_cast<float4*>(y + off + i), v);
                }
            } else {
                for (int i = tid; i < cnt; i += nt) {
                    const int c = c0 + (start + i) / hw;
                    gst(y + off + i, groupnorm_apply(gld(x + off + i), hi, lo, rstd * gamma[c], beta[c], silu));
                }
            }
            __syncthreads(); /* st is rewritten for the next chunk */
        }
    }
}

/* One thread per (image, channel): its group's statistics (gn_merge, as groupnorm_f32) and the channel's affine,
 * for a conv that normalises its input as it loads it (Conv2dParams.norm). n·c·4 floats written; the merge repeats
 * for each of a group's c / groups channels (chunks ≤ 32 partials each at the decoder's largest stage). */
extern "C" __global__ void groupnorm_affine_f32(const float* __restrict__ part, const float* __restrict__ gamma,
                                                const float* __restrict__ beta, float* __restrict__ rec,
                                                GroupnormParams p) {
    const int cg = p.c / p.groups, total = p.n * p.c;
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < total; i += (int)(gridDim.x * blockDim.x)) {
        const int img = i / p.c, ch = i - img * p.c;
        float hi, lo, rstd;
        gn_merge(part, img * p.groups + ch / cg, p, hi, lo, rstd);
        gst(reinterpret_cast<float4*>(rec) + i, make_float4(hi, lo, rstd * gamma[ch], beta[ch]));
    }
}
