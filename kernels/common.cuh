/*
 * common.cuh: device helpers shared by every kernel (nvcc and the CPU emulator compile the same code).
 *
 *   - DYNAMIC_SHARED(T, name): `extern __shared__ T name[]` under nvcc, a pointer into the block's dynamic shared
 *     buffer under the emulator (the one place besides PTX wrappers where kernels test __CUEMU__);
 *   - dtype helpers: to_float / from_float<T> (bf16 rounds to nearest even) and quantize<T>;
 *   - Pack16<T>: 16-byte vector loads and stores (LDG.128 / STG.128);
 *   - warp and block reductions (sum, max) built from shuffles and per-warp partials, correct for any block size
 *     1..1024 (a halving loop from blockDim/2 silently drops elements when blockDim is not a power of two);
 *   - mma_m16n8k16_bf16: the tensor-core MMA wrapper (inline PTX on the GPU, the emulator's warp collective here);
 *   - cp_async16 / cp_async_commit / cp_async_wait<N> (LDGSTS) and ldmatrix_x{1,2,4}[_trans] (LDSM), likewise.
 */
#ifndef LLAMAGEN_COMMON_CUH
#define LLAMAGEN_COMMON_CUH

#include <cuda_bf16.h>
#include <stdint.h>

#include "llamagen_kernels.h" /* StepState (row_place) */

#ifdef __CUEMU__
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::cuemu::dynamic_smem())
#else
#define DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

#define FULL_MASK 0xffffffffu

static __host__ __device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

/* ---- dtypes ---------------------------------------------------------------------------------------------------- */

static __device__ __forceinline__ float to_float(float x) { return x; }
static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> struct FromFloat;
template <> struct FromFloat<float> {
    static __device__ __forceinline__ float conv(float x) { return x; }
};
template <> struct FromFloat<__nv_bfloat16> {
    static __device__ __forceinline__ __nv_bfloat16 conv(float x) { return __float2bfloat16_rn(x); }
};
/* Stores x in T (bf16: round to nearest even). */
template <typename T> static __device__ __forceinline__ T from_float(float x) { return FromFloat<T>::conv(x); }
/* x rounded to T's precision, back in f32: the reference's intermediate `.type_as(x)` roundings. */
template <typename T> static __device__ __forceinline__ float quantize(float x) { return to_float(from_float<T>(x)); }

/* ---- activations ----------------------------------------------------------------------------------------------- */

static __device__ __forceinline__ float silu(float a) { return a / (1.0f + expf(-a)); }

/* GroupNorm of one value from its (image, channel) statistics: ((x − mean hi) − mean lo)·scale + shift, scale =
 * rstd·gamma (then swish). groupnorm_f32 and the conv prologue (CONV_NORM_*) both call this one function, so a
 * fused conv multiplies exactly the values the unfused pair would have stored. */
static __device__ __forceinline__ float groupnorm_apply(float v, float hi, float lo, float scale, float shift,
                                                        bool act) {
    const float y = ((v - hi) - lo) * scale + shift;
    return act ? silu(y) : y;
}

/* One SwiGLU output, silu(a)·b, with the reference's roundings in T (bf16: silu(a) rounded, then the product). */
template <typename T> static __device__ __forceinline__ T swiglu_one(T a, T b) {
    return from_float<T>(quantize<T>(silu(to_float(a))) * to_float(b));
}

/* ---- 16-byte vectors ------------------------------------------------------------------------------------------- */

template <typename T> struct __align__(16) Pack16 {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};
/* Where sequence b of a rope / attention launch sits: its KV-cache row and first position. The row table (continuous
 * batching: rows[2b], rows[2b + 1]) when per_row, else row b at step->pos (a batch running in step). */
struct RowPlace {
    int slot, pos;
};
static __device__ __forceinline__ RowPlace row_place(const int32_t* __restrict__ rows, const StepState* __restrict__ step,
                                                     int per_row, int b) {
    if (per_row) return RowPlace{rows[2 * b], rows[2 * b + 1]};
    return RowPlace{b, step->pos};
}

static __device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
template <typename T> static __device__ __forceinline__ Pack16<T> load16(const T* p) {
#ifdef __CUEMU__
    ::cuemu::note_access(p, 16, 0);
#endif
    Pack16<T> r;
    *reinterpret_cast<int4*>(&r) = *reinterpret_cast<const int4*>(p);
    return r;
}
template <typename T> static __device__ __forceinline__ void store16(T* p, const Pack16<T>& v) {
#ifdef __CUEMU__
    ::cuemu::note_access(p, 16, 1);
#endif
    *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(&v);
}

/* Four consecutive elements (8 bytes of bf16, 16 of f32); p must be aligned to their size. */
template <typename T> struct __align__(4 * sizeof(T)) Pack4 {
    T v[4];
};
template <typename T> static __device__ __forceinline__ Pack4<T> load4(const T* p) {
#ifdef __CUEMU__
    ::cuemu::note_access(p, sizeof(Pack4<T>), 0);
#endif
    return *reinterpret_cast<const Pack4<T>*>(p);
}
template <typename T> static __device__ __forceinline__ void store4(T* p, const Pack4<T>& v) {
#ifdef __CUEMU__
    ::cuemu::note_access(p, sizeof(Pack4<T>), 1);
#endif
    *reinterpret_cast<Pack4<T>*>(p) = v;
}

/* One global load or store that the kernel lab counts under the emulator (kernels/emu/stats.cpp); on the GPU a plain
 * access. Kernels whose coalescing is worth seeing use these (and load16/store16) for their global traffic. */
template <typename T> static __device__ __forceinline__ T gld(const T* p) {
#ifdef __CUEMU__
    ::cuemu::note_access(p, sizeof(T), 0);
#endif
    return *p;
}
template <typename T> static __device__ __forceinline__ void gst(T* p, const T& v) {
#ifdef __CUEMU__
    ::cuemu::note_access(p, sizeof(T), 1);
#endif
    *p = v;
}

/* ---- reductions ------------------------------------------------------------------------------------------------ */

struct SumOp {
    static __device__ __forceinline__ float apply(float a, float b) { return a + b; }
    static __device__ __forceinline__ float identity() { return 0.0f; }
};
struct MaxOp {
    static __device__ __forceinline__ float apply(float a, float b) { return fmaxf(a, b); }
    static __device__ __forceinline__ float identity() { return -INFINITY; }
};

/* Butterfly over a full warp: every lane gets the result. All 32 lanes must exist and call it. */
template <typename Op> static __device__ __forceinline__ float warp_reduce(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
static __device__ __forceinline__ float warp_reduce_sum(float v) { return warp_reduce<SumOp>(v); }
static __device__ __forceinline__ float warp_reduce_max(float v) { return warp_reduce<MaxOp>(v); }

/* Reduction over the first n lanes (1 <= n <= 32) of the calling warp, which are exactly the lanes that call it;
 * the result is valid in lane 0. Serves partial last warps (blockDim not a multiple of 32). */
template <typename Op> static __device__ __forceinline__ float warp_reduce_first(float v, int lane, int n) {
    const unsigned mask = n >= 32 ? FULL_MASK : ((1u << n) - 1u);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_down_sync(mask, v, o);
        if (lane + o < n) v = Op::apply(v, other);
    }
    return v;
}

/* Reduction over the whole block (any shape, 1..1024 threads); every thread gets the result. Every thread of the
 * block must call it (it holds two __syncthreads). Back-to-back calls are safe: the partials and the broadcast
 * slot are distinct, and each is rewritten only after a barrier that every reader has passed. */
template <typename Op> static __device__ __forceinline__ float block_reduce(float v) {
    __shared__ float partial[33];
    const int tid = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
    const int nthreads = (int)(blockDim.x * blockDim.y * blockDim.z);
    const int lane = tid & 31, warp = tid >> 5, nwarps = (nthreads + 31) >> 5;
    const int lanes = min(32, nthreads - warp * 32);
    v = warp_reduce_first<Op>(v, lane, lanes);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float p = lane < nwarps ? partial[lane] : Op::identity();
        p = warp_reduce_first<Op>(p, lane, lanes);
        if (lane == 0) partial[32] = p;
    }
    __syncthreads();
    return partial[32];
}
static __device__ __forceinline__ float block_reduce_sum(float v) { return block_reduce<SumOp>(v); }
static __device__ __forceinline__ float block_reduce_max(float v) { return block_reduce<MaxOp>(v); }

/* ---- tensor cores ---------------------------------------------------------------------------------------------- */

/* D = A·B + C on one 16x8x16 tile, A row-major bf16, B column-major bf16, C and D f32; all 32 lanes of the warp.
 * Fragments (g = lane >> 2, t = lane & 3; the lower-indexed element in the low half of each register):
 *   a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..2t+1]   a[2] = A[g][2t+8..2t+9]   a[3] = A[g+8][2t+8..2t+9]
 *   b[0] = B[2t..2t+1][g]   b[1] = B[2t+8..2t+9][g]
 *   c/d[0..1] = C[g][2t..2t+1]   c/d[2..3] = C[g+8][2t..2t+1]
 * Status: the emulator and kernels/selftest.cu share this reading of the PTX ISA; confirm on a GPU. */
static __device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                         const float c[4]) {
#ifdef __CUEMU__
    ::cuemu::mma_m16n8k16_bf16(d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
                   "f"(c[3]));
#endif
}

/* lo and hi rounded to bf16 (nearest even) in one 32-bit mma operand register, lo in the low half (the smaller k). */
static __device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

/* x rounded to TF32 (10 mantissa bits, to nearest, ties away from zero: cvt.rna.tf32.f32), as f32 bits with the
 * low 13 bits zero, the form mma .tf32 operands must have. */
static __device__ __forceinline__ uint32_t to_tf32(float x) {
#ifdef __CUEMU__
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u; /* finite: add half an ulp of TF32 */
    return u;
#else
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
#endif
}

/* D = A·B + C on one 16x8x8 TF32 tile (operands from to_tf32), C and D f32; all 32 lanes. Fragments: a[0] = A[g][t],
 * a[1] = A[g+8][t], a[2] = A[g][t+4], a[3] = A[g+8][t+4]; b[0] = B[t][g], b[1] = B[t+4][g]; c/d as m16n8k16. */
static __device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                        const float c[4]) {
#ifdef __CUEMU__
    ::cuemu::mma_m16n8k8_tf32(d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
                   "f"(c[3]));
#endif
}

/* ---- asynchronous copies and ldmatrix (sm_80+) -------------------------------------------------------------- */

/* 4 bytes global -> shared (LDGSTS.32, .ca), src_bytes 0 or 4: the element gathers of the implicit-GEMM convs. */
static __device__ __forceinline__ void cp_async4(void* smem, const void* gmem, int src_bytes) {
#ifdef __CUEMU__
    ::cuemu::cp_async(smem, gmem, 4, (unsigned)src_bytes);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
#endif
}

/* 16 bytes global -> shared without passing through registers (LDGSTS; .cg: cached in L2 only), of which
 * src_bytes (0 or 16 here) are read and the rest zero-filled: a tile's out-of-range rows cost no branch. Both
 * addresses 16-byte aligned. Visible to this thread after the cp_async_wait covering its group, to the block after
 * that and a __syncthreads. */
static __device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
#ifdef __CUEMU__
    ::cuemu::cp_async(smem, gmem, 16, (unsigned)src_bytes);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
#endif
}
/* Closes the group of the copies issued since the last commit. */
static __device__ __forceinline__ void cp_async_commit() {
#ifdef __CUEMU__
    ::cuemu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
/* Waits until at most N of this thread's committed groups are still in flight. */
template <int N> static __device__ __forceinline__ void cp_async_wait() {
#ifdef __CUEMU__
    ::cuemu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

/* ldmatrix.m8n8.x4 (LDSM): four 8x8 b16 matrices from shared memory, lane 8j + i passing the 16-byte-aligned
 * address of row i of matrix j; r[j] receives matrix j's row lane/4, columns 2(lane%4) and +1 (the A/B fragment
 * word of mma.m16n8k16), or with _trans column lane/4, rows 2(lane%4) and +1. All 32 lanes. */
static __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem) {
#ifdef __CUEMU__
    ::cuemu::ldmatrix(r, smem, 4, 0);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem) {
#ifdef __CUEMU__
    ::cuemu::ldmatrix(r, smem, 4, 1);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}
/* x2 and x1: lanes 0..15 (x2) or 0..7 (x1) give the addresses; the other lanes' are ignored. */
static __device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* smem) {
#ifdef __CUEMU__
    ::cuemu::ldmatrix(r, smem, 2, 0);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
#endif
}
static __device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* smem) {
#ifdef __CUEMU__
    ::cuemu::ldmatrix(r, smem, 2, 1);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
#endif
}
static __device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* smem) {
#ifdef __CUEMU__
    ::cuemu::ldmatrix(r, smem, 1, 0);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(s));
#endif
}

#endif /* LLAMAGEN_COMMON_CUH */
