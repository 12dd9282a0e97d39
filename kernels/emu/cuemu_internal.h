/* cuemu_internal.h: what runtime.cpp and registry.cpp share (not for kernels). */
#ifndef CUEMU_INTERNAL_H
#define CUEMU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <vector>

namespace cuemu {
/* ---- the kernel lab's counters (stats.cpp) -------------------------------------------------------------------- */

/* One instrumented memory access of one lane. `site` is the calling instruction's address in the kernel (the
 * wrappers are inlined, the recorder is not): the k-th access of each lane at one site is one warp request, as the
 * hardware issues one instruction, also when some lanes skip the site (padding, bounds). */
struct AccessRec {
    uint64_t site;
    uint8_t lane, size, shared, store;
    uint64_t addr;
};
/* Whether counting is on (cuemu_stats_enable); checked before anything is recorded. */
bool stats_on();
/* The per-kernel counters a launch adds to (besides the totals); created on first use, kept until re-enabled. */
struct StatsSlot;
StatsSlot* stats_slot(const char* kernel);
/* Folds one warp's access log of a finished block into the totals and `slot`, then clears it. */
void stats_flush_warp(StatsSlot* slot, std::vector<AccessRec>& log);
/* ldmatrix: the 16-byte row addresses of one 8-row phase (matrix). */
void stats_ldmatrix_phase(StatsSlot* slot, const uint64_t rows[8]);
void stats_count_mma(StatsSlot* slot, int tf32);
void stats_count_launch(StatsSlot* slot);

struct KernelEntry {
    const char* name;
    /* Runs the kernel body once for the current fiber: casts args[i] to the i-th parameter type and calls it. */
    void (*thunk)(void** args);
    /* Argument signature, e.g. "P,P,P,S12" (see llamagen_kernels.h). */
    const char* (*signature)();
};
/* The registry (registry.cpp): every kernel of the table in llamagen_kernels.h. */
const KernelEntry* kernel_table(size_t* count);
} // namespace cuemu

#endif
