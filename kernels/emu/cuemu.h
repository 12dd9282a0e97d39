/*
 * cuemu.h: runs CUDA C++ kernels on the CPU (x86-64, g++ >= 12, C++17).
 *
 * build.rs compiles every .cu file in kernels/ with g++ as C++17 with this header force-included (-include) and
 * kernels/emu/stub on the include path (its cuda_runtime.h, cuda_bf16.h, cuda_fp16.h and cuda.h only include this
 * file). The design is docs/cuda-emulation-notes.md:
 *   - each GPU thread is a cooperative fiber; a block's fibers run on one OS thread; blocks run on a small pool;
 *   - __syncthreads is a generation barrier; warp collectives are a per-warp rendezvous;
 *   - threadIdx and friends are macros reading the current fiber's record;
 *   - __shared__ is `static thread_local` (one instance per running block); dynamic shared memory goes through
 *     DYNAMIC_SHARED (kernels/common.cuh), a pointer into the block's poisoned buffer here;
 *   - the marker macro __CUEMU__ is tested in kernels in two places only: dynamic shared memory and PTX wrappers.
 * Never put this file (or emu/stub) on nvcc's include path.
 */
#ifndef CUEMU_H
#define CUEMU_H

#if defined(__CUDACC__)
#error "cuemu.h is the CPU emulation of CUDA; nvcc must never see it"
#endif
#if !defined(__x86_64__)
#error "cuemu: the fiber context switch is written for x86-64 only"
#endif

#define __CUEMU__ 1

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>

/* ---------------------------------------------------------------------------------------------------------------
 * Qualifiers
 * ------------------------------------------------------------------------------------------------------------- */
#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)
#define __forceinline__ inline __attribute__((always_inline))
/* __noinline__ is left undefined: libstdc++ spells `__attribute__((__noinline__))`, which the macro would break. */
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
#define __shared__ static thread_local
#define __managed__

/* ---------------------------------------------------------------------------------------------------------------
 * Vector and index types
 * ------------------------------------------------------------------------------------------------------------- */
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct __align__(8) float2 {
    float x, y;
};
struct __align__(16) float4 {
    float x, y, z, w;
};
struct __align__(8) int2 {
    int x, y;
};
struct __align__(16) int4 {
    int x, y, z, w;
};
struct __align__(8) uint2 {
    unsigned int x, y;
};
struct __align__(16) uint4 {
    unsigned int x, y, z, w;
};
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return int2{x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
static inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

/* ---------------------------------------------------------------------------------------------------------------
 * The runtime's per-thread and per-block records (kernels/emu/runtime.cpp)
 * ------------------------------------------------------------------------------------------------------------- */
namespace cuemu {
struct ThreadCtx {
    uint3 thread_idx;
    unsigned int linear; /* linear thread id in the block */
    unsigned int lane;
    unsigned int warp;
};
struct BlockCtx {
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    unsigned char* dyn_smem;
    size_t dyn_smem_bytes;
};
} // namespace cuemu

/* __thread (not thread_local): no TLS wrapper call on access. */
extern __thread cuemu::ThreadCtx* cuemu_tcur __attribute__((tls_model("initial-exec")));
extern __thread cuemu::BlockCtx* cuemu_bcur __attribute__((tls_model("initial-exec")));

#define threadIdx (cuemu_tcur->thread_idx)
#define blockIdx (cuemu_bcur->block_idx)
#define blockDim (cuemu_bcur->block_dim)
#define gridDim (cuemu_bcur->grid_dim)
static constexpr int warpSize = 32;

namespace cuemu {
/* Sync points: each may switch to another fiber. */
void syncthreads();
int syncthreads_reduce(int pred, int op); /* op: 0 count, 1 and, 2 or */
enum ShflMode { SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_XOR = 3 };
void warp_shfl(unsigned mask, const void* in, void* out, unsigned size, int mode, int arg, int width);
/* Returns the ballot of the participating lanes; *participants (if given) receives their mask. */
unsigned warp_ballot(unsigned mask, int pred, unsigned* participants = nullptr);
void warp_sync(unsigned mask);
unsigned warp_activemask();
/* The m16n8k16 bf16 tensor-core MMA, all 32 lanes of a full warp (kernels call it through common.cuh). */
void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
/* The m16n8k8 TF32 tensor-core MMA (operands already rounded to TF32; see runtime.cpp). */
void mma_m16n8k8_tf32(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
/* cp.async (sm_80): a 16-byte (or 4/8) global -> shared copy of which src_bytes are read and the rest zero-filled,
 * landing at any time between the call and the cp_async_wait that covers its commit group. The emulator lands it
 * as late as allowed under the forward schedule, at once under reverse, and either way at random under shuffle,
 * so a missing wait (reading a stage still in flight) and a missing barrier before re-filling a stage (a copy
 * overwriting data other threads still read) each show under some schedule. */
void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes);
void cp_async_commit();
/* Lands every copy of this thread's committed groups except the newest n. */
void cp_async_wait(int n);
/* ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16, all 32 lanes: lane 8j + i gives row i of matrix j. */
void ldmatrix(uint32_t* r, const void* addr, int num, int trans);
/* The kernel lab: notes a global or shared access of `size` bytes by the calling thread (no-op unless counting). */
void note_access(const void* p, unsigned size, int store);
/* Aborts the process with a message naming the kernel, block and thread. */
[[noreturn]] void trap(const char* what);
inline unsigned char* dynamic_smem() { return cuemu_bcur->dyn_smem; }
} // namespace cuemu

static inline void __syncthreads() { cuemu::syncthreads(); }
static inline int __syncthreads_count(int p) { return cuemu::syncthreads_reduce(p, 0); }
static inline int __syncthreads_and(int p) { return cuemu::syncthreads_reduce(p, 1); }
static inline int __syncthreads_or(int p) { return cuemu::syncthreads_reduce(p, 2); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { cuemu::warp_sync(mask); }
static inline unsigned __activemask() { return cuemu::warp_activemask(); }
static inline unsigned __ballot_sync(unsigned mask, int pred) { return cuemu::warp_ballot(mask, pred); }
static inline int __any_sync(unsigned mask, int pred) { return cuemu::warp_ballot(mask, pred) != 0; }
static inline int __all_sync(unsigned mask, int pred) {
    unsigned participants = 0;
    unsigned votes = cuemu::warp_ballot(mask, pred, &participants);
    return votes == participants;
}
static inline void __trap() { cuemu::trap("__trap()"); }

template <typename T> static inline T cuemu_shfl_(unsigned mask, T v, int mode, int arg, int width) {
    static_assert(sizeof(T) <= 16, "cuemu: shuffled values are at most 16 bytes");
    static_assert(std::is_trivially_copyable<T>::value, "cuemu: shuffled values must be trivially copyable");
    T out;
    cuemu::warp_shfl(mask, &v, &out, sizeof(T), mode, arg, width);
    return out;
}
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    return cuemu_shfl_(mask, v, cuemu::SHFL_IDX, src_lane, width);
}
template <typename T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return cuemu_shfl_(mask, v, cuemu::SHFL_UP, (int)delta, width);
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return cuemu_shfl_(mask, v, cuemu::SHFL_DOWN, (int)delta, width);
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return cuemu_shfl_(mask, v, cuemu::SHFL_XOR, lane_mask, width);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Atomics (blocks run concurrently on several OS threads, so these are real atomics, sequentially consistent)
 * ------------------------------------------------------------------------------------------------------------- */
#define CUEMU_INT_ATOMICS(T)                                                                                           \
    static inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }                      \
    static inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }                      \
    static inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }                      \
    static inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }                        \
    static inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }                      \
    static inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }                    \
    static inline T atomicCAS(T* p, T cmp, T v) {                                                                    \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                          \
        return cmp;                                                                                                    \
    }                                                                                                                  \
    static inline T atomicMax(T* p, T v) {                                                                           \
        T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                                                 \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {        \
        }                                                                                                              \
        return old;                                                                                                    \
    }                                                                                                                  \
    static inline T atomicMin(T* p, T v) {                                                                           \
        T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                                                 \
        while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {        \
        }                                                                                                              \
        return old;                                                                                                    \
    }
CUEMU_INT_ATOMICS(int)
CUEMU_INT_ATOMICS(unsigned int)
CUEMU_INT_ATOMICS(unsigned long long int)
#undef CUEMU_INT_ATOMICS
static inline long long int atomicMax(long long int* p, long long int v) {
    long long int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
static inline long long int atomicMin(long long int* p, long long int v) {
    long long int old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
template <typename F, typename U> static inline F cuemu_float_rmw_(F* p, F v, int op) {
    static_assert(sizeof(F) == sizeof(U), "width");
    U* u = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(u, __ATOMIC_SEQ_CST);
    for (;;) {
        F f;
        memcpy(&f, &old, sizeof f);
        F n = op == 0 ? f + v : v; /* 0: add, 1: exchange */
        U nu;
        memcpy(&nu, &n, sizeof nu);
        if (__atomic_compare_exchange_n(u, &old, nu, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return f;
    }
}
static inline float atomicAdd(float* p, float v) { return cuemu_float_rmw_<float, uint32_t>(p, v, 0); }
static inline double atomicAdd(double* p, double v) { return cuemu_float_rmw_<double, uint64_t>(p, v, 0); }
static inline float atomicExch(float* p, float v) { return cuemu_float_rmw_<float, uint32_t>(p, v, 1); }
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* ---------------------------------------------------------------------------------------------------------------
 * bf16 and half on the host (self-contained; float -> bf16 rounds to nearest even, NaN stays a quiet NaN)
 * ------------------------------------------------------------------------------------------------------------- */
static inline unsigned short cuemu_f2bf_bits_(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
static inline float cuemu_bf2f_bits_(unsigned short b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

struct __align__(2) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(cuemu_f2bf_bits_(f)) {}
    __nv_bfloat16(double f) : __x(cuemu_f2bf_bits_((float)f)) {}
    __nv_bfloat16(int i) : __x(cuemu_f2bf_bits_((float)i)) {}
    operator float() const { return cuemu_bf2f_bits_(__x); }
};
struct __align__(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

static inline __nv_bfloat16 cuemu_bf_from_bits_(unsigned short b) {
    __nv_bfloat16 r;
    r.__x = b;
    return r;
}
static inline float __bfloat162float(__nv_bfloat16 b) { return cuemu_bf2f_bits_(b.__x); }
static inline __nv_bfloat16 __float2bfloat16(float f) { return cuemu_bf_from_bits_(cuemu_f2bf_bits_(f)); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
static inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
static inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
static inline float2 __bfloat1622float2(__nv_bfloat162 v) { return float2{__bfloat162float(v.x), __bfloat162float(v.y)}; }
static inline __nv_bfloat162 __float22bfloat162_rn(float2 v) {
    return __nv_bfloat162{__float2bfloat16(v.x), __float2bfloat16(v.y)};
}
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__float2bfloat16(a), __float2bfloat16(b)};
}
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return cuemu_bf_from_bits_(u); }
/* Arithmetic: computed in float, rounded once. */
static inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16((float)a + (float)b); }
static inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16((float)a - (float)b); }
static inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16((float)a * (float)b); }
static inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
    return __float2bfloat16(fmaf((float)a, (float)b, (float)c));
}

struct __align__(2) __half {
    _Float16 __v;
    __half() = default;
    __half(float f) : __v((_Float16)f) {}
    operator float() const { return (float)__v; }
};
struct __align__(4) __half2 {
    __half x, y;
};
typedef __half half;
typedef __half2 half2;
static inline __half __float2half(float f) { return __half(f); }
static inline __half __float2half_rn(float f) { return __half(f); }
static inline float __half2float(__half h) { return (float)h.__v; }
static inline float2 __half22float2(__half2 v) { return float2{__half2float(v.x), __half2float(v.y)}; }
static inline __half2 __float22half2_rn(float2 v) { return __half2{__half(v.x), __half(v.y)}; }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
static inline float __low2float(__half2 v) { return __half2float(v.x); }
static inline float __high2float(__half2 v) { return __half2float(v.y); }
static inline __half __hadd(__half a, __half b) { return __half((float)a + (float)b); }
static inline __half __hsub(__half a, __half b) { return __half((float)a - (float)b); }
static inline __half __hmul(__half a, __half b) { return __half((float)a * (float)b); }
static inline __half __hfma(__half a, __half b, __half c) { return __half(fmaf((float)a, (float)b, (float)c)); }

/* ---------------------------------------------------------------------------------------------------------------
 * Math and bit intrinsics (libm stands in for the fast-math unit: compare with tolerances, never bitwise)
 * ------------------------------------------------------------------------------------------------------------- */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
/* glibc declares __expf & co. itself: the fast intrinsics are macros onto libm here. */
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __powf(x, y) powf(x, y)
static inline float __fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
/* The _rn arithmetic intrinsics are never contracted into an FMA by nvcc; g++ runs with -ffp-contract=fast, so an
 * empty asm makes the product (and the addends) opaque values it cannot fuse across. */
static inline float __fmul_rn(float a, float b) {
    float r = a * b;
    __asm__("" : "+x"(r));
    return r;
}
static inline float __fadd_rn(float a, float b) {
    __asm__("" : "+x"(a), "+x"(b));
    return a + b;
}
static inline float __fsub_rn(float a, float b) {
    __asm__("" : "+x"(a), "+x"(b));
    return a - b;
}
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
static inline int __float2int_rn(float f) { return (int)nearbyintf(f); }
static inline int __float2int_rz(float f) { return (int)f; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
template <typename T> static inline T __ldg(const T* p) {
    cuemu::note_access(p, sizeof(T), 0);
    return *p;
}
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }

#endif /* CUEMU_H */
