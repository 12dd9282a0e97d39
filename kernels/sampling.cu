/*
 * sampling.cu: classifier-free guidance, temperature, top-k, top-p and the categorical draw, one token per image
 * (spec §5.2-5.3), reproducing backend::cpu::sampling (src/sample/sampler.rs, src/sample/rng.rs) draw for draw.
 *
 * Entry points (kernels/llamagen_kernels.h):
 *   sampling_f32 / sampling_bf16(logits [rows, V], image_index i32 [B], step, tokens i32 [rows], work, SamplingParams)
 *   sampling_uniform(image_index [n], step, words u32 [n, 4], u f32 [n]): the Philox stream alone (tests, GPU checks)
 * logits are widened to f32; rows = 2B with CFG (cond rows first) else B. The per-run values (RNG step, cfg_active,
 * seed) come from `step` in device memory, so a captured graph replays with fresh random numbers. The token of image
 * i goes to tokens[i] and, with CFG, to tokens[B + i] too.
 *
 * Exactness: the GPU token equals the CPU token for the same (seed, image index, step), not "almost": every f32
 * operation the CPU performs is performed here on the same values in the same order wherever the order matters:
 *   - cfg mix, division by max(τ, 1e-5), the polynomial e^x of sampler::exp_nonpos, with __fmul_rn/__fadd_rn so
 *     nvcc cannot contract them into FMAs (the CPU never fuses);
 *   - top-k: the exact k-th largest order key by a 4-pass radix select (8-bit digits, shared-memory histograms of
 *     integer counts, so no sort of V and no order dependence), survivors kept by !(z < t) as the CPU does;
 *   - the draw: survivors compacted in vocabulary order (block scan), weights exp(z − max), partial sums over blocks
 *     of 64 survivors in the CPU's 8-lane order (one thread per block), then the block sums, the running sum and the
 *     scan inside the chosen block sequentially in one thread, exactly like sampler::sample; the rounding fallback
 *     (last survivor with nonzero weight) is a parallel max-index reduction;
 *   - top-p: the softmax normaliser in the CPU's 8-lane order (8 sequential chains), a bitonic sort of the survivors
 *     by (descending key, ascending id) in the workspace (the CPU's tie order), then the f64 running sum in sorted
 *     order in one thread until it exceeds p, exactly sampler::nucleus; survivors are then re-compacted from z with
 *     the cut (key, id) as a predicate. The sequential f64 loop stops at the cut; top-p is off at every released
 *     entry point (spec §5.3), so this path is built for exactness, not speed.
 *   NaN logits are handled without faults but not bit-matched (the GPU canonicalises NaN payloads and signs, which
 *   the order keys see).
 *
 * Design: one block per image (grid-stride over images), blockDim >= 32 (the launcher: ceil(V/16) rounded up to a
 * warp, 32..1024). Workspace per image, u32 words: z [V] f32, survivor values/weights [V], survivor ids [V], top-p
 * values [V], sort keys [P] u64 with P = next power of two >= V (sampling_workspace_len in the launcher). Dynamic
 * shared memory: ceil(V/64) floats of block sums. Static shared memory: 256-bin histogram, scan partials, 64 weights.
 *
 * Napkin math (V = 16384, batch 8 with CFG = 16 logit rows; H100 SXM 3.35 TB/s, bf16 logits):
 *   HBM: logits 16·16384·2 B = 512 KiB → 0.16 µs at the roofline; the workspace (8 × 384 KiB = 3 MiB, z written
 *   once, read ~7 times) stays in the 50 MB L2. FLOPs are negligible (~50 per element for the exp). 8 blocks on 132
 *   SMs: the time is latency, ~15 block barriers plus the sequential parts in one thread (2 × 256 block sums, ≤ 64
 *   weights): estimated 5-10 µs with top-k, on top of the ~3 µs launch (a graph hides the launch). Top-p adds a
 *   105-stage bitonic sort of 16384 keys in L2 (~50 µs) and a sequential f64 loop up to the cut.
 * Measured: not yet on a GPU.
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

namespace {

constexpr int DRAW_BLOCK = 64; /* survivors per partial sum: sampler.rs BLOCK */

/* ---- bit-exact mirrors of sampler.rs and rng.rs ------------------------------------------------------------------ */

__device__ __forceinline__ uint32_t ord_key(float x) {
    const uint32_t b = __float_as_uint(x + 0.0f);
    return b ^ ((uint32_t)((int32_t)b >> 31) | 0x80000000u);
}

__device__ __forceinline__ float from_key(uint32_t k) { return __uint_as_float((k >> 31) ? (k & 0x7fffffffu) : ~k); }

/* !(x < t): ties with the threshold survive (and NaN compares false). */
__device__ __forceinline__ bool kept_by(float x, float t) { return !(x < t); }

__device__ __forceinline__ float pow2i(int32_t e) { return __uint_as_float(((uint32_t)e + 127u) << 23); }

/* sampler::exp_nonpos, operation for operation. */
__device__ __forceinline__ float exp_nonpos(float x) {
    const float ROUND = 12582912.0f, LN2_HI = 0.69314575f, LN2_LO = 1.4286068e-6f;
    const float LOG2E = 1.44269504088896340736f;
    const float t = __fadd_rn(__fmul_rn(x, LOG2E), ROUND);
    const float n = __fsub_rn(t, ROUND);
    const float r = __fsub_rn(__fsub_rn(x, __fmul_rn(n, LN2_HI)), __fmul_rn(n, LN2_LO));
    float p = 1.0f / 5040.0f;
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 720.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 120.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 24.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f / 6.0f);
    p = __fadd_rn(__fmul_rn(p, r), 0.5f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f);
    p = __fadd_rn(__fmul_rn(p, r), 1.0f);
    const int32_t ni = (int32_t)(__float_as_uint(t) - __float_as_uint(ROUND));
    const int32_t n1 = ni >> 1;
    const float y = __fmul_rn(__fmul_rn(p, pow2i(n1)), pow2i((int32_t)((uint32_t)ni - (uint32_t)n1)));
    return x < -104.0f ? 0.0f : y;
}

struct Philox4 {
    uint32_t w[4];
};

/* rng::philox4x32_10. */
__device__ __forceinline__ Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                                 uint32_t k1) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += W0;
            k1 += W1;
        }
        const uint32_t hi0 = __umulhi(M0, c0), lo0 = M0 * c0;
        const uint32_t hi1 = __umulhi(M1, c2), lo1 = M1 * c2;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    Philox4 o;
    o.w[0] = c0;
    o.w[1] = c1;
    o.w[2] = c2;
    o.w[3] = c3;
    return o;
}

/* rng::uniform for image `index` (an i32 widened to u64 with its sign, as `index as u64` does on the CPU). */
__device__ __forceinline__ Philox4 image_stream(const StepState* step, int32_t index) {
    return philox4x32_10(step->step, 0u, (uint32_t)index, index < 0 ? 0xffffffffu : 0u, step->seed_lo, step->seed_hi);
}
__device__ __forceinline__ float uniform_of(const Philox4& w) { return (float)(w.w[0] >> 8) * (1.0f / 16777216.0f); }

/* ---- block collectives (blockDim.x >= 1, 1-D blocks) --------------------------------------------------------------- */

/* Exclusive prefix sum of one int per thread in thread order; *total gets the sum. Every thread must call it. */
__device__ int block_exclusive_scan(int v, int* total) {
    __shared__ int warp_sums[32];
    __shared__ int grand;
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
    const int lane = tid & 31, warp = tid >> 5, nwarps = (nt + 31) >> 5;
    const int lanes = min(32, nt - warp * 32);
    const unsigned mask = lanes >= 32 ? FULL_MASK : ((1u << lanes) - 1u);
    int incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int other = __shfl_up_sync(mask, incl, o);
        if (lane >= o) incl += other;
    }
    if (lane == lanes - 1) warp_sums[warp] = incl;
    __syncthreads();
    if (tid == 0) {
        int run = 0;
        for (int w = 0; w < nwarps; w++) {
            const int s = warp_sums[w];
            warp_sums[w] = run;
            run += s;
        }
        grand = run;
    }
    __syncthreads();
    const int r = warp_sums[warp] + incl - v;
    *total = grand;
    __syncthreads(); /* warp_sums and grand are rewritten by the next call */
    return r;
}

/* Writes the values and ids of every vocabulary entry with pred(i, z[i]) to sv/si in vocabulary order; returns the
 * count. Rounds of blockDim.x consecutive entries, one per thread, each placed by a block scan: every read of z and
 * every write of sv/si is one contiguous span per warp (a slice per thread would have each warp instruction touch
 * 32 sectors for 32 floats). V / blockDim.x rounds (16 at V = 16384 with the launcher's 1024 threads). */
template <typename Pred>
__device__ int compact(const float* z, int V, Pred pred, float* sv, int32_t* si) {
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
    int base = 0;
    for (int r0 = 0; r0 < V; r0 += nt) {
        const int i = r0 + tid;
        const float x = i < V ? gld(z + i) : 0.0f;
        const bool keep = i < V && pred(i, x);
        int total;
        const int pos = block_exclusive_scan(keep ? 1 : 0, &total);
        if (keep) {
            gst(sv + base + pos, x);
            gst(si + base + pos, (int32_t)i);
        }
        base += total;
    }
    __syncthreads();
    return base;
}

/* Maximum ignoring NaN (lane_max), over v[0..n). */
__device__ float block_max_of(const float* v, int n) {
    float m = -INFINITY;
    for (int j = (int)threadIdx.x; j < n; j += (int)blockDim.x) m = v[j] > m ? v[j] : m;
    return block_reduce_max(m);
}

struct TopK {
    bool on;
    float thr;
    __device__ bool operator()(int, float x) const { return !on || kept_by(x, thr); }
};
struct TopKP {
    TopK k;
    uint32_t key_c, id_c;
    __device__ bool operator()(int i, float x) const {
        const uint32_t key = ord_key(x);
        return k(i, x) && (key > key_c || (key == key_c && (uint32_t)i <= id_c));
    }
};

/* The exact k-th largest order key of z[0..V) (1 <= k < V): four passes of 8-bit digits from the top, each a
 * shared-memory histogram of the entries that match the digits found so far. */
__device__ uint32_t radix_select_kth(const float* z, int V, int k) {
    __shared__ uint32_t hist[256];
    __shared__ uint32_t s_digit, s_rank;
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
    uint32_t prefix = 0, mask = 0, rank = (uint32_t)k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = tid; b < 256; b += nt) hist[b] = 0;
        __syncthreads();
        for (int i = tid; i < V; i += nt) {
            const uint32_t key = ord_key(gld(z + i));
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid < 32) {
            /* Lane l holds bins 255-8l down to 248-8l; an inclusive scan from the top finds the lane holding the
             * rank-th largest, which walks its 8 bins. */
            uint32_t local = 0;
#pragma unroll
            for (int j = 0; j < 8; j++) local += hist[255 - 8 * tid - j];
            uint32_t incl = local;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const uint32_t other = __shfl_up_sync(FULL_MASK, incl, o);
                if (tid >= o) incl += other;
            }
            const uint32_t excl = incl - local;
            if (excl < rank && rank <= incl) {
                uint32_t acc = excl;
                for (int j = 0; j < 8; j++) {
                    const int b = 255 - 8 * tid - j;
                    const uint32_t c = hist[b];
                    if (rank <= acc + c) {
                        s_digit = (uint32_t)b;
                        s_rank = rank - acc;
                        break;
                    }
                    acc += c;
                }
            }
        }
        __syncthreads();
        prefix |= s_digit << shift;
        mask |= 255u << shift;
        rank = s_rank;
        __syncthreads(); /* s_digit/s_rank and hist are rewritten by the next pass */
    }
    return prefix;
}

/* Bitonic sort, ascending, of buf[0..P) (P a power of two) in global memory: the thread owning the lower index of
 * each pair exchanges it, and a barrier separates the stages. */
__device__ void bitonic_sort(unsigned long long* buf, uint32_t P) {
    for (uint32_t k = 2; k <= P; k <<= 1) {
        for (uint32_t j = k >> 1; j > 0; j >>= 1) {
            for (uint32_t i = threadIdx.x; i < P; i += blockDim.x) {
                const uint32_t l = i ^ j;
                if (l > i) {
                    const unsigned long long a = buf[i], b = buf[l];
                    if ((a > b) == ((i & k) == 0)) {
                        buf[i] = b;
                        buf[l] = a;
                    }
                }
            }
            __syncthreads();
        }
    }
}

/* sampler::nucleus on the n survivors sv/si (values, vocabulary order). Returns the number kept and the cut
 * (key, id) of the last kept entry in sorted order; keep == n means nothing is removed. */
__device__ int nucleus_cut(const float* sv, const int32_t* si, int n, float top_p, float* e, unsigned long long* buf,
                           uint32_t* key_c, uint32_t* id_c) {
    __shared__ float chains[8];
    __shared__ float s_inv;
    __shared__ int s_keep;
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;
    const float top = block_max_of(sv, n);
    uint32_t P = 1;
    while (P < (uint32_t)n) P <<= 1;
    for (int j = tid; j < (int)P; j += nt) {
        if (j < n) {
            e[j] = exp_nonpos(sv[j] - top);
            buf[j] = ((unsigned long long)(~ord_key(sv[j])) << 32) | (uint32_t)si[j];
        } else {
            buf[j] = ~0ull;
        }
    }
    __syncthreads();
    /* The normaliser in lane_sum_by's order: 8 interleaved chains, their fixed combination, then the tail. */
    const int n8 = n - n % 8;
    if (tid < 8) {
        float acc = 0.0f;
        for (int j = tid; j < n8; j += 8) acc += e[j];
        chains[tid] = acc;
    }
    __syncthreads();
    if (tid == 0) {
        float s = ((chains[0] + chains[4]) + (chains[1] + chains[5])) + ((chains[2] + chains[6]) + (chains[3] + chains[7]));
        for (int j = n8; j < n; j++) s += e[j];
        s_inv = 1.0f / s;
    }
    bitonic_sort(buf, P);
    __syncthreads(); /* publishes s_inv (the sort has no barrier at all when P = 1) */
    const float inv = s_inv;
    for (int j = tid; j < n; j += nt) e[j] = __fmul_rn(exp_nonpos(from_key(~(uint32_t)(buf[j] >> 32)) - top), inv);
    __syncthreads();
    if (tid == 0) {
        /* torch.cumsum in double on the CPU, compared in f32: sequential, as the CPU does. */
        double cum = 0.0;
        int keep = n;
        for (int j = 0; j < n; j++) {
            cum += (double)e[j];
            if ((float)cum > top_p) {
                keep = j + 1;
                break;
            }
        }
        s_keep = keep;
    }
    __syncthreads();
    const int keep = s_keep;
    const unsigned long long c = buf[keep - 1];
    *key_c = ~(uint32_t)(c >> 32);
    *id_c = (uint32_t)c;
    __syncthreads(); /* s_keep, chains, s_inv are rewritten by the next image */
    return keep;
}

template <typename T>
__device__ void sampling_impl(const T* __restrict__ logits, const int32_t* __restrict__ image_index,
                              const StepState* __restrict__ step, int32_t* __restrict__ tokens,
                              uint32_t* __restrict__ work, const SamplingParams& p) {
    __shared__ float blk_w[DRAW_BLOCK];
    __shared__ float lane8[1024]; /* the partial sums' per-lane accumulators */
    __shared__ int32_t blk_id[DRAW_BLOCK];
    __shared__ int s_block, s_token, s_end, s_last;
    __shared__ float s_cum, s_target;
    DYNAMIC_SHARED(float, bsum);

    const int V = p.vocab, B = p.images, tid = (int)threadIdx.x, nt = (int)blockDim.x;
    const bool cfg = p.rows == 2 * B;
    const bool mix = cfg && step->cfg_active != 0;
    const float tau = fmaxf(p.temperature, 1e-5f);
    uint32_t P = 1;
    while (P < (uint32_t)V) P <<= 1;
    const size_t stride = 4 * (size_t)V + 2 * (size_t)P;

    for (int img = (int)blockIdx.x; img < B; img += (int)gridDim.x) {
        float* z = reinterpret_cast<float*>(work + (size_t)img * stride);
        float* sv = z + V;
        int32_t* si = reinterpret_cast<int32_t*>(sv + V);
        float* e = reinterpret_cast<float*>(si + V);
        unsigned long long* buf = reinterpret_cast<unsigned long long*>(e + V);

        /* Guided, temperature-scaled logits and their maximum. */
        const T* cond = logits + (size_t)img * V;
        const T* unc = logits + (size_t)(B + img) * V;
        float m = -INFINITY;
        for (int i = tid; i < V; i += nt) {
            float l = to_float(gld(cond + i));
            if (mix) {
                const float u = to_float(gld(unc + i));
                l = __fadd_rn(u, __fmul_rn(p.cfg_scale, __fsub_rn(l, u)));
            }
            const float x = __fdiv_rn(l, tau);
            gst(z + i, x);
            m = x > m ? x : m;
        }
        float mx = block_reduce_max(m); /* its barriers also publish z */

        TopK topk;
        topk.on = p.top_k > 0 && p.top_k < V;
        topk.thr = topk.on ? from_key(radix_select_kth(z, V, p.top_k)) : 0.0f;
        int n = compact(z, V, topk, sv, si);

        if (p.top_p < 1.0f) {
            TopKP pred;
            pred.k = topk;
            const int keep = nucleus_cut(sv, si, n, p.top_p, e, buf, &pred.key_c, &pred.id_c);
            if (keep < n) n = compact(z, V, pred, sv, si);
            mx = block_max_of(sv, n);
        }

        /* Weights, then partial sums over blocks of 64 survivors in lane_sum's order: 8 threads per block, thread l
         * summing w[c + l] over c as the CPU's lane l does, so each group of 8 reads 32 contiguous bytes per step
         * (one thread per block would read 256-byte strides); the 8 lane sums combine in lane_sum's tree. */
        for (int j = tid; j < n; j += nt) gst(sv + j, exp_nonpos(gld(sv + j) - mx));
        __syncthreads();
        const int nblk = ceil_div(n, DRAW_BLOCK), groups = nt / 8;
        for (int b0 = 0; b0 < nblk; b0 += groups) {
            const int g = tid / 8, l = tid % 8, b = b0 + g;
            const bool on = g < groups && b < nblk;
            const float* w = sv + (size_t)b * DRAW_BLOCK;
            const int len = on ? min(DRAW_BLOCK, n - b * DRAW_BLOCK) : 0, len8 = len - len % 8;
            float acc = 0.0f;
            for (int c = 0; c < len8; c += 8) acc += gld(w + c + l);
            lane8[tid] = acc;
            __syncthreads();
            if (on && l == 0) {
                const float* a = lane8 + tid;
                float s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
                for (int c = len8; c < len; c++) s += w[c];
                bsum[b] = s;
            }
            __syncthreads();
        }

        /* sampler::sample: the running sum over the blocks, sequential like the CPU's. */
        if (tid == 0) {
            float total = 0.0f;
            for (int b = 0; b < nblk; b++) total += bsum[b];
            const float target = uniform_of(image_stream(step, image_index[img])) * total;
            float cum = 0.0f;
            int found = -1;
            for (int b = 0; b < nblk; b++) {
                if (target < cum + bsum[b]) {
                    found = b;
                    break;
                }
                cum += bsum[b];
            }
            s_block = found;
            s_cum = cum;
            s_target = target;
            s_token = -1;
            s_end = n;
            s_last = -1;
        }
        __syncthreads();
        const int found = s_block;
        if (found >= 0) {
            const int base = found * DRAW_BLOCK, len = min(DRAW_BLOCK, n - base);
            for (int j = tid; j < len; j += nt) {
                blk_w[j] = sv[base + j];
                blk_id[j] = si[base + j];
            }
            __syncthreads();
            if (tid == 0) {
                float cum = s_cum;
                const float target = s_target;
                for (int j = 0; j < len; j++) {
                    const float x = blk_w[j];
                    cum += x;
                    if (x > 0.0f && target < cum) {
                        s_token = blk_id[j];
                        break;
                    }
                }
                s_end = base + len;
            }
            __syncthreads();
        }
        if (s_token < 0) {
            /* Rounding left the target past the end: the last survivor with nonzero weight before `end`. */
            const int end = s_end;
            int last = -1;
            for (int j = tid; j < end; j += nt)
                if (sv[j] > 0.0f) last = j;
            if (last >= 0) atomicMax(&s_last, last);
            __syncthreads();
            if (tid == 0) s_token = si[s_last >= 0 ? s_last : 0];
            __syncthreads();
        }
        if (tid == 0) {
            tokens[img] = s_token;
            if (cfg) tokens[B + img] = s_token;
        }
        __syncthreads(); /* shared state and the workspace are reused by the next image */
    }
}

} // namespace

extern "C" __global__ __launch_bounds__(1024) void sampling_f32(const float* __restrict__ logits, const int32_t* __restrict__ image_index,
                                        const StepState* __restrict__ step, int32_t* __restrict__ tokens,
                                        uint32_t* __restrict__ work, SamplingParams p) {
    sampling_impl<float>(logits, image_index, step, tokens, work, p);
}

extern "C" __global__ __launch_bounds__(1024) void sampling_bf16(const __nv_bfloat16* __restrict__ logits,
                                         const int32_t* __restrict__ image_index, const StepState* __restrict__ step,
                                         int32_t* __restrict__ tokens, uint32_t* __restrict__ work, SamplingParams p) {
    sampling_impl<__nv_bfloat16>(logits, image_index, step, tokens, work, p);
}

extern "C" __global__ void sampling_uniform(const int32_t* __restrict__ image_index, const StepState* __restrict__ step,
                                            uint32_t* __restrict__ words, float* __restrict__ u, int32_t n) {
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += (int)(gridDim.x * blockDim.x)) {
        const Philox4 w = image_stream(step, image_index[i]);
        for (int j = 0; j < 4; j++) words[4 * i + j] = w.w[j];
        u[i] = uniform_of(w);
    }
}
