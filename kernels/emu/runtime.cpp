/*
 * runtime.cpp: the emulator's execution engine (docs/cuda-emulation-notes.md §2-§7, §10, §11).
 *
 *   grid   -> an atomic counter hands linear block ids to a pool of OS worker threads (CUEMU_THREADS, default one
 *             per hardware thread); a worker runs one block at a time, to completion.
 *   block  -> up to 1024 fibers on the worker's OS thread, each on its own mmap'd stack (CUEMU_STACK_KB, default
 *             128 KiB, no-reserve) above a PROT_NONE guard page; stacks are made once per worker and reused.
 *   switch -> cuemu_switch below: saves rbp, rbx, r12-r15, MXCSR and the x87 control word, swaps stack pointers.
 *   order  -> each scheduler pass resumes every runnable fiber once, in the order CUEMU_SCHED picks (forward,
 *             reverse, or shuffle seeded by the block index); a pass that resumes nobody while threads are live is
 *             a deadlock and aborts with the block's state.
 *   __syncthreads -> generation barrier over all threads of the block. A thread that exits while others wait, or a
 *             thread that arrives after another exited, aborts (CUEMU_LENIENT=1 stops counting exited threads).
 *   warp collectives -> a rendezvous per (warp, mask): every lane deposits its value, the last expected arrival
 *             (mask ∩ lanes that exist and have not exited) computes every participant's result into the
 *             participant's own out slot and bumps each participant's generation. Results are delivered at
 *             completion, so a fast lane starting its next collective can never overwrite a value a slow lane has
 *             yet to read (the hazard that double buffering solves in the design notes). Rounds with different
 *             masks may be open at once (divergent branches of one warp, each with its own mask, as on Volta+);
 *             lanes meeting with one mask but different collectives abort.
 */
#include "cuemu.h"

#include "../llamagen_kernels.h"
#include "cuemu_internal.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

__thread cuemu::ThreadCtx* cuemu_tcur __attribute__((tls_model("initial-exec"))) = nullptr;
__thread cuemu::BlockCtx* cuemu_bcur __attribute__((tls_model("initial-exec"))) = nullptr;

/* ---------------------------------------------------------------------------------------------------------------
 * Context switch (x86-64 System V). void cuemu_switch(void** save_sp, void* load_sp)
 * ------------------------------------------------------------------------------------------------------------- */
extern "C" void cuemu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl cuemu_switch
    .hidden cuemu_switch
    .type cuemu_switch, @function
    .p2align 4
cuemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuemu_switch, .-cuemu_switch
)");

namespace cuemu {
namespace {

constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxWarps = kMaxThreads / 32;
constexpr size_t kMaxDynSmem = 227 * 1024; /* H100 per-block maximum with opt-in (48 KiB without) */
constexpr size_t kInSlot = 48;             /* per-lane deposit: the mma operands are 40 bytes */
constexpr size_t kOutSlot = 16;

enum FiberState : uint8_t { kReady, kWaitBarrier, kWaitWarp, kDone };
enum WarpKind : int { kNone = 0, kShfl, kBallot, kSyncwarp, kMma, kLdsm, kMmaTf32 };
enum Sched : int { kForward = 0, kReverse = 1, kShuffle = 2 };

const char* kind_name(int k) {
    switch (k) {
    case kShfl:
        return "__shfl*_sync";
    case kBallot:
        return "__ballot/__any/__all_sync";
    case kSyncwarp:
        return "__syncwarp";
    case kMma:
        return "mma.sync";
    case kLdsm:
        return "ldmatrix";
    case kMmaTf32:
        return "mma.sync.m16n8k8.tf32";
    default:
        return "(none)";
    }
}

/* One cp.async in flight: lands when its group is waited for (or earlier, by the schedule's choice). */
struct Copy {
    unsigned char* dst;
    const unsigned char* src;
    uint32_t group;
    uint8_t bytes, src_bytes;
};
constexpr unsigned kMaxCopies = 64; /* in flight per thread: a 4-stage pipeline of 8 copies per stage is 32 */

struct Fiber {
    ThreadCtx ctx;
    void* sp;
    FiberState state;
    uint32_t wait_gen;
    uint32_t groups; /* cp.async groups committed */
    uint32_t ncopies;
    Copy copies[kMaxCopies];
};

struct Round {
    uint32_t mask; /* 0: slot free */
    uint32_t arrived;
    int kind;
};

struct Warp {
    uint32_t live_mask;    /* lanes that exist and have not exited */
    uint32_t lane_gen[32]; /* collectives completed, per lane */
    unsigned nslots;       /* rounds[0..nslots) may be in use */
    Round rounds[32];      /* open rounds: each lane waits in at most one */
    int8_t src[32];
    uint8_t size[32];
    alignas(16) unsigned char in[32][kInSlot];
    alignas(16) unsigned char out[32][kOutSlot];
};

struct Launch {
    const KernelEntry* kernel;
    void** args;
    dim3 grid, block;
    uint32_t shmem;
    int sched;
    uint32_t seed;
    bool lenient;
    StatsSlot* stats; /* the kernel lab's counters for this kernel, while counting */
    uint64_t nblocks;
    std::atomic<uint64_t> next{0};
};

struct Worker {
    void* sched_sp = nullptr;
    unsigned char* stacks = nullptr;
    size_t stack_stride = 0; /* guard page + stack */
    unsigned guarded = 0;    /* fibers whose guard page is in place */
    unsigned char* smem = nullptr;
    const Launch* launch = nullptr;
    BlockCtx block{};
    unsigned nthreads = 0, nwarps = 0;
    unsigned live = 0, exited = 0, first_exited = 0;
    uint32_t bar_gen = 0, bar_arrived = 0;
    int bar_acc_count = 0, bar_acc_and = 1, bar_acc_or = 0;
    int bar_res_count = 0, bar_res_and = 0, bar_res_or = 0;
    uint64_t rng = 0;
    Fiber fibers[kMaxThreads];
    Warp warps[kMaxWarps];
    uint16_t order[kMaxThreads];
    std::vector<AccessRec> access_log[kMaxWarps]; /* the kernel lab's, while counting */
};

__thread Worker* tl_worker = nullptr;
__thread Fiber* tl_fiber = nullptr;
thread_local std::string tl_last_error;

size_t page_size() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

size_t env_size(const char* name, size_t dflt) {
    const char* v = getenv(name);
    if (!v || !*v) return dflt;
    char* end = nullptr;
    unsigned long long x = strtoull(v, &end, 10);
    return (end && *end == 0 && x > 0) ? (size_t)x : dflt;
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Messages                                                                                                      */
/* ------------------------------------------------------------------------------------------------------------- */

std::string block_name(const Worker* w) {
    char buf[96];
    snprintf(buf, sizeof buf, "block (%u,%u,%u)", w->block.block_idx.x, w->block.block_idx.y, w->block.block_idx.z);
    return buf;
}

std::string thread_name(const Fiber* f) {
    char buf[96];
    snprintf(buf, sizeof buf, "thread %u (%u,%u,%u)", f->ctx.linear, f->ctx.thread_idx.x, f->ctx.thread_idx.y,
             f->ctx.thread_idx.z);
    return buf;
}

[[noreturn]] void die(const std::string& msg) {
    const char* k = (tl_worker && tl_worker->launch) ? tl_worker->launch->kernel->name : "?";
    fprintf(stderr, "cuemu: kernel `%s`: %s\n", k, msg.c_str());
    fflush(stderr);
    abort();
}

/* Lists the linear ids in `ids` compactly: "0..15, 17". */
std::string id_ranges(const std::vector<unsigned>& ids) {
    std::string s;
    size_t i = 0;
    while (i < ids.size()) {
        size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) j++;
        if (!s.empty()) s += ", ";
        s += std::to_string(ids[i]);
        if (j > i) s += ".." + std::to_string(ids[j]);
        i = j + 1;
    }
    return s;
}

[[noreturn]] void die_deadlock(Worker* w) {
    std::vector<unsigned> at_bar;
    std::vector<unsigned> at_warp;
    for (unsigned i = 0; i < w->nthreads; i++) {
        if (w->fibers[i].state == kWaitBarrier) at_bar.push_back(i);
        if (w->fibers[i].state == kWaitWarp) at_warp.push_back(i);
    }
    std::string msg = "deadlock in " + block_name(w) + ": " + std::to_string(w->live) + " live threads, none can run";
    if (!at_bar.empty()) {
        msg += "; " + std::to_string(at_bar.size()) + " wait in __syncthreads (threads " + id_ranges(at_bar) + ")";
    }
    if (!at_warp.empty()) {
        msg += "; " + std::to_string(at_warp.size()) + " wait in warp collectives (threads " + id_ranges(at_warp) + ")";
        for (unsigned k = 0; k < w->nwarps; k++) {
            const Warp& wp = w->warps[k];
            for (unsigned r = 0; r < wp.nslots; r++) {
                const Round& rd = wp.rounds[r];
                if (!rd.mask) continue;
                char buf[200];
                snprintf(buf, sizeof buf, "; warp %u: %s with mask 0x%08x, arrived 0x%08x, missing 0x%08x", k,
                         kind_name(rd.kind), rd.mask, rd.arrived, rd.mask & wp.live_mask & ~rd.arrived);
                msg += buf;
            }
        }
    }
    msg += " (a barrier or full-mask warp collective reached by only part of the block or warp)";
    die(msg);
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Fibers                                                                                                        */
/* ------------------------------------------------------------------------------------------------------------- */

inline void yield_to_scheduler() { cuemu_switch(&tl_fiber->sp, tl_worker->sched_sp); }

void complete_barrier(Worker* w) {
    w->bar_arrived = 0;
    w->bar_gen++;
    w->bar_res_count = w->bar_acc_count;
    w->bar_res_and = w->bar_acc_and;
    w->bar_res_or = w->bar_acc_or;
    w->bar_acc_count = 0;
    w->bar_acc_and = 1;
    w->bar_acc_or = 0;
}

/* ldmatrix (PTX ISA, "Warp-level matrix load instruction: ldmatrix"): lanes 8j..8j+7 give the 16-byte rows of
 * matrix j; lane l receives, per matrix, the 32-bit word of row l/4 at columns 2(l%4), 2(l%4)+1, or with .trans
 * the elements at column l/4 of rows 2(l%4) and 2(l%4)+1. */
void complete_ldmatrix(Worker* w, Warp& wp, uint32_t p) {
    if (p != 0xffffffffu) {
        char buf[160];
        snprintf(buf, sizeof buf, "ldmatrix needs all 32 lanes of the warp; participants 0x%08x", p);
        die(std::string(buf) + " in " + block_name(w));
    }
    int num, trans;
    memcpy(&num, wp.in[0] + 8, 4);
    memcpy(&trans, wp.in[0] + 12, 4);
    uint16_t m[4][8][8];
    for (unsigned l = 0; l < 32; l++) {
        int ln, lt;
        memcpy(&ln, wp.in[l] + 8, 4);
        memcpy(&lt, wp.in[l] + 12, 4);
        if (ln != num || lt != trans) die("ldmatrix: lanes of one warp disagree on .x" + std::to_string(num) +
                                          " / .trans (lane " + std::to_string(l) + ") in " + block_name(w));
        if ((int)(l / 8) >= num) continue;
        const unsigned char* row;
        memcpy(&row, wp.in[l], 8);
        if (reinterpret_cast<uintptr_t>(row) & 15) {
            char buf[160];
            snprintf(buf, sizeof buf, "ldmatrix: lane %u's row address %p is not 16-byte aligned", l, (const void*)row);
            die(std::string(buf) + " in " + block_name(w));
        }
        memcpy(m[l / 8][l % 8], row, 16);
    }
    if (stats_on()) {
        for (int j = 0; j < num; j++) {
            uint64_t rows[8];
            for (int i = 0; i < 8; i++) memcpy(&rows[i], wp.in[8 * j + i], 8);
            stats_ldmatrix_phase(w->launch->stats, rows);
        }
    }
    for (unsigned l = 0; l < 32; l++) {
        uint32_t r[4] = {0, 0, 0, 0};
        for (int j = 0; j < num; j++) {
            const unsigned q = l >> 2, c = 2 * (l & 3);
            const uint16_t lo = trans ? m[j][c][q] : m[j][q][c];
            const uint16_t hi = trans ? m[j][c + 1][q] : m[j][q][c + 1];
            r[j] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
        memcpy(wp.out[l], r, 16);
    }
}

/* mma.m16n8k8 .tf32 (PTX ISA, "Matrix Fragments for mma.m16n8k8" with .tf32): g = lane >> 2, t = lane & 3,
 * a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4]; b0 = B[t][g], b1 = B[t+4][g]; C/D as m16n8k16.
 * Operands must already be TF32 (low 13 bits zero: kernels round with cvt.rna.tf32.f32); a set low bit means a
 * kernel passed raw f32, which the hardware would silently truncate, so it aborts here. Products of TF32 values
 * are exact in f64 and summed there, rounded once. */
void complete_mma_tf32(Worker* w, Warp& wp, uint32_t p) {
    if (p != 0xffffffffu) {
        char buf[160];
        snprintf(buf, sizeof buf, "mma.sync.m16n8k8.tf32 needs all 32 lanes of the warp; participants 0x%08x", p);
        die(std::string(buf) + " in " + block_name(w));
    }
    float a[16][8], b[8][8];
    for (unsigned l = 0; l < 32; l++) {
        const unsigned g = l >> 2, t = l & 3;
        uint32_t ar[4], br[2];
        memcpy(ar, wp.in[l], 16);
        memcpy(br, wp.in[l] + 16, 8);
        for (unsigned i = 0; i < 6; i++) {
            const uint32_t v = i < 4 ? ar[i] : br[i - 4];
            if ((v & 0x1fffu) && (v & 0x7f800000u) != 0x7f800000u) {
                char buf[200];
                snprintf(buf, sizeof buf,
                         "mma.tf32: lane %u operand %u = 0x%08x is not TF32 (low 13 bits set; round it with "
                         "cvt.rna.tf32.f32 / to_tf32)", l, i, v);
                die(std::string(buf) + " in " + block_name(w));
            }
        }
        auto f = [](uint32_t v) {
            float x;
            memcpy(&x, &v, 4);
            return x;
        };
        a[g][t] = f(ar[0]);
        a[g + 8][t] = f(ar[1]);
        a[g][t + 4] = f(ar[2]);
        a[g + 8][t + 4] = f(ar[3]);
        b[t][g] = f(br[0]);
        b[t + 4][g] = f(br[1]);
    }
    for (unsigned l = 0; l < 32; l++) {
        const unsigned g = l >> 2, t = l & 3;
        float c[4], d[4];
        memcpy(c, wp.in[l] + 24, 16);
        for (unsigned i = 0; i < 4; i++) {
            const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
            double acc = 0.0;
            for (unsigned k = 0; k < 8; k++) acc += (double)a[row][k] * (double)b[k][col];
            d[i] = (float)(acc + (double)c[i]);
        }
        memcpy(wp.out[l], d, 16);
    }
}

void complete_round(Worker* w, Warp& wp, Round& rd) {
    const uint32_t p = rd.arrived;
    switch (rd.kind) {
    case kShfl:
        for (unsigned l = 0; l < 32; l++) {
            if (!(p >> l & 1u)) continue;
            int s = wp.src[l];
            if (s < 0 || !(p >> s & 1u)) s = (int)l; /* source absent or not participating: own value */
            memcpy(wp.out[l], wp.in[s], wp.size[l]);
        }
        break;
    case kBallot: {
        uint32_t ballot = 0;
        for (unsigned l = 0; l < 32; l++) {
            int pred;
            memcpy(&pred, wp.in[l], sizeof pred);
            if ((p >> l & 1u) && pred) ballot |= 1u << l;
        }
        for (unsigned l = 0; l < 32; l++) {
            if (!(p >> l & 1u)) continue;
            memcpy(wp.out[l], &ballot, 4);
            memcpy(wp.out[l] + 4, &p, 4);
        }
        break;
    }
    case kSyncwarp:
        break;
    case kMma: {
        if (p != 0xffffffffu) {
            char buf[160];
            snprintf(buf, sizeof buf, "mma.sync.m16n8k16 needs all 32 lanes of the warp; participants 0x%08x", p);
            die(std::string(buf) + " in " + block_name(w));
        }
        /* Rebuild A (16x16, row) and B (16x8, col) from the fragments (PTX ISA, "Matrix Fragments for
         * mma.m16n8k16 with floating point type"): g = lane >> 2, t = lane & 3. */
        float a[16][16], b[16][8];
        for (unsigned l = 0; l < 32; l++) {
            const unsigned g = l >> 2, t = l & 3;
            uint32_t ar[4], br[2];
            memcpy(ar, wp.in[l], 16);
            memcpy(br, wp.in[l] + 16, 8);
            for (unsigned i = 0; i < 8; i++) {
                const unsigned row = g + ((i & 2) ? 8 : 0);
                const unsigned col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
                const uint32_t reg = ar[i / 2];
                a[row][col] = cuemu_bf2f_bits_((unsigned short)((i & 1) ? reg >> 16 : reg & 0xffff));
            }
            for (unsigned i = 0; i < 4; i++) {
                const unsigned k = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
                const uint32_t reg = br[i / 2];
                b[k][g] = cuemu_bf2f_bits_((unsigned short)((i & 1) ? reg >> 16 : reg & 0xffff));
            }
        }
        for (unsigned l = 0; l < 32; l++) {
            const unsigned g = l >> 2, t = l & 3;
            float c[4], d[4];
            memcpy(c, wp.in[l] + 24, 16);
            for (unsigned i = 0; i < 4; i++) {
                const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
                double acc = 0.0; /* bf16 products are exact in fp32; accumulate wide, round once */
                for (unsigned k = 0; k < 16; k++) acc += (double)a[row][k] * (double)b[k][col];
                d[i] = (float)(acc + (double)c[i]);
            }
            memcpy(wp.out[l], d, 16);
        }
        break;
    }
    case kLdsm:
        complete_ldmatrix(w, wp, p);
        break;
    case kMmaTf32:
        complete_mma_tf32(w, wp, p);
        break;
    default:
        break;
    }
    for (unsigned l = 0; l < 32; l++) {
        if (p >> l & 1u) wp.lane_gen[l]++;
    }
    rd.mask = 0;
    rd.arrived = 0;
    rd.kind = kNone;
    while (wp.nslots > 0 && wp.rounds[wp.nslots - 1].mask == 0) wp.nslots--;
}

/* Deposits this lane's operand and waits for the round to complete; returns this lane's result slot. */
const unsigned char* warp_arrive(unsigned mask, int kind, const void* in, unsigned size, int src) {
    Worker* w = tl_worker;
    Fiber* f = tl_fiber;
    if (!w || !f) {
        fprintf(stderr, "cuemu: a warp collective was called outside a kernel launch\n");
        abort();
    }
    const unsigned lane = f->ctx.lane;
    const uint32_t bit = 1u << lane;
    Warp& wp = w->warps[f->ctx.warp];
    if (!(mask & bit)) {
        char buf[200];
        snprintf(buf, sizeof buf, "%s called with mask 0x%08x that does not include the calling lane %u",
                 kind_name(kind), mask, lane);
        die(std::string(buf) + " (" + block_name(w) + ", " + thread_name(f) + ")");
    }
    Round* rd = nullptr;
    Round* free_slot = nullptr;
    for (unsigned r = 0; r < wp.nslots; r++) {
        if (wp.rounds[r].mask == mask) {
            rd = &wp.rounds[r];
            break;
        }
        if (!wp.rounds[r].mask && !free_slot) free_slot = &wp.rounds[r];
    }
    if (rd && rd->kind != kind) {
        char buf[300];
        snprintf(buf, sizeof buf,
                 "warp %u: lane %u calls %s with mask 0x%08x while lanes 0x%08x wait in %s with the same mask "
                 "(divergent warp collectives)",
                 f->ctx.warp, lane, kind_name(kind), mask, rd->arrived, kind_name(rd->kind));
        die(std::string(buf) + " in " + block_name(w));
    }
    if (!rd) {
        rd = free_slot ? free_slot : &wp.rounds[wp.nslots++];
        rd->mask = mask;
        rd->kind = kind;
        rd->arrived = 0;
    }
    memcpy(wp.in[lane], in, size);
    wp.size[lane] = (uint8_t)size;
    wp.src[lane] = (int8_t)src;
    rd->arrived |= bit;
    if (rd->arrived == (rd->mask & wp.live_mask)) {
        complete_round(w, wp, *rd);
    } else {
        f->state = kWaitWarp;
        f->wait_gen = wp.lane_gen[lane];
        yield_to_scheduler();
    }
    return wp.out[lane];
}

void land_copy(const Copy& c) {
    memcpy(c.dst, c.src, c.src_bytes);
    memset(c.dst + c.src_bytes, 0, (size_t)(c.bytes - c.src_bytes));
}

/* Lands (in issue order) this thread's copies of groups < below_group and keeps the rest. */
void land_copies(Fiber* f, uint32_t below_group) {
    uint32_t kept = 0;
    for (uint32_t i = 0; i < f->ncopies; i++) {
        if (f->copies[i].group < below_group) {
            land_copy(f->copies[i]);
        } else {
            f->copies[kept++] = f->copies[i];
        }
    }
    f->ncopies = kept;
}

[[noreturn]] void fiber_exit() {
    Worker* w = tl_worker;
    Fiber* f = tl_fiber;
    land_copies(f, UINT32_MAX); /* a GPU would still complete them */
    f->state = kDone;
    w->live--;
    Warp& wp = w->warps[f->ctx.warp];
    wp.live_mask &= ~(1u << f->ctx.lane);
    if (w->launch->lenient) {
        if (w->bar_arrived > 0 && w->bar_arrived == w->live) complete_barrier(w);
    } else {
        if (w->exited++ == 0) w->first_exited = f->ctx.linear;
        if (w->bar_arrived > 0) {
            die(thread_name(f) + " of " + block_name(w) + " exited while " + std::to_string(w->bar_arrived) +
                " threads wait in __syncthreads (a barrier reached by only part of the block; CUEMU_LENIENT=1 "
                "stops counting exited threads)");
        }
    }
    for (unsigned r = 0; r < wp.nslots; r++) {
        Round& rd = wp.rounds[r];
        if (rd.mask && rd.arrived == (rd.mask & wp.live_mask)) complete_round(w, wp, rd);
    }
    cuemu_switch(&f->sp, w->sched_sp);
    __builtin_unreachable();
}

[[noreturn]] void fiber_entry() {
    const Launch* l = tl_worker->launch;
    l->kernel->thunk(l->args);
    fiber_exit();
}

void ensure_stacks(Worker* w, unsigned n) {
    const size_t pg = page_size();
    if (!w->stacks) {
        size_t kb = env_size("CUEMU_STACK_KB", 128);
        size_t stack = (kb * 1024 + pg - 1) / pg * pg;
        w->stack_stride = stack + pg;
        void* p = mmap(nullptr, w->stack_stride * kMaxThreads, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "cuemu: cannot map %zu bytes of fiber stacks\n", w->stack_stride * kMaxThreads);
            abort();
        }
        w->stacks = static_cast<unsigned char*>(p);
    }
    for (; w->guarded < n; w->guarded++) {
        /* The guard page sits at the bottom of each stack: an overflow faults instead of corrupting a neighbour. */
        if (mprotect(w->stacks + w->guarded * w->stack_stride, pg, PROT_NONE) != 0) {
            fprintf(stderr, "cuemu: mprotect of a stack guard page failed\n");
            abort();
        }
    }
}

void prepare_fiber(Worker* w, Fiber* f, unsigned i, uint64_t fpstate) {
    unsigned char* hi = w->stacks + (size_t)(i + 1) * w->stack_stride;
    uint64_t* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(hi) & ~uintptr_t(15));
    top[-1] = 0;                                             /* fake return address of fiber_entry */
    top[-2] = reinterpret_cast<uint64_t>(&fiber_entry);      /* popped by `ret` */
    for (int k = 3; k <= 8; k++) top[-k] = 0;                /* rbp, rbx, r12..r15 */
    top[-9] = fpstate;                                       /* MXCSR (low 4 bytes), x87 control word */
    f->sp = &top[-9];                                        /* ≡ 8 mod 16, so fiber_entry starts with rsp ≡ 8 */
    f->state = kReady;
    f->wait_gen = 0;
    f->groups = 0;
    f->ncopies = 0;
}

uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void run_block(Worker* w, const Launch* l, uint64_t b) {
    const unsigned bx = l->block.x, by = l->block.y;
    const unsigned n = bx * by * l->block.z;
    w->launch = l;
    w->block.grid_dim = l->grid;
    w->block.block_dim = l->block;
    w->block.block_idx.x = (unsigned)(b % l->grid.x);
    w->block.block_idx.y = (unsigned)((b / l->grid.x) % l->grid.y);
    w->block.block_idx.z = (unsigned)(b / ((uint64_t)l->grid.x * l->grid.y));
    w->block.dyn_smem = w->smem;
    w->block.dyn_smem_bytes = l->shmem;
    memset(w->smem, 0xCD, l->shmem); /* poison: a GPU leaves garbage there */
    w->nthreads = n;
    w->nwarps = (n + 31) / 32;
    w->live = n;
    w->exited = 0;
    w->bar_gen = 0;
    w->bar_arrived = 0;
    w->bar_acc_count = 0;
    w->bar_acc_and = 1;
    w->bar_acc_or = 0;
    ensure_stacks(w, n);

    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    const uint64_t fpstate = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    for (unsigned i = 0; i < n; i++) {
        Fiber* f = &w->fibers[i];
        f->ctx.linear = i;
        f->ctx.thread_idx = uint3{i % bx, (i / bx) % by, i / (bx * by)};
        f->ctx.lane = i % 32;
        f->ctx.warp = i / 32;
        prepare_fiber(w, f, i, fpstate);
        w->order[i] = (uint16_t)i;
    }
    for (unsigned k = 0; k < w->nwarps; k++) {
        Warp& wp = w->warps[k];
        const unsigned lanes = (k + 1) * 32 <= n ? 32 : n - k * 32;
        wp.live_mask = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
        memset(wp.lane_gen, 0, sizeof wp.lane_gen);
        wp.nslots = 0;
    }
    if (l->sched == kReverse) {
        for (unsigned i = 0; i < n; i++) w->order[i] = (uint16_t)(n - 1 - i);
    }
    w->rng = (b + 1) * 0x2545f4914f6cdd1dull ^ ((uint64_t)l->seed << 32);

    cuemu_bcur = &w->block;
    while (w->live > 0) {
        if (l->sched == kShuffle) {
            for (unsigned i = n - 1; i > 0; i--) {
                unsigned j = (unsigned)(splitmix(w->rng) % (i + 1));
                uint16_t t = w->order[i];
                w->order[i] = w->order[j];
                w->order[j] = t;
            }
        }
        bool progressed = false;
        for (unsigned k = 0; k < n; k++) {
            Fiber* f = &w->fibers[w->order[k]];
            switch (f->state) {
            case kReady:
                break;
            case kWaitBarrier:
                if (f->wait_gen == w->bar_gen) continue;
                break;
            case kWaitWarp:
                if (f->wait_gen == w->warps[f->ctx.warp].lane_gen[f->ctx.lane]) continue;
                break;
            case kDone:
                continue;
            }
            f->state = kReady;
            tl_fiber = f;
            cuemu_tcur = &f->ctx;
            cuemu_switch(&w->sched_sp, f->sp);
            progressed = true;
        }
        if (w->live > 0 && !progressed) die_deadlock(w);
    }
    tl_fiber = nullptr;
    cuemu_tcur = nullptr;
    cuemu_bcur = nullptr;
    for (unsigned k = 0; k < w->nwarps; k++) stats_flush_warp(w->launch->stats, w->access_log[k]);
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Worker pool                                                                                                   */
/* ------------------------------------------------------------------------------------------------------------- */

struct Pool {
    std::mutex launch_mu; /* one launch at a time, like a single stream */
    std::mutex mu;
    std::condition_variable start_cv, done_cv;
    std::vector<std::thread> threads;
    Launch* current = nullptr;
    uint64_t epoch = 0;
    unsigned busy = 0;

    explicit Pool(unsigned n) {
        for (unsigned i = 0; i < n; i++) threads.emplace_back([this] { worker_main(); });
        for (auto& t : threads) t.detach(); /* they live as long as the process */
    }

    void worker_main() {
        Worker* w = new Worker();
        void* smem = aligned_alloc(256, kMaxDynSmem);
        if (!smem) abort();
        w->smem = static_cast<unsigned char*>(smem);
        tl_worker = w;
        uint64_t seen = 0;
        for (;;) {
            Launch* l;
            {
                std::unique_lock<std::mutex> g(mu);
                start_cv.wait(g, [&] { return epoch != seen; });
                seen = epoch;
                l = current;
            }
            for (;;) {
                uint64_t b = l->next.fetch_add(1, std::memory_order_relaxed);
                if (b >= l->nblocks) break;
                run_block(w, l, b);
            }
            w->launch = nullptr;
            {
                std::lock_guard<std::mutex> g(mu);
                if (--busy == 0) done_cv.notify_all();
            }
        }
    }

    void run(Launch* l) {
        std::lock_guard<std::mutex> serial(launch_mu);
        std::unique_lock<std::mutex> g(mu);
        current = l;
        busy = (unsigned)threads.size();
        epoch++;
        start_cv.notify_all();
        done_cv.wait(g, [&] { return busy == 0; });
        current = nullptr;
    }
};

Pool& pool() {
    static Pool* p = [] {
        unsigned hw = std::thread::hardware_concurrency();
        unsigned n = (unsigned)env_size("CUEMU_THREADS", hw ? hw : 1);
        return new Pool(n > 64 ? 64 : n);
    }();
    return *p;
}

const KernelEntry* find_kernel(const char* name) {
    size_t n;
    const KernelEntry* t = kernel_table(&n);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(t[i].name, name) == 0) return &t[i];
    }
    return nullptr;
}

int fail(int code, const std::string& msg) {
    tl_last_error = msg;
    return code;
}

} // namespace

/* ------------------------------------------------------------------------------------------------------------- */
/* Device-side entry points (called from kernels through cuemu.h)                                                */
/* ------------------------------------------------------------------------------------------------------------- */

void syncthreads() {
    Worker* w = tl_worker;
    Fiber* f = tl_fiber;
    if (!w || !f) {
        fprintf(stderr, "cuemu: __syncthreads called outside a kernel launch\n");
        abort();
    }
    if (!w->launch->lenient && w->exited > 0) {
        die(thread_name(f) + " of " + block_name(w) + " reached __syncthreads after " + std::to_string(w->exited) +
            " threads of the block exited (first: thread " + std::to_string(w->first_exited) +
            "); a barrier must be reached by every thread of the block");
    }
    w->bar_arrived++;
    const unsigned expected = w->launch->lenient ? w->live : w->nthreads;
    if (w->bar_arrived == expected) {
        complete_barrier(w);
        return;
    }
    f->state = kWaitBarrier;
    f->wait_gen = w->bar_gen;
    yield_to_scheduler();
}

int syncthreads_reduce(int pred, int op) {
    Worker* w = tl_worker;
    if (w) {
        w->bar_acc_count += pred != 0;
        w->bar_acc_and &= pred != 0;
        w->bar_acc_or |= pred != 0;
    }
    syncthreads();
    return op == 0 ? w->bar_res_count : (op == 1 ? w->bar_res_and : w->bar_res_or);
}

void warp_shfl(unsigned mask, const void* in, void* out, unsigned size, int mode, int arg, int width) {
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
        die("shuffle width " + std::to_string(width) + " is not a power of two <= 32");
    }
    const int lane = (int)tl_fiber->ctx.lane;
    const int lo = lane & ~(width - 1), hi = lo + width - 1;
    int src;
    switch (mode) {
    case SHFL_IDX:
        src = lo + (arg & (width - 1));
        break;
    case SHFL_UP:
        src = (arg < 0 || lane - arg < lo) ? -1 : lane - arg;
        break;
    case SHFL_DOWN:
        src = (arg < 0 || lane + arg > hi) ? -1 : lane + arg;
        break;
    default: { /* xor: earlier segments are reachable, later ones give the own value (CUDA programming guide) */
        const unsigned j = (unsigned)lane ^ (unsigned)arg;
        src = j > (unsigned)hi ? -1 : (int)j;
        break;
    }
    }
    const unsigned char* r = warp_arrive(mask, kShfl, in, size, src);
    memcpy(out, r, size);
}

unsigned warp_ballot(unsigned mask, int pred, unsigned* participants) {
    int p = pred != 0;
    const unsigned char* r = warp_arrive(mask, kBallot, &p, sizeof p, -1);
    unsigned ballot, parts;
    memcpy(&ballot, r, 4);
    memcpy(&parts, r + 4, 4);
    if (participants) *participants = parts;
    return ballot;
}

void warp_sync(unsigned mask) { warp_arrive(mask, kSyncwarp, nullptr, 0, -1); }

unsigned warp_activemask() {
    if (!tl_worker || !tl_fiber) return 0;
    return tl_worker->warps[tl_fiber->ctx.warp].live_mask;
}

void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    unsigned char ops[40];
    memcpy(ops, a, 16);
    memcpy(ops + 16, b, 8);
    memcpy(ops + 24, c, 16);
    const unsigned char* r = warp_arrive(0xffffffffu, kMma, ops, sizeof ops, -1);
    memcpy(d, r, 16);
    if (stats_on() && tl_fiber->ctx.lane == 0) stats_count_mma(tl_worker->launch->stats, 0);
}

/* The kernel lab: one access of the calling thread into its warp's log (shared when inside the block's dynamic
 * shared memory; static __shared__ arrays, being thread_local objects, count as global here). */
void record(const void* p, unsigned size, int store, uint64_t site) {
    Worker* w = tl_worker;
    Fiber* f = tl_fiber;
    if (!w || !f) return;
    const auto a = reinterpret_cast<uintptr_t>(p), s = reinterpret_cast<uintptr_t>(w->block.dyn_smem);
    const bool shared = a >= s && a < s + w->block.dyn_smem_bytes;
    w->access_log[f->ctx.warp].push_back(
        AccessRec{site, (uint8_t)f->ctx.lane, (uint8_t)size, (uint8_t)shared, (uint8_t)store, (uint64_t)a});
}

__attribute__((noinline)) void note_access(const void* p, unsigned size, int store) {
    if (!stats_on() || !tl_fiber) return;
    record(p, size, store, reinterpret_cast<uint64_t>(__builtin_return_address(0)));
}

__attribute__((noinline)) void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
    Worker* w = tl_worker;
    Fiber* f = tl_fiber;
    if (!w || !f) {
        fprintf(stderr, "cuemu: cp.async called outside a kernel launch\n");
        abort();
    }
    if (stats_on()) { /* one instruction: a global read (of what is really read) and a shared write */
        const uint64_t site = reinterpret_cast<uint64_t>(__builtin_return_address(0));
        if (src_bytes > 0) record(src, src_bytes, 0, site);
        record(dst, bytes, 1, site);
    }
    if ((bytes != 4 && bytes != 8 && bytes != 16) || src_bytes > bytes) {
        die("cp.async of " + std::to_string(bytes) + " bytes with src-size " + std::to_string(src_bytes) +
            " (4, 8 or 16 bytes, src-size <= size) in " + block_name(w) + ", " + thread_name(f));
    }
    if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) % bytes) {
        char buf[200];
        snprintf(buf, sizeof buf, "cp.async of %u bytes from %p to %p: both must be %u-byte aligned", bytes, src, dst,
                 bytes);
        die(std::string(buf) + " in " + block_name(w) + ", " + thread_name(f));
    }
    {
        /* a copy past the launch's dynamic shared memory (into the rest of the emulator's 227 KiB buffer, or past
         * it) would land in memory a GPU does not give the block */
        const auto d = reinterpret_cast<uintptr_t>(dst), s0 = reinterpret_cast<uintptr_t>(w->block.dyn_smem);
        if (d >= s0 && d < s0 + kMaxDynSmem && d + bytes > s0 + w->block.dyn_smem_bytes) {
            char buf[200];
            snprintf(buf, sizeof buf, "cp.async of %u bytes to dynamic shared offset %zu, past the launch's %zu bytes",
                     bytes, (size_t)(d - s0), w->block.dyn_smem_bytes);
            die(std::string(buf) + " in " + block_name(w) + ", " + thread_name(f));
        }
    }
    Copy c{static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), f->groups, (uint8_t)bytes,
           (uint8_t)src_bytes};
    const int sched = w->launch->sched;
    if (sched == kReverse || (sched == kShuffle && (splitmix(w->rng) & 1))) {
        land_copy(c);
        return;
    }
    if (f->ncopies == kMaxCopies) {
        die("more than " + std::to_string(kMaxCopies) + " cp.async in flight in one thread (" + block_name(w) + ", " +
            thread_name(f) + ")");
    }
    f->copies[f->ncopies++] = c;
}

void cp_async_commit() {
    if (tl_fiber) tl_fiber->groups++;
}

void cp_async_wait(int n) {
    Fiber* f = tl_fiber;
    if (!f) return;
    const uint32_t keep = n < 0 ? 0u : (uint32_t)n;
    land_copies(f, f->groups > keep ? f->groups - keep : 0u);
}

void mma_m16n8k8_tf32(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    unsigned char ops[40];
    memcpy(ops, a, 16);
    memcpy(ops + 16, b, 8);
    memcpy(ops + 24, c, 16);
    const unsigned char* r = warp_arrive(0xffffffffu, kMmaTf32, ops, sizeof ops, -1);
    memcpy(d, r, 16);
    if (stats_on() && tl_fiber->ctx.lane == 0) stats_count_mma(tl_worker->launch->stats, 1);
}

void ldmatrix(uint32_t* r, const void* addr, int num, int trans) {
    if (num != 1 && num != 2 && num != 4) die("ldmatrix .x" + std::to_string(num) + " (x1, x2 or x4)");
    unsigned char ops[16];
    memcpy(ops, &addr, 8);
    memcpy(ops + 8, &num, 4);
    memcpy(ops + 12, &trans, 4);
    const unsigned char* out = warp_arrive(0xffffffffu, kLdsm, ops, sizeof ops, -1);
    memcpy(r, out, 4 * (size_t)num);
}

void trap(const char* what) {
    Worker* w = tl_worker;
    if (w && tl_fiber) die(std::string(what) + " in " + block_name(w) + ", " + thread_name(tl_fiber));
    fprintf(stderr, "cuemu: %s\n", what);
    abort();
}

} // namespace cuemu

/* ---------------------------------------------------------------------------------------------------------------
 * Host API (llamagen_kernels.h)
 * ------------------------------------------------------------------------------------------------------------- */
using namespace cuemu;

extern "C" int cuemu_launch_ex(const char* name, const uint32_t grid[3], const uint32_t block[3],
                               uint32_t shared_bytes, void** args, const CuemuLaunchOptions* opts) {
    tl_last_error.clear();
    if (!name) return fail(CUEMU_ERR_UNKNOWN_KERNEL, "kernel name is NULL");
    const KernelEntry* k = find_kernel(name);
    if (!k) return fail(CUEMU_ERR_UNKNOWN_KERNEL, std::string("unknown kernel `") + name + "`");
    if (!grid || !block) return fail(CUEMU_ERR_INVALID_CONFIG, "grid or block is NULL");
    char buf[256];
    if (grid[0] < 1 || grid[1] < 1 || grid[2] < 1 || grid[0] > 0x7fffffffu || grid[1] > 65535 || grid[2] > 65535) {
        snprintf(buf, sizeof buf, "kernel `%s`: grid (%u,%u,%u) outside 1..(2^31-1, 65535, 65535)", name, grid[0],
                 grid[1], grid[2]);
        return fail(CUEMU_ERR_INVALID_CONFIG, buf);
    }
    const uint64_t nthreads = (uint64_t)block[0] * block[1] * block[2];
    if (block[0] < 1 || block[1] < 1 || block[2] < 1 || block[0] > 1024 || block[1] > 1024 || block[2] > 64 ||
        nthreads > kMaxThreads) {
        snprintf(buf, sizeof buf, "kernel `%s`: block (%u,%u,%u) outside 1..(1024,1024,64) or over 1024 threads", name,
                 block[0], block[1], block[2]);
        return fail(CUEMU_ERR_INVALID_CONFIG, buf);
    }
    if (shared_bytes > kMaxDynSmem) {
        snprintf(buf, sizeof buf, "kernel `%s`: %u bytes of dynamic shared memory, over the %zu-byte maximum", name,
                 shared_bytes, kMaxDynSmem);
        return fail(CUEMU_ERR_INVALID_CONFIG, buf);
    }
    const char* sig = k->signature();
    const size_t nargs = *sig ? (size_t)std::count(sig, sig + strlen(sig), ',') + 1 : 0;
    if (nargs > 0 && !args) return fail(CUEMU_ERR_INVALID_ARGS, std::string("kernel `") + name + "`: args is NULL");
    for (size_t i = 0; i < nargs; i++) {
        if (!args[i]) {
            return fail(CUEMU_ERR_INVALID_ARGS,
                        std::string("kernel `") + name + "`: args[" + std::to_string(i) + "] is NULL");
        }
    }
    int sched = opts ? opts->sched : -1;
    if (sched < 0) {
        const char* s = getenv("CUEMU_SCHED");
        if (!s || !*s || strcmp(s, "forward") == 0) {
            sched = kForward;
        } else if (strcmp(s, "reverse") == 0) {
            sched = kReverse;
        } else if (strcmp(s, "shuffle") == 0) {
            sched = kShuffle;
        } else {
            return fail(CUEMU_ERR_INVALID_CONFIG,
                        std::string("CUEMU_SCHED=") + s + ": expected forward, reverse or shuffle");
        }
    } else if (sched > kShuffle) {
        return fail(CUEMU_ERR_INVALID_CONFIG, "sched option " + std::to_string(sched) + ": expected -1..2");
    }
    const char* len = getenv("CUEMU_LENIENT");

    Launch l;
    l.kernel = k;
    l.args = args;
    l.grid = dim3(grid[0], grid[1], grid[2]);
    l.block = dim3(block[0], block[1], block[2]);
    l.shmem = shared_bytes;
    l.sched = sched;
    l.seed = opts ? opts->seed : 0;
    l.lenient = len && strcmp(len, "1") == 0;
    l.stats = stats_on() ? stats_slot(name) : nullptr;
    if (l.stats) stats_count_launch(l.stats);
    l.nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
    pool().run(&l);
    return CUEMU_OK;
}

extern "C" int cuemu_launch(const char* name, const uint32_t grid[3], const uint32_t block[3], uint32_t shared_bytes,
                            void** args) {
    return cuemu_launch_ex(name, grid, block, shared_bytes, args, nullptr);
}

extern "C" const char* cuemu_last_error(void) { return tl_last_error.c_str(); }

extern "C" int cuemu_kernel_signature(const char* name, char* buf, uint32_t len) {
    const KernelEntry* k = name ? find_kernel(name) : nullptr;
    if (!k) return fail(CUEMU_ERR_UNKNOWN_KERNEL, std::string("unknown kernel `") + (name ? name : "(null)") + "`");
    if (buf && len > 0) {
        snprintf(buf, len, "%s", k->signature());
    }
    return CUEMU_OK;
}

extern "C" int cuemu_kernel_count(void) {
    size_t n;
    kernel_table(&n);
    return (int)n;
}

extern "C" const char* cuemu_kernel_name(int i) {
    size_t n;
    const KernelEntry* t = kernel_table(&n);
    return (i >= 0 && (size_t)i < n) ? t[i].name : nullptr;
}
