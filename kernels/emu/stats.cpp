/*
 * stats.cpp: the kernel lab's counters (cuemu_stats_*, llamagen_kernels.h). While enabled, the emulator records
 * every instrumented access (cp.async, load16/store16 of common.cuh, __ldg) per lane; when a block finishes, each
 * warp's log is grouped into requests (the k-th access of each lane: one instruction) and scored as the hardware
 * would serve it:
 *   global: 32-byte sectors touched vs the minimum for the distinct bytes requested (coalescing);
 *   shared: wavefronts (bank-conflict passes) vs phases, a phase being the lanes served together (128 bytes: 8
 *           lanes of 16 bytes, 16 of 8, 32 of 4); a bank's ways are the distinct 4-byte words it must deliver;
 *   ldmatrix: the same per 8-row matrix; mma: counted per shape.
 * Plain pointer loads and stores are not seen (they compile to bare C++); the lab says so next to its figures.
 */
#include "cuemu_internal.h"

#include "../llamagen_kernels.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <set>

namespace cuemu {
namespace {
std::atomic<int> g_on{0};
struct Totals {
    std::atomic<uint64_t> mma_bf16{0}, mma_tf32{0};
    std::atomic<uint64_t> ldsm_req{0}, ldsm_phases{0}, ldsm_waves{0};
    std::atomic<uint64_t> g_req{0}, g_sectors{0}, g_ideal{0}, g_bytes{0};
    std::atomic<uint64_t> s_req{0}, s_phases{0}, s_waves{0};
    std::atomic<uint32_t> ldsm_worst{0}, s_worst{0};
};
Totals g_t;

void max_into(std::atomic<uint32_t>& a, uint32_t v) {
    uint32_t cur = a.load();
    while (v > cur && !a.compare_exchange_weak(cur, v)) {
    }
}

/* Ways of one shared-memory phase: the most distinct 4-byte words any one bank must deliver. */
uint32_t phase_ways(const std::vector<std::pair<uint64_t, uint32_t>>& acc) {
    std::map<uint32_t, std::set<uint64_t>> banks;
    for (const auto& a : acc)
        for (uint64_t w = a.first / 4; w < (a.first + a.second + 3) / 4; w++) banks[(uint32_t)(w % 32)].insert(w);
    uint32_t ways = 1;
    for (const auto& b : banks) ways = std::max<uint32_t>(ways, (uint32_t)b.second.size());
    return ways;
}
} // namespace

bool stats_on() { return g_on.load(std::memory_order_relaxed) != 0; }

void stats_count_mma(int tf32) { (tf32 ? g_t.mma_tf32 : g_t.mma_bf16).fetch_add(1, std::memory_order_relaxed); }

void stats_ldmatrix_phase(const uint64_t rows[8]) {
    std::vector<std::pair<uint64_t, uint32_t>> acc;
    for (int i = 0; i < 8; i++) acc.emplace_back(rows[i], 16u);
    const uint32_t ways = phase_ways(acc);
    g_t.ldsm_phases.fetch_add(1, std::memory_order_relaxed);
    g_t.ldsm_waves.fetch_add(ways, std::memory_order_relaxed);
    max_into(g_t.ldsm_worst, ways);
}

void stats_flush_warp(std::vector<AccessRec>& log) {
    if (log.empty()) return;
    /* k = how many earlier accesses this lane made at this site (the log is in each lane's program order) */
    std::vector<uint32_t> k(log.size());
    {
        std::map<std::pair<uint64_t, uint8_t>, uint32_t> seen;
        for (size_t q = 0; q < log.size(); q++) k[q] = seen[{log[q].site ^ ((uint64_t)log[q].shared << 63), log[q].lane}]++;
    }
    std::vector<size_t> order(log.size());
    for (size_t q = 0; q < order.size(); q++) order[q] = q;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        if (log[a].site != log[b].site) return log[a].site < log[b].site;
        if (k[a] != k[b]) return k[a] < k[b];
        return log[a].shared < log[b].shared;
    });
    std::vector<AccessRec> sorted(log.size());
    std::vector<uint32_t> ks(log.size());
    for (size_t q = 0; q < order.size(); q++) {
        sorted[q] = log[order[q]];
        ks[q] = k[order[q]];
    }
    log.swap(sorted);
    size_t i = 0;
    while (i < log.size()) {
        size_t j = i;
        while (j < log.size() && log[j].site == log[i].site && ks[j] == ks[i] && log[j].shared == log[i].shared) j++;
        if (log[i].shared) {
            /* lanes in lane order, split into phases of 128 bytes */
            std::vector<AccessRec> r(log.begin() + (long)i, log.begin() + (long)j);
            std::sort(r.begin(), r.end(), [](const AccessRec& a, const AccessRec& b) { return a.lane < b.lane; });
            const uint32_t per = std::max<uint32_t>(1, 128u / std::max<uint32_t>(1, r[0].size));
            uint64_t phases = 0, waves = 0;
            for (size_t k = 0; k < r.size(); k += per) {
                std::vector<std::pair<uint64_t, uint32_t>> acc;
                for (size_t q = k; q < std::min(r.size(), k + per); q++) acc.emplace_back(r[q].addr, r[q].size);
                const uint32_t ways = phase_ways(acc);
                phases++;
                waves += ways;
                max_into(g_t.s_worst, ways);
            }
            g_t.s_req.fetch_add(1, std::memory_order_relaxed);
            g_t.s_phases.fetch_add(phases, std::memory_order_relaxed);
            g_t.s_waves.fetch_add(waves, std::memory_order_relaxed);
        } else {
            std::set<uint64_t> sectors, bytes;
            for (size_t k = i; k < j; k++) {
                for (uint64_t s = log[k].addr / 32; s <= (log[k].addr + log[k].size - 1) / 32; s++) sectors.insert(s);
                for (uint64_t b = log[k].addr; b < log[k].addr + log[k].size; b++) bytes.insert(b);
            }
            g_t.g_req.fetch_add(1, std::memory_order_relaxed);
            g_t.g_sectors.fetch_add(sectors.size(), std::memory_order_relaxed);
            g_t.g_ideal.fetch_add((bytes.size() + 31) / 32, std::memory_order_relaxed);
            g_t.g_bytes.fetch_add(bytes.size(), std::memory_order_relaxed);
        }
        i = j;
    }
    log.clear();
}
} // namespace cuemu

using namespace cuemu;

static uint32_t sat(const std::atomic<uint64_t>& v) {
    const uint64_t x = v.load();
    return x > 0xffffffffull ? 0xffffffffu : (uint32_t)x;
}

extern "C" void cuemu_stats_enable(int on) {
    if (on) {
        for (auto* a : {&g_t.mma_bf16, &g_t.mma_tf32, &g_t.ldsm_req, &g_t.ldsm_phases, &g_t.ldsm_waves, &g_t.g_req,
                        &g_t.g_sectors, &g_t.g_ideal, &g_t.g_bytes, &g_t.s_req, &g_t.s_phases, &g_t.s_waves})
            a->store(0);
        g_t.ldsm_worst.store(0);
        g_t.s_worst.store(0);
    }
    g_on.store(on ? 1 : 0);
}

extern "C" void cuemu_stats_read(CuemuStats* out) {
    if (!out) return;
    out->mma_bf16 = sat(g_t.mma_bf16);
    out->mma_tf32 = sat(g_t.mma_tf32);
    out->ldsm_phases = sat(g_t.ldsm_phases);
    out->ldsm_wavefronts = sat(g_t.ldsm_waves);
    out->ldsm_worst_ways = g_t.ldsm_worst.load();
    out->global_requests = sat(g_t.g_req);
    out->global_sectors = sat(g_t.g_sectors);
    out->global_ideal_sectors = sat(g_t.g_ideal);
    out->global_bytes = sat(g_t.g_bytes);
    out->shared_requests = sat(g_t.s_req);
    out->shared_phases = sat(g_t.s_phases);
    out->shared_wavefronts = sat(g_t.s_waves);
    out->shared_worst_ways = g_t.s_worst.load();
}
