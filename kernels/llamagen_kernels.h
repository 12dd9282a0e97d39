/*
 * llamagen_kernels.h: the one header that CUDA, the CPU emulator and Rust agree on.
 *
 *   - kernel parameter structs (plain C, 4-byte scalars only);
 *   - the kernel table: every `extern "C"` kernel with its full parameter list, X(name, (params));
 *   - the emulator's cuLaunchKernel-shaped launch API (kernels/emu/runtime.cpp implements it).
 *
 * Who reads it:
 *   - nvcc and the emulator's g++ (every .cu file in kernels/ includes it): the table expands to the kernel prototypes, so a
 *     definition whose parameters differ from its table entry fails to compile ("conflicting declaration of C
 *     function") on both compilers;
 *   - kernels/emu/registry.cpp: the table expands to the launch registry (name -> trampoline + argument signature);
 *   - build.rs: parses the structs and the table (the restricted syntax below) and generates the Rust mirrors
 *     (#[repr(C)] structs, one typed launcher per kernel) plus a C++ file of sizeof/offsetof values that a test
 *     compares with the Rust layouts. bindgen is not used (it needs libclang); this parser is the hand-checked
 *     equivalent, and the layout test is the check.
 *
 * Restricted syntax (build.rs panics with the offending line otherwise):
 *   - structs: `typedef struct Name { <scalar> field; ... } Name;` with <scalar> one of int32_t, uint32_t, float;
 *   - table entries: `X(name, (type arg, ...))`, types: [const] T* [__restrict__] with T one of float,
 *     __nv_bfloat16, int32_t, uint32_t or a struct defined here (a device pointer), or a scalar type above, or a
 *     struct defined here (passed by value).
 */
#ifndef LLAMAGEN_KERNELS_H
#define LLAMAGEN_KERNELS_H

#include <stdint.h>

/* ---------------------------------------------------------------------------------------------------------------
 * Kernel parameter structs (passed by value as one kernel argument)
 * ------------------------------------------------------------------------------------------------------------- */

/* rmsnorm_*: rows of length d, one block per row. */
typedef struct RmsnormParams {
    int32_t rows;
    int32_t d;
    float eps;
} RmsnormParams;

/* swiglu_*: input rows [2f] = a | b, output rows [f]. */
typedef struct SwigluParams {
    int32_t rows;
    int32_t f;
} SwigluParams;

/* rope_*: qkv [batch, len, 3·heads·head_dim] (q | k | v) at absolute positions step->pos + l; rotated q
 * [batch, len, heads·head_dim]; rotated k and v into the KV cache [layers][k|v][kv_batch][heads][seq][head_dim] of
 * `layer`. table [table_rows, head_dim/2, 2] (cos, sin). per_row != 0: sequence b goes to cache row rows[2b] at
 * positions rows[2b + 1] + l instead (continuous batching); `rows` is not read otherwise. */
typedef struct RopeParams {
    int32_t batch;
    int32_t len;
    int32_t heads;
    int32_t head_dim;
    int32_t kv_batch;
    int32_t seq;
    int32_t layer;
    int32_t table_rows;
    int32_t per_row;
} RopeParams;

/* embed_*: ids [rows] -> rows of table [n, d]. */
typedef struct EmbedParams {
    int32_t rows;
    int32_t n;
    int32_t d;
} EmbedParams;

/* codebook_f32 / quantize_f32: codes [n·hw] <-> latent [n, dim, hw], normalised codebook [size, dim]. */
typedef struct CodebookParams {
    int32_t n;
    int32_t dim;
    int32_t hw;
    int32_t size;
} CodebookParams;

/* groupnorm_stats_f32 / groupnorm_f32: x [n, c, hw] in `groups` groups of (c/groups)·hw contiguous values, each
 * split into `chunks` chunks of `chunk` values (one block each); silu != 0 fuses x·sigmoid(x).
 * groupnorm_affine_f32 (after the stats): the records rec [n, c, 4] = (mean hi, mean lo, rstd·gamma, beta) of each
 * (image, channel), which a conv's CONV_NORM_* prologue applies; one thread per record. */
typedef struct GroupnormParams {
    int32_t n;
    int32_t c;
    int32_t hw;
    int32_t groups;
    int32_t chunk;
    int32_t chunks;
    float eps;
    int32_t silu;
} GroupnormParams;

/* attention_*: q [batch, len, heads·head_dim] at positions pos..pos+len (pos = step->pos) over the KV cache
 * [layers][k|v][cache_batch][heads][seq][head_dim]; mask [batch, mask_len] (1 = visible) or mask_len = 0 for none.
 * attention_decode splits each (query, head) over `splits` blocks of `split_keys` keys (splits = 1: no workspace, no
 * combine); attention_tiled ignores both. scale = 1/sqrt(head_dim). per_row != 0: sequence b reads cache row rows[2b]
 * at positions rows[2b + 1]..(+len) instead of (b, step->pos), as in rope_*. */
typedef struct AttentionParams {
    int32_t batch;
    int32_t len;
    int32_t heads;
    int32_t head_dim;
    int32_t seq;
    int32_t cache_batch;
    int32_t layer;
    int32_t mask_len;
    int32_t split_keys;
    int32_t splits;
    float scale;
    int32_t per_row;
} AttentionParams;

/* sampling_*: one token per image from logits [rows, vocab], rows = 2·images with CFG (cond rows first) else
 * images. Fields as sample::sampler::SamplingParams; top_k 0 or >= vocab keeps all, top_p 1 switches it off. */
typedef struct SamplingParams {
    int32_t images;
    int32_t vocab;
    int32_t rows;
    float cfg_scale;
    float temperature;
    int32_t top_k;
    float top_p;
} SamplingParams;
/* gemm_tiled_*_bf16, gemm_small_*: y[m, n] = x[m, k] · w[n, k]ᵀ (+ r[m, n] when has_residual != 0), every matrix
 * row-major and contiguous (w is nn.Linear's [out, in] weight). r may be null when has_residual == 0. */
typedef struct GemmParams {
    int32_t m;
    int32_t n;
    int32_t k;
    int32_t has_residual;
    int32_t k_splits; /* tiled kernels: > 1 = split-K, grid.z = k_splits blocks of k_chunk k each writing f32
                         partial tiles to `part` ([k_splits][m][n]), summed by gemm_splitk_reduce_bf16; else 1 */
    int32_t k_chunk;  /* k per split, a multiple of 32 (the pipeline stage) */
    int32_t swiglu;   /* bf16 kernels and gemm_small_f32: w = W1 | W3 stacked ([2f, k], n = 2f), y = silu(x·W1ᵀ)·(x·W3ᵀ) [m, f]; the GEMM's
                         columns are W1 and W3 rows interleaved in groups of 4 (gemm.cu swiglu_row), `part` holds
                         them in that order; f % 4 == 0, no residual */
} GemmParams;

/* gemm_strided_f32: for b < batch, c[b](m, n) = alpha · Σ_k a[b](m, k) · b[b](k, n) + bias[m] + r[b](m, n), with
 * element strides X(i, j) = X[b·X_sb + i·X_s<i> + j·X_s<j>]; r shares c's strides and may be c itself; bias and r
 * may be null when has_bias / has_residual are 0. */
typedef struct GemmStridedParams {
    int32_t m;
    int32_t n;
    int32_t k;
    int32_t batch;
    int32_t a_sm;
    int32_t a_sk;
    int32_t b_sk;
    int32_t b_sn;
    int32_t c_sm;
    int32_t c_sn;
    int32_t a_sb;
    int32_t b_sb;
    int32_t c_sb;
    float alpha;
    int32_t has_bias;
    int32_t has_residual;
} GemmStridedParams;

/* vq_attention_softmax_f32: in-place softmax of `rows` contiguous rows of `len` floats. */
typedef struct SoftmaxRowsParams {
    int32_t rows;
    int32_t len;
} SoftmaxRowsParams;
/* The arithmetic of the tensor-core convs (conv2d_tc_f32, upsample_conv_tc_f32), f32 in and out, f32 accumulation. */
#define CONV_TC_TF32 1   /* operands rounded to TF32 (10 mantissa bits), mma m16n8k8 */
#define CONV_TC_BF16 2   /* operands rounded to bf16 (7 mantissa bits), mma m16n8k16: twice the TF32 rate */
#define CONV_TC_TF32X3 3 /* each operand split into TF32 big + small, three m16n8k8: f32-level error */

/* conv2d_f32: NCHW cross-correlation (torch Conv2d), weight (c_out, c_in, kh, kw), kh, kw <= 3 (any size works, the
 * 1x1 and 3x3 cases are specialised); output (n, c_out, oh, ow) computed by the launcher from the padding. */
typedef struct Conv2dParams {
    int32_t n;
    int32_t c_in;
    int32_t h;
    int32_t w;
    int32_t c_out;
    int32_t kh;
    int32_t kw;
    int32_t stride;
    int32_t pad_top;
    int32_t pad_left;
    int32_t oh;
    int32_t ow;
    int32_t has_bias;     /* 0: the bias pointer is not read */
    int32_t has_residual; /* 0: the residual pointer is not read */
    int32_t tc_math;      /* conv2d_tc_f32 only: CONV_TC_*; the SIMT kernels ignore it */
    int32_t halo_rw;      /* 0: gather each tap from global memory; else the halo-tile path with tiles of halo_rw
                             columns (3x3 stride 1 pad 1, c_in % 16 == 0, w in {8, 16, 32} or w % 32 == 0:
                             backend::cuda::conv::halo_width) */
    int32_t norm;         /* CONV_NORM_*: GroupNorm (then swish) of the input applied as the halo tile lands, from the
                             `norm` records (hi, lo, scale, shift) per (image, input channel) that groupnorm_affine_f32
                             writes; the halo path only (the kernels trap otherwise) */
} Conv2dParams;
#define CONV_NORM_NONE 0
#define CONV_NORM_GROUPNORM 1      /* x' = ((x - hi) - lo)·scale + shift, as groupnorm_f32 computes it */
#define CONV_NORM_GROUPNORM_SILU 2 /* then x'·sigmoid(x') */

/* upsample_conv_f32: nearest x2 then 3x3 pad-1 conv, input (n, c_in, h, w), output (n, c_out, 2h, 2w); weights
 * folded per output phase (backend::cuda::conv::upsample_fold_weights). */
typedef struct UpsampleConvParams {
    int32_t n;
    int32_t c_in;
    int32_t h;
    int32_t w;
    int32_t c_out;
    int32_t has_bias;
    int32_t tc_math;     /* upsample_conv_tc_f32 only, as in Conv2dParams */
    int32_t halo_rw;     /* as in Conv2dParams (on the low-resolution input) */
} UpsampleConvParams;

/* The values that change from one run of a graph to the next, kept in device memory: the host writes them before
 * each run (one small copy on the stream), so a captured CUDA graph replays without being re-recorded. Kernels that
 * depend on them (rope, attention, sampling) take `const StepState* step`; their launch configuration never does
 * (grids are sized for the longest sequence and idle blocks exit). Mirrors ops::StepParams. */
typedef struct StepState {
    int32_t pos;        /* first sequence position covered by this run (0 = the prefill) */
    uint32_t step;      /* generation step, 0 = image token 0: the RNG counter */
    uint32_t cfg_active; /* 1 while classifier-free guidance is on (--cfg-interval switches it off) */
    uint32_t seed_lo;   /* run seed, low and high words: the key of every image's RNG stream */
    uint32_t seed_hi;
} StepState;

/* gelu_*: n elements. */
typedef struct ElementwiseParams {
    int32_t n;
} ElementwiseParams;

/* copy_rows: rows of len 16-bit units, from src + r·src_stride to dst + r·dst_stride (strides in 16-bit units). */
typedef struct CopyRowsParams {
    int32_t rows;
    int32_t len;
    int32_t src_stride;
    int32_t dst_stride;
} CopyRowsParams;

/* Emulator launch options (cuemu_launch_ex). */
typedef struct CuemuLaunchOptions {
    /* Fiber order between sync points: -1 = CUEMU_SCHED from the environment (default forward),
     * 0 = forward, 1 = reverse, 2 = shuffle (seeded by block index and `seed`). */
    int32_t sched;
    uint32_t seed;
} CuemuLaunchOptions;

/* The kernel lab's counters since cuemu_stats_enable(1) (kernels/emu/stats.cpp), saturating at 2^32 - 1. Only the
 * instrumented accesses count: cp.async, load16/store16 (common.cuh), __ldg, ldmatrix; plain loads and stores don't. */
typedef struct CuemuStats {
    uint32_t launches;             /* kernel launches counted */
    uint32_t mma_bf16;             /* mma.m16n8k16 bf16 (4096 FLOPs each) */
    uint32_t mma_tf32;             /* mma.m16n8k8 tf32 (2048 FLOPs each) */
    uint32_t ldsm_phases;          /* ldmatrix 8x8 matrices read */
    uint32_t ldsm_wavefronts;      /* ... and the shared-memory passes they took (= phases when conflict-free) */
    uint32_t ldsm_worst_ways;      /* the worst bank conflict of any one matrix */
    uint32_t global_requests;      /* warp-level instrumented global accesses */
    uint32_t global_sectors;       /* 32-byte sectors they touched */
    uint32_t global_ideal_sectors; /* the fewest sectors holding the distinct bytes each request asked for */
    uint32_t global_bytes;         /* distinct bytes per request, summed */
    uint32_t shared_requests;      /* warp-level instrumented shared accesses (cp.async stores, load16/store16) */
    uint32_t shared_phases;        /* 128-byte phases they need at least */
    uint32_t shared_wavefronts;    /* passes actually needed (bank conflicts add passes) */
    uint32_t shared_worst_ways;    /* the worst bank conflict of any one phase */
} CuemuStats;

/* ---------------------------------------------------------------------------------------------------------------
 * The kernel table
 * ------------------------------------------------------------------------------------------------------------- */

/* Model kernels: one entry per dtype, activations f32 or bf16, accumulation always f32. Norm weights are f32 arrays
 * holding values of the model precision (see model::gpt::bind_weights). */
#define LLAMAGEN_KERNELS(X)                                                                                            \
    X(rmsnorm_f32, (const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, RmsnormParams p)) \
    X(rmsnorm_bf16, (const __nv_bfloat16* __restrict__ x, const float* __restrict__ w, __nv_bfloat16* __restrict__ y,  \
                     RmsnormParams p))                                                                                 \
    X(swiglu_f32, (const float* __restrict__ ab, float* __restrict__ out, SwigluParams p))                             \
    X(swiglu_bf16, (const __nv_bfloat16* __restrict__ ab, __nv_bfloat16* __restrict__ out, SwigluParams p))            \
    X(gelu_f32, (const float* __restrict__ x, float* __restrict__ y, ElementwiseParams p))                             \
    X(gelu_bf16, (const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y, ElementwiseParams p))            \
    X(copy_rows, (const __nv_bfloat16* __restrict__ src, __nv_bfloat16* __restrict__ dst, CopyRowsParams p))           \
    X(rope_f32, (const float* __restrict__ qkv, const float* __restrict__ table, const StepState* __restrict__ step,   \
                 const int32_t* __restrict__ rows, float* __restrict__ q, float* __restrict__ cache, RopeParams p))    \
    X(rope_bf16, (const __nv_bfloat16* __restrict__ qkv, const float* __restrict__ table,                              \
                  const StepState* __restrict__ step, const int32_t* __restrict__ rows, __nv_bfloat16* __restrict__ q, \
                  __nv_bfloat16* __restrict__ cache, RopeParams p))                                                    \
    X(embed_f32, (const int32_t* __restrict__ ids, const float* __restrict__ table, float* __restrict__ out,           \
                  int32_t* __restrict__ err, EmbedParams p))                                                           \
    X(embed_bf16, (const int32_t* __restrict__ ids, const __nv_bfloat16* __restrict__ table,                           \
                   __nv_bfloat16* __restrict__ out, int32_t* __restrict__ err, EmbedParams p))                         \
    X(codebook_f32, (const int32_t* __restrict__ codes, const float* __restrict__ codebook, float* __restrict__ out,   \
                     int32_t* __restrict__ err, CodebookParams p))                                                     \
    X(quantize_f32, (const float* __restrict__ z, const float* __restrict__ codebook, int32_t* __restrict__ codes,     \
                     CodebookParams p))                                                                                \
    X(groupnorm_stats_f32, (const float* __restrict__ x, float* __restrict__ part, GroupnormParams p))                 \
    X(groupnorm_f32, (const float* __restrict__ x, const float* __restrict__ part, const float* __restrict__ gamma,    \
                      const float* __restrict__ beta, float* __restrict__ y, GroupnormParams p))                       \
    X(groupnorm_affine_f32, (const float* __restrict__ part, const float* __restrict__ gamma,                          \
                             const float* __restrict__ beta, float* __restrict__ rec, GroupnormParams p))              \
    X(attention_decode_f32, (const float* __restrict__ q, const float* __restrict__ kv, const float* __restrict__ mask,\
                             const StepState* __restrict__ step, const int32_t* __restrict__ rows,                     \
                             float* __restrict__ out, float* __restrict__ ws, AttentionParams p))                      \
    X(attention_decode_bf16, (const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kv,               \
                              const __nv_bfloat16* __restrict__ mask, const StepState* __restrict__ step,              \
                              const int32_t* __restrict__ rows, __nv_bfloat16* __restrict__ out,                       \
                              float* __restrict__ ws, AttentionParams p))                                              \
    X(attention_combine_f32, (const float* __restrict__ ws, const StepState* __restrict__ step,                        \
                              const int32_t* __restrict__ rows, float* __restrict__ out, AttentionParams p))           \
    X(attention_combine_bf16, (const float* __restrict__ ws, const StepState* __restrict__ step,                       \
                               const int32_t* __restrict__ rows, __nv_bfloat16* __restrict__ out, AttentionParams p))  \
    X(attention_tiled_f32, (const float* __restrict__ q, const float* __restrict__ kv, const float* __restrict__ mask, \
                            const StepState* __restrict__ step, const int32_t* __restrict__ rows,                      \
                            float* __restrict__ out, AttentionParams p))                                               \
    X(attention_tiled_bf16, (const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kv,                \
                             const __nv_bfloat16* __restrict__ mask, const StepState* __restrict__ step,               \
                             const int32_t* __restrict__ rows, __nv_bfloat16* __restrict__ out, AttentionParams p))    \
    X(attention_flash_bf16, (const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kv,                \
                             const __nv_bfloat16* __restrict__ mask, const StepState* __restrict__ step,               \
                             const int32_t* __restrict__ rows, __nv_bfloat16* __restrict__ out, AttentionParams p))    \
    X(sampling_f32, (const float* __restrict__ logits, const int32_t* __restrict__ image_index,                        \
                     const StepState* __restrict__ step, int32_t* __restrict__ tokens, uint32_t* __restrict__ work,    \
                     SamplingParams p))                                                                                \
    X(sampling_bf16, (const __nv_bfloat16* __restrict__ logits, const int32_t* __restrict__ image_index,               \
                      const StepState* __restrict__ step, int32_t* __restrict__ tokens, uint32_t* __restrict__ work,   \
                      SamplingParams p))                                                                               \
    X(sampling_uniform, (const int32_t* __restrict__ image_index, const StepState* __restrict__ step,                  \
                         uint32_t* __restrict__ words, float* __restrict__ u, int32_t n))                              \
    X(gemm_tiled_128x128_bf16, (const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,              \
        const __nv_bfloat16* __restrict__ r, __nv_bfloat16* __restrict__ y, float* __restrict__ part, GemmParams p))   \
    X(gemm_tiled_128x64_bf16, (const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,               \
        const __nv_bfloat16* __restrict__ r, __nv_bfloat16* __restrict__ y, float* __restrict__ part, GemmParams p))   \
    X(gemm_tiled_64x64_bf16, (const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,                \
        const __nv_bfloat16* __restrict__ r, __nv_bfloat16* __restrict__ y, float* __restrict__ part, GemmParams p))   \
    X(gemm_splitk_reduce_bf16, (const float* __restrict__ part, const __nv_bfloat16* __restrict__ r,                   \
                                __nv_bfloat16* __restrict__ y, GemmParams p))                                          \
    X(gemm_small_bf16, (const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,                      \
                        const __nv_bfloat16* __restrict__ r, __nv_bfloat16* __restrict__ y, GemmParams p))             \
    X(gemm_small_f32, (const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ r,          \
                       float* __restrict__ y, GemmParams p))                                                          \
    X(gemm_strided_f32, (const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ bias,     \
                         const float* r, float* c, GemmStridedParams p))                                               \
    X(vq_attention_softmax_f32, (float* __restrict__ s, SoftmaxRowsParams p))                                          \
    X(conv2d_f32, (const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,           \
                   const float* residual, const float* __restrict__ norm, float* out, Conv2dParams p))                 \
    X(conv2d_t128_f32, (const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,      \
                        const float* residual, const float* __restrict__ norm, float* out, Conv2dParams p))            \
    X(conv2d_tc_f32, (const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,        \
                      const float* residual, const float* __restrict__ norm, float* out, Conv2dParams p))              \
    X(upsample_conv_tc_f32, (const float* __restrict__ x, const float* __restrict__ w,                                 \
                             const float* __restrict__ bias, float* __restrict__ out, UpsampleConvParams p))           \
    X(upsample_conv_f32, (const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,    \
                          float* __restrict__ out, UpsampleConvParams p))                                              \
    X(upsample_conv_t128_f32, (const float* __restrict__ x, const float* __restrict__ w,                               \
                               const float* __restrict__ bias, float* __restrict__ out, UpsampleConvParams p))

/* Emulator self-test kernels (kernels/selftest.cu): deliberate bugs and collective-semantics probes. They are built
 * by nvcc too, so the same probes can run on a GPU. */
#define LLAMAGEN_SELFTEST_KERNELS(X)                                                                                   \
    X(selftest_partial_barrier, (float* out))                                                                          \
    X(selftest_half_warp_shuffle, (float* out))                                                                        \
    X(selftest_exit_before_barrier, (float* out, int32_t n))                                                           \
    X(selftest_neighbour, (const float* in, float* out, int32_t with_barrier))                                         \
    X(selftest_block_reduce, (const float* in, float* out, int32_t n))                                                 \
    X(selftest_warp_ops, (const int32_t* in, int32_t* out))                                                            \
    X(selftest_atomics, (int32_t* counter, float* fsum, uint32_t* umax, int32_t* slots, int32_t* claims,               \
                         int32_t* xchg, int32_t* xchg_old))                                                            \
    X(selftest_indices, (uint32_t* out))                                                                               \
    X(selftest_dynamic_shared, (const float* in, float* out, int32_t n))                                               \
    X(selftest_bf16_convert, (const float* f, __nv_bfloat16* to_bf16, const __nv_bfloat16* b, float* to_f32,          \
                              int32_t n))                                                                              \
    X(selftest_mma_bf16, (const __nv_bfloat16* a, const __nv_bfloat16* bt, const float* c, float* d))                 \
    X(selftest_sync_count, (int32_t* out))                                                                            \
    X(selftest_ldmatrix, (const __nv_bfloat16* in, uint32_t* out))                                                     \
    X(selftest_cp_async, (const float* in, const float* in2, float* out, int32_t flags))                              \
    X(selftest_mma_tf32, (const float* a, const float* bt, const float* c, float* d))

/* Prototypes, for nvcc and the emulator only. */
#if defined(__CUDACC__) || defined(__CUEMU__)
#include <cuda_bf16.h>
#define LLAMAGEN_DECLARE_KERNEL(name, params) extern "C" __global__ void name params;
LLAMAGEN_KERNELS(LLAMAGEN_DECLARE_KERNEL)
LLAMAGEN_SELFTEST_KERNELS(LLAMAGEN_DECLARE_KERNEL)
#undef LLAMAGEN_DECLARE_KERNEL
#endif

/* ---------------------------------------------------------------------------------------------------------------
 * Emulator launch API (host side; implemented by kernels/emu/runtime.cpp and registry.cpp)
 * ------------------------------------------------------------------------------------------------------------- */
#if !defined(__CUDACC__)
#ifdef __cplusplus
extern "C" {
#endif

enum {
    CUEMU_OK = 0,
    CUEMU_ERR_UNKNOWN_KERNEL = 1,
    CUEMU_ERR_INVALID_CONFIG = 2,
    CUEMU_ERR_INVALID_ARGS = 3
};

/* cuLaunchKernel's shape: runs the whole grid and returns when it is complete. `args[i]` points at the i-th kernel
 * argument (a device pointer value, a scalar, or a parameter struct). Returns a CUEMU_* code; on error
 * cuemu_last_error() describes it. A kernel bug (partial barrier, deadlock, misused warp collective) prints a
 * message naming the kernel, block and thread, then aborts the process, as a GPU fault would end the context. */
int cuemu_launch(const char* name, const uint32_t grid[3], const uint32_t block[3], uint32_t shared_bytes,
                 void** args);
int cuemu_launch_ex(const char* name, const uint32_t grid[3], const uint32_t block[3], uint32_t shared_bytes,
                    void** args, const CuemuLaunchOptions* opts);
/* The message of the last failed call on this OS thread ("" if none). */
const char* cuemu_last_error(void);
/* Argument signature of a kernel, e.g. "P,P,P,S12" (P pointer, i int32, u uint32, f float, S<n> struct of n bytes).
 * Returns 0 and NUL-terminates into buf, or CUEMU_ERR_UNKNOWN_KERNEL. */
int cuemu_kernel_signature(const char* name, char* buf, uint32_t len);
/* The kernel lab: on != 0 zeroes the counters and starts counting, 0 stops; read them with cuemu_stats_read. */
void cuemu_stats_enable(int on);
void cuemu_stats_read(CuemuStats* out);
/* The same counters for the index-th kernel launched while counting (in order of first launch); its name into `name`
 * (NUL-terminated, truncated to name_len). Returns 0 past the last kernel. */
int cuemu_stats_read_kernel(uint32_t index, char* name, uint32_t name_len, CuemuStats* out);
/* Number of registered kernels and the i-th name (NULL past the end). */
int cuemu_kernel_count(void);
const char* cuemu_kernel_name(int i);

#ifdef __cplusplus
}
#endif
#endif /* !__CUDACC__ */

#endif /* LLAMAGEN_KERNELS_H */
