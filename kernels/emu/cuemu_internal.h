/* cuemu_internal.h: what runtime.cpp and registry.cpp share (not for kernels). */
#ifndef CUEMU_INTERNAL_H
#define CUEMU_INTERNAL_H

#include <stddef.h>

namespace cuemu {
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
