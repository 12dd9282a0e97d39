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
#include <cstdio>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

namespace cuemu {
namespace {
std::atomic<int> g_on{0};
struct Totals {
    std::atomic<uint64_t> mma_bf16{0}, mma_tf32{0};
    std::atomic<uint64_t> ldsm_phases{0}, ldsm_waves{0};
    std::atomic<uint64_t> g_req{0}, g_sectors{0}, g_ideal{0}, g_bytes{0};
    std::atomic<uint64_t> s_req{0}, s_phases{0}, s_waves{0};
    std::atomic<uint64_t> launches{0};
    std::atomic<uint32_t> ldsm_worst{0}, s_worst{0};
};
Totals g_t;
} // namespace

struct StatsSlot {
    std::string name;
    Totals t;
};

namespace {
std::mutex g_slots_mu;
std::vector<std::unique_ptr<StatsSlot>> g_slots; /* in order of first launch */

/* Every update goes to the totals and, when the launch has one, to its kernel's slot. */
template <typename F> void both(StatsSlot* slot, F f) {
    f(g_t);
    if (slot) f(slot->t);
}

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

StatsSlot* stats_slot(const char* kernel) {
    std::lock_guard<std::mutex> g(g_slots_mu);
    for (auto& s : g_slots)
        if (s->name == kernel) return s.get();
    g_slots.push_back(std::make_unique<StatsSlot>());
    g_slots.back()->name = kernel;
    return g_slots.back().get();
}

void stats_count_mma(StatsSlot* slot, int tf32) {
    both(slot, [&](Totals& t) { (tf32 ? t.mma_tf32 : t.mma_bf16).fetch_add(1, std::memory_order_relaxed); });
}

void stats_ldmatrix_phase(StatsSlot* slot, const uint64_t rows[8]) {
    std::vector<std::pair<uint64_t, uint32_t>> acc;
    for (int i = 0; i < 8; i++) acc.emplace_back(rows[i], 16u);
    const uint32_t ways = phase_ways(acc);
    both(slot, [&](Totals& t) {
        t.ldsm_phases.fetch_add(1, std::memory_order_relaxed);
        t.ldsm_waves.fetch_add(ways, std::memory_order_relaxed);
        max_into(t.ldsm_worst, ways);
    });
}

void stats_flush_warp(StatsSlot* slot, std::vector<AccessRec>& log) {
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
            uint32_t worst = 0;
            for (size_t k = 0; k < r.size(); k += per) {
                std::vector<std::pair<uint64_t, uint32_t>> acc;
                for (size_t q = k; q < std::min(r.size(), k + per); q++) acc.emplace_back(r[q].addr, r[q].size);
                const uint32_t ways = phase_ways(acc);
                phases++;
                waves += ways;
                worst = std::max(worst, ways);
            }
            both(slot, [&](Totals& t) {
                max_into(t.s_worst, worst);
                t.s_req.fetch_add(1, std::memory_order_relaxed);
                t.s_phases.fetch_add(phases, std::memory_order_relaxed);
                t.s_waves.fetch_add(waves, std::memory_order_relaxed);
            });
        } else {
            std::set<uint64_t> sectors, bytes;
            for (size_t k = i; k < j; k++) {
                for (uint64_t s = log[k].addr / 32; s <= (log[k].addr + log[k].size - 1) / 32; s++) sectors.insert(s);
                for (uint64_t b = log[k].addr; b < log[k].addr + log[k].size; b++) bytes.insert(b);
            }
            both(slot, [&](Totals& t) {
                t.g_req.fetch_add(1, std::memory_order_relaxed);
                t.g_sectors.fetch_add(sectors.size(), std::memory_order_relaxed);
                t.g_ideal.fetch_add((bytes.size() + 31) / 32, std::memory_order_relaxed);
                t.g_bytes.fetch_add(bytes.size(), std::memory_order_relaxed);
            });
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

static void zero(Totals& t) {
    for (auto* a : {&t.mma_bf16, &t.mma_tf32, &t.ldsm_phases, &t.ldsm_waves, &t.g_req, &t.g_sectors,
                    &t.g_ideal, &t.g_bytes, &t.s_req, &t.s_phases, &t.s_waves, &t.launches})
        a->store(0);
    t.ldsm_worst.store(0);
    t.s_worst.store(0);
}

static void read(const Totals& t, CuemuStats* out) {
    out->launches = sat(t.launches);
    out->mma_bf16 = sat(t.mma_bf16);
    out->mma_tf32 = sat(t.mma_tf32);
    out->ldsm_phases = sat(t.ldsm_phases);
    out->ldsm_wavefronts = sat(t.ldsm_waves);
    out->ldsm_worst_ways = t.ldsm_worst.load();
    out->global_requests = sat(t.g_req);
    out->global_sectors = sat(t.g_sectors);
    out->global_ideal_sectors = sat(t.g_ideal);
    out->global_bytes = sat(t.g_bytes);
    out->shared_requests = sat(t.s_req);
    out->shared_phases = sat(t.s_phases);
    out->shared_wavefronts = sat(t.s_waves);
    out->shared_worst_ways = t.s_worst.load();
}

void cuemu::stats_count_launch(StatsSlot* slot) {
    both(slot, [](Totals& t) { t.launches.fetch_add(1, std::memory_order_relaxed); });
}

extern "C" void cuemu_stats_enable(int on) {
    if (on) {
        std::lock_guard<std::mutex> g(g_slots_mu);
        zero(g_t);
        for (auto& k : g_slots) zero(k->t); /* slots are never freed: a launch from another thread may hold one */
    }
    g_on.store(on ? 1 : 0);
}

extern "C" void cuemu_stats_read(CuemuStats* out) {
    if (out) read(g_t, out);
}

extern "C" int cuemu_stats_read_kernel(uint32_t index, char* name, uint32_t name_len, CuemuStats* out) {
    std::lock_guard<std::mutex> g(g_slots_mu);
    const StatsSlot* found = nullptr; /* the index-th kernel launched since counting was enabled */
    for (auto& k : g_slots)
        if (k->t.launches.load() > 0 && index-- == 0) {
            found = k.get();
            break;
        }
    if (!found) return 0;
    const StatsSlot& s = *found;
    if (name && name_len > 0) snprintf(name, name_len, "%s", s.name.c_str());
    if (out) read(s.t, out);
    return 1;
}
