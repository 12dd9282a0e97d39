#!/usr/bin/env bash
# One command for a machine with a GPU: the GPU test suite (golden cases and every kernel test's `gpu_*` cases),
# compute-sanitizer (memcheck, racecheck) over the golden case and the kernel tests, and end-to-end speed, written
# as a markdown report into the directory given.
#
#   KSAN=0              skips the sanitizer runs of the kernel tests
#   KSAN_TIMEOUT=SECS   bounds each of those runs (default 60; a run cut short is reported, with the errors
#                       found until then)
#   KSAN_BUDGET=SECS    bounds all of them together (default 300; runs left when it is spent are listed as skipped)
#
#   scripts/gpu-check.sh REPORT_DIR
#
# With cargo present it builds here; without (the lent GPU machines have no Rust toolchain), it runs the binaries
# of .gpu-bundle/bundle.tar.xz made by scripts/gpu-bundle.sh on the development machine (same x86-64 target).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-check.sh REPORT_DIR}
mkdir -p "$out"
report="$out/gpu-report.md"
log="$out/gpu-check.log"
: > "$log"
note() { printf '%s\n' "$*" >> "$report"; }
run() { echo "+ $*" >> "$log"; "$@" >> "$log" 2>&1; }

if command -v cargo > /dev/null && [ ! -d .gpu-bundle ]; then
    scripts/gpu-bundle.sh >> "$log" 2>&1 || { echo "build failed, see $log"; exit 1; }
fi
[ -f .gpu-bundle/bundle.tar.xz ] || { echo "no .gpu-bundle/bundle.tar.xz: run scripts/gpu-bundle.sh where cargo is"; exit 1; }
B=$(mktemp -d /tmp/llamagen-bundle.XXXXXX)
tar -C "$B" -xJf .gpu-bundle/bundle.tar.xz
[ -x "$B/llamagen" ] || { echo "the bundle holds no llamagen binary"; exit 1; }
# The executables were built elsewhere: point them at this tree's fixtures and demo model.
export LLAMAGEN_SRC_DIR=$PWD LLAMAGEN_DEMO_DIR=$PWD/models/demo

{
    echo "# GPU check"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(cat $B/COMMIT 2>/dev/null || git rev-parse HEAD)"
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
    echo "- CUDA (driver API): $(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' || echo '?')"
    echo
} > "$report"

status=0
section() { note ""; note "## $1"; note ""; }

# 1. The GPU tests: golden cases and model-size checks on the GPU (tests/golden_cuda.rs, `gpu_*`).
section "Tests on the GPU"
if "$B/golden_cuda" --ignored --test-threads=1 --nocapture gpu_ > "$out/tests.log" 2>&1; then r=passed; else r=FAILED; status=1; fi
note "\`golden_cuda --ignored gpu_\`: **$r**"
note '```'
grep -E '^test |rel L2|equal|test result' "$out/tests.log" | head -60 >> "$report"
note '```'

# 1b. The kernel tests on the GPU: every tests/kernels/<op>.rs (and emulator, ops, serve_scheduler) has `gpu_*` tests that run the same
# cases as on the emulator, against the CPU backend, with guarded buffers checked after every launch.
section "Kernel tests on the GPU"
note "| test binary | result | tests |"
note "|---|---|---|"
for exe in "$B"/kernels "$B"/emulator "$B"/ops "$B"/emu_pipeline "$B"/serve_scheduler; do
    [ -x "$exe" ] || continue
    [ "$(basename "$exe")" = kernel_lab ] && continue # emulator counts only (an old bundle may hold it)
    name=$(basename "$exe")
    klog="$out/kernel-tests-$name.log"
    "$exe" --ignored --test-threads=1 --nocapture gpu_ > "$klog" 2>&1
    rc=$?
    # (--nocapture: a test's own output may split its "test ... ok" line; the summary lines are whole)
    n=$(sed -nE 's/^test result: .* ([0-9]+) passed.*/\1/p' "$klog" | tail -1)
    n=${n:-0}
    bad=$(grep -E '^    gpu_' "$klog" | sort -u | tr -d ' ' | tr '\n' ' ')
    if [ $rc -eq 0 ] && [ "$n" -gt 0 ]; then r=passed; else r=FAILED; status=1; fi
    more=${bad:+; failed: $bad}
    [ $rc -eq 0 ] && [ "$n" -eq 0 ] && more="; no gpu_ test in this binary (stale bundle?)"
    note "| \`$name\` | **$r** (exit $rc) | $n passed$more |"
done
note ""
note '```'
cat "$out"/kernel-tests-*.log 2>/dev/null | grep -E 'worst|NMSE|panicked|no GPU' | head -60 >> "$report"
note '```'

# 1c. Early, so that a short lease still returns it: the kernel lab's cases timed on the GPU beside their
# roofline estimates (docs/KERNELS.md has the emulator's
# counts of the same cases).
section "Kernel lab on the GPU (llamagen lab --device cuda)"
if timeout 120 "$B/llamagen" lab --device cuda --reps 50 --out "$out/lab.md" > /dev/null 2>> "$log"; then
    cat "$out/lab.md" >> "$report"
else
    note "(llamagen lab failed or timed out: see gpu-check.log)"
    status=1
fi

# 2. compute-sanitizer over the small golden case (every kernel of the GPT and the VQ runs in it), then over the
# kernel GPU tests.
section "compute-sanitizer"
cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$cs" ]; then
    for tool in memcheck racecheck; do
        LLAMAGEN_CUDA_GRAPHS=0 "$cs" --tool "$tool" --error-exitcode 9 "$B/golden_cuda" --ignored --test-threads=1 \
            gpu_tiny_golden > "$out/sanitizer-$tool.log" 2>&1
        rc=$?
        [ $rc -eq 0 ] || status=1
        note "- $tool: exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer-$tool.log" | tail -1)"
    done
    # The kernel GPU tests too (small shapes, every kernel of the table, synchronised launch by launch). The
    # sanitizers slow launches down 10-100x, hence the time bound per run.
    [ "${KSAN:-1}" = 0 ] && note "- kernel tests: skipped (KSAN=0)"
    ksan_end=$(($(date +%s) + ${KSAN_BUDGET:-300}))
    for exe in "$B"/kernels "$B"/emulator "$B"/emu_pipeline; do
        [ "${KSAN:-1}" = 0 ] && break
        [ -x "$exe" ] || continue
        [ "$(basename "$exe")" = kernel_lab ] && continue
        name=$(basename "$exe")
        for tool in memcheck racecheck; do
            slog="$out/sanitizer-$tool-$name.log"
            t=${KSAN_TIMEOUT:-60}
            left=$((ksan_end - $(date +%s)))
            if [ "$left" -lt 10 ]; then
                note "- $tool \`$name\`: skipped (KSAN_BUDGET=${KSAN_BUDGET:-300} s spent)"
                continue
            fi
            [ "$left" -lt "$t" ] && t=$left
            timeout -k 10 "$t" "$cs" --tool "$tool" --error-exitcode 9 "$exe" --ignored --test-threads=1 gpu_ \
                > "$slog" 2>&1
            rc=$?
            # Error reports as they come (a run cut short prints no summary).
            errs=$(grep -cE '^========= +(Invalid|Error|Program hit)' "$slog")
            case $rc in
                0) r=clean; grep -qE '^test result: .* [1-9][0-9]* passed' "$slog" || { r="ran no gpu_ test"; status=1; } ;;
                124 | 137) r="timed out after $t s, $errs error lines until then"; [ "$errs" -eq 0 ] || status=1 ;;
                9) r="**ERRORS** ($errs error lines)"; status=1 ;;
                *) r="**FAILED** (exit $rc, $errs error lines)"; status=1 ;;
            esac
            note "- $tool \`$name\`: $r; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$slog" | tail -1)"
        done
    done
else
    note "compute-sanitizer not found"
fi

# 3. Speed: llamagen bench on synthetic weights of real model sizes, per stage and per kernel (--ops: time, GB/s or
#    TFLOP/s, % of the GPU datasheet roofline), and the demo model.
section "End-to-end speed (llamagen bench --device cuda)"
# Sized for a 15-minute device lease: GPT-B and GPT-L in bf16 (the official GPU setting) at batch 1, 8 and 32, GPT-B
# in f32 at 1 and 8; the VQ-16 decode of the same batches comes with each row.
bench() { "$B/llamagen" bench --device cuda --synthetic-weights --image-size 256 --vq-model VQ-16 --cfg-scale 4.0 \
    --top-k 2000 --warmup 1 --reps 3 --ops "$@" >> "$report" 2>> "$log" || { note "(bench $* failed: see gpu-check.log)"; status=1; }; }
bench --gpt-model GPT-B,GPT-L -b 1,8,32 --dtype bf16
note ""
bench --gpt-model GPT-B -b 1,8 --dtype f32
note ""
section "Demo model"
"$B/llamagen" generate --device cuda --num-images 80 --out "$out/demo" >> "$log" 2>&1 && cp "$out/demo/grid.png" "$out/demo-grid-gpu.png"
note "$(grep -o '[0-9]* images generated.*' "$log" | tail -1)"

# 4. Last, so that a lease running out costs only these: the criterion op benches on the GPU, bounded to 150 s.
section "Per-op criterion benches on the GPU (benches/ops.rs, \`<op>/<case>/cuda\`)"
if [ -x "$B/bench_ops" ]; then
    note "Each case as a model step runs it, synchronised per iteration; throughput in bytes/s, or FLOP/s as elem/s for"
    note "the compute-bound cases (quick mode: 0.2 s warm-up, 0.5 s measurement)."
    note '```'
    if LLAMAGEN_BENCH_DEVICE=cuda LLAMAGEN_BENCH_QUICK=1 timeout 150 "$B/bench_ops" --bench > "$out/bench_ops.log" 2>&1; then
        r=passed
    else
        r=FAILED
        status=1
    fi
    grep -E '^[a-z_]+/[a-z0-9_]+/cuda|time:|thrpt:' "$out/bench_ops.log" | grep -v '^Benchmarking' >> "$report"
    note '```'
    note "bench_ops: **$r** (full output in bench_ops.log)"
else
    note "the bundle holds no bench_ops (rebuild it with scripts/gpu-bundle.sh)"
fi

note ""
note "Overall: $([ $status -eq 0 ] && echo PASS || echo FAIL) (logs beside this report)"
cat "$report"
exit $status
