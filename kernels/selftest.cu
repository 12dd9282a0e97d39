/*
 * selftest.cu: probes of the execution model, launched by tests/kernels_emu.rs under the CPU emulator. Some are
 * deliberately wrong (a partial barrier, a half-warp shuffle, a missing barrier) to show that the emulator catches
 * them; the others pin down the semantics kernels rely on (block reductions at odd block sizes, shuffle source
 * lanes, votes, atomics across blocks, index mapping, dynamic shared memory, bf16 rounding, the mma fragment
 * layout). nvcc builds this file too, so the same probes can be run on a GPU (the mma tile first of all).
 */
#include <cuda_bf16.h>

#include "common.cuh"
#include "llamagen_kernels.h"

/* Wrong on purpose: half the block skips the barrier. The emulator aborts ("exited while 16 threads wait"). */
extern "C" __global__ void selftest_partial_barrier(float* out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

/* Wrong on purpose: a full-mask shuffle by half a warp while the other half waits at __syncthreads (deadlock). */
extern "C" __global__ void selftest_half_warp_shuffle(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_xor_sync(FULL_MASK, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

/* Wrong on purpose for n < blockDim.x: the early return leaves threads out of the barrier. */
extern "C" __global__ void selftest_exit_before_barrier(float* out, int32_t n) {
    if ((int)threadIdx.x >= n) return;
    out[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = 2.0f;
}

/* out[t] = in[(t + 1) % n] through shared memory. Without the second barrier a thread may read its neighbour's
 * slot before the neighbour wrote it (it then reads the -1 sentinel): the result depends on the schedule. */
extern "C" __global__ void selftest_neighbour(const float* in, float* out, int32_t with_barrier) {
    __shared__ float tile[1024];
    const int t = (int)threadIdx.x, n = (int)blockDim.x;
    const size_t base = (size_t)blockIdx.x * n;
    tile[t] = -1.0f;
    __syncthreads();
    tile[t] = in[base + t];
    if (with_barrier) __syncthreads();
    out[base + t] = tile[(t + 1) % n];
}

/* out[0] = Σ in, out[1] = max in, out[2] = Σ in² (a second, back-to-back sum), out[3] = number of threads that
 * disagreed with thread 0 on the three results (must be 0). */
extern "C" __global__ void selftest_block_reduce(const float* in, float* out, int32_t n) {
    const int t = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
    const int nt = (int)(blockDim.x * blockDim.y * blockDim.z);
    float s = 0.0f, m = -INFINITY, q = 0.0f;
    for (int i = t; i < n; i += nt) {
        s += in[i];
        m = fmaxf(m, in[i]);
        q += in[i] * in[i];
    }
    s = block_reduce_sum(s);
    m = block_reduce_max(m);
    q = block_reduce_sum(q);
    __shared__ float first[3];
    if (t == 0) {
        out[0] = s;
        out[1] = m;
        out[2] = q;
        out[3] = 0.0f;
        first[0] = s;
        first[1] = m;
        first[2] = q;
    }
    __syncthreads();
    if (s != first[0] || m != first[1] || q != first[2]) atomicAdd(&out[3], 1.0f);
}

/* Shuffle, vote and warp-sync semantics; 16 outputs per thread at out[16 * global thread id + k]. */
extern "C" __global__ void selftest_warp_ops(const int32_t* in, int32_t* out) {
    const int t = (int)threadIdx.x;
    const int lane = t & 31;
    const int g = (int)(blockIdx.x * blockDim.x) + t;
    const int v = in[g];
    int32_t* o = out + 16 * g;
    o[0] = __shfl_sync(FULL_MASK, v, 5);
    o[1] = __shfl_sync(FULL_MASK, v, lane + 3);
    o[2] = __shfl_sync(FULL_MASK, v, 2, 8);
    o[3] = __shfl_up_sync(FULL_MASK, v, 3);
    o[4] = __shfl_up_sync(FULL_MASK, v, 2, 8);
    o[5] = __shfl_down_sync(FULL_MASK, v, 5);
    o[6] = __shfl_down_sync(FULL_MASK, v, 3, 16);
    o[7] = __shfl_xor_sync(FULL_MASK, v, 7);
    o[8] = __shfl_xor_sync(FULL_MASK, v, 8, 8);
    o[9] = (int32_t)__ballot_sync(FULL_MASK, v & 1);
    o[10] = __any_sync(FULL_MASK, v > 90);
    o[11] = __all_sync(FULL_MASK, v >= 0);
    o[12] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, v, 1) : -7;
    o[13] = (int32_t)__activemask();
    __syncwarp();
    o[14] = (int32_t)__shfl_sync(FULL_MASK, (double)v * 0.5, 31 - lane) * 4; /* an 8-byte value */
    o[15] = lane < 16 ? (int32_t)__ballot_sync(0x0000ffffu, 1) : -7;
}

/* Atomics from every thread of every block (the emulator runs blocks on several OS threads). Expected:
 * counter = N, fsum = N, umax = N - 1, each of the 16 slots claimed once (claims = 16, slots[k] ≡ k mod 16), and
 * the old values returned by atomicExch plus the final value form a permutation of {-1, 0, ..., N - 1}. */
extern "C" __global__ void selftest_atomics(int32_t* counter, float* fsum, uint32_t* umax, int32_t* slots,
                                            int32_t* claims, int32_t* xchg, int32_t* xchg_old) {
    const int g = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    atomicAdd(counter, 1);
    atomicAdd(fsum, 1.0f);
    __syncthreads(); /* lets the fibers of a block interleave between the two halves */
    atomicMax(umax, (uint32_t)g);
    if (atomicCAS(&slots[g % 16], -1, g) == -1) atomicAdd(claims, 1);
    xchg_old[g] = atomicExch(xchg, g);
}

/* 12 words per thread: threadIdx, blockIdx, blockDim, gridDim, at the global linear thread id. */
extern "C" __global__ void selftest_indices(uint32_t* out) {
    const uint32_t b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const uint32_t t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    uint32_t* o = out + 12 * (b * blockDim.x * blockDim.y * blockDim.z + t);
    o[0] = threadIdx.x;
    o[1] = threadIdx.y;
    o[2] = threadIdx.z;
    o[3] = blockIdx.x;
    o[4] = blockIdx.y;
    o[5] = blockIdx.z;
    o[6] = blockDim.x;
    o[7] = blockDim.y;
    o[8] = blockDim.z;
    o[9] = gridDim.x;
    o[10] = gridDim.y;
    o[11] = gridDim.z;
}

/* Reverses n floats through dynamic shared memory (n floats of it); out[n] = 1 if the buffer is 16-byte aligned. */
extern "C" __global__ void selftest_dynamic_shared(const float* in, float* out, int32_t n) {
    DYNAMIC_SHARED(float, buf);
    const int t = (int)threadIdx.x;
    for (int i = t; i < n; i += (int)blockDim.x) buf[i] = in[i];
    __syncthreads();
    for (int i = t; i < n; i += (int)blockDim.x) out[i] = buf[n - 1 - i];
    if (t == 0) out[n] = aligned16(buf) ? 1.0f : 0.0f;
}

extern "C" __global__ void selftest_bf16_convert(const float* f, __nv_bfloat16* to_bf16, const __nv_bfloat16* b,
                                                 float* to_f32, int32_t n) {
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += (int)(gridDim.x * blockDim.x)) {
        to_bf16[i] = __float2bfloat16_rn(f[i]);
        to_f32[i] = __bfloat162float(b[i]);
    }
}

/* One warp: d (16x8, row-major) = a (16x16, row-major) · bt (8x16, row-major = B column-major) + c (16x8). */
extern "C" __global__ void selftest_mma_bf16(const __nv_bfloat16* a, const __nv_bfloat16* bt, const float* c,
                                             float* d) {
    const int lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint32_t* a32 = reinterpret_cast<const uint32_t*>(a);  /* a32[row * 8 + k / 2] holds A[row][k..k+1] */
    const uint32_t* b32 = reinterpret_cast<const uint32_t*>(bt); /* b32[n * 8 + k / 2] holds B[k..k+1][n] */
    const uint32_t ar[4] = {a32[g * 8 + t], a32[(g + 8) * 8 + t], a32[g * 8 + t + 4], a32[(g + 8) * 8 + t + 4]};
    const uint32_t br[2] = {b32[g * 8 + t], b32[g * 8 + t + 4]};
    const float cr[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
    float dr[4];
    mma_m16n8k16_bf16(dr, ar, br, cr);
    d[g * 8 + 2 * t] = dr[0];
    d[g * 8 + 2 * t + 1] = dr[1];
    d[(g + 8) * 8 + 2 * t] = dr[2];
    d[(g + 8) * 8 + 2 * t + 1] = dr[3];
}

/* out[0..3) = __syncthreads_count/and/or results seen by thread 0; out[3] counts threads that saw other results. */
extern "C" __global__ void selftest_sync_count(int32_t* out) {
    const int t = (int)threadIdx.x;
    const int c = __syncthreads_count(t % 3 == 0);
    const int a = __syncthreads_and(t < 1000);
    const int o = __syncthreads_or(t == 17);
    __shared__ int first[3];
    if (t == 0) {
        first[0] = c;
        first[1] = a;
        first[2] = o;
        out[0] = c;
        out[1] = a;
        out[2] = o;
        out[3] = 0;
    }
    __syncthreads();
    if (c != first[0] || a != first[1] || o != first[2]) atomicAdd(&out[3], 1);
}

/* ldmatrix probes. `in` holds four 8x8 bf16 matrices (row-major, 16-byte rows); out[v][lane][j] receives word j of
 * variant v: 0 x4, 1 x4.trans, 2 x2, 3 x2.trans, 4 x1 (128 words per variant, unused words 0). The rows are placed
 * in shared memory in reverse order so that a lane's address, not the data's position, decides what it gets. */
extern "C" __global__ void selftest_ldmatrix(const __nv_bfloat16* in, uint32_t* out) {
    __shared__ __align__(16) __nv_bfloat16 tile[32 * 8];
    const int lane = (int)threadIdx.x & 31;
    for (int i = lane; i < 32 * 8; i += 32) tile[(31 - i / 8) * 8 + i % 8] = in[i];
    __syncwarp();
    const __nv_bfloat16* row = tile + (31 - lane) * 8; /* row lane%8 of matrix lane/8 */
    uint32_t r[4];
    for (int v = 0; v < 5; v++) {
        r[0] = r[1] = r[2] = r[3] = 0;
        if (v == 0) ldmatrix_x4(r, row);
        if (v == 1) ldmatrix_x4_trans(r, row);
        if (v == 2) ldmatrix_x2(r, row);
        if (v == 3) ldmatrix_x2_trans(r, row);
        if (v == 4) ldmatrix_x1(r, row);
        for (int j = 0; j < 4; j++) out[(v * 32 + lane) * 4 + j] = r[j];
    }
}

/* cp.async probe, one block of n threads, 4 floats each, through dynamic shared memory (poisoned per block).
 * Thread t copies in[4t..4t+4) to tile[t], then reads its neighbour's tile[(t+1) % n] into out[8t..8t+4); it then
 * refills tile[t] from in2 (threads t % 5 == 4 with src-size 0: zeros) and reads the neighbour's again into
 * out[8t+4..8t+8). flags bit 0: wait for the copies (wait_group 0) before the barrier; bit 1: barrier before the
 * refill. Either missing is a bug the emulator must expose under some schedule. */
extern "C" __global__ void selftest_cp_async(const float* in, const float* in2, float* out, int32_t flags) {
    DYNAMIC_SHARED(float, tile);
    const int t = (int)threadIdx.x, n = (int)blockDim.x, nb = (t + 1) % n;
    cp_async16(tile + 4 * t, in + 4 * t, 16);
    cp_async_commit();
    if (flags & 1) cp_async_wait<0>();
    __syncthreads();
    for (int j = 0; j < 4; j++) out[8 * t + j] = tile[4 * nb + j];
    if (flags & 2) __syncthreads();
    cp_async16(tile + 4 * t, in2 + 4 * t, t % 5 == 4 ? 0 : 16);
    cp_async_commit();
    if (flags & 1) cp_async_wait<0>();
    __syncthreads();
    for (int j = 0; j < 4; j++) out[8 * t + 4 + j] = tile[4 * nb + j];
}

/* One warp: d (16x8, row-major) = a (16x8, row-major) · bt (8x8, row-major = B column-major) + c, on the TF32
 * tensor-core tile; the operands are rounded with to_tf32 (exact for the test's multiples of 1/4). */
extern "C" __global__ void selftest_mma_tf32(const float* a, const float* bt, const float* c, float* d) {
    const int lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint32_t ar[4] = {to_tf32(a[g * 8 + t]), to_tf32(a[(g + 8) * 8 + t]), to_tf32(a[g * 8 + t + 4]),
                            to_tf32(a[(g + 8) * 8 + t + 4])};
    const uint32_t br[2] = {to_tf32(bt[g * 8 + t]), to_tf32(bt[g * 8 + t + 4])};
    const float cr[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
    float dr[4];
    mma_m16n8k8_tf32(dr, ar, br, cr);
    d[g * 8 + 2 * t] = dr[0];
    d[g * 8 + 2 * t + 1] = dr[1];
    d[(g + 8) * 8 + 2 * t] = dr[2];
    d[(g + 8) * 8 + 2 * t + 1] = dr[3];
}
