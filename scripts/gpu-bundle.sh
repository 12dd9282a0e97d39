#!/usr/bin/env bash
# Builds, on a machine with a Rust toolchain, everything scripts/gpu-check.sh needs on a GPU machine that has none:
# the release binary and the GPU test executables (debug info stripped), packed as .gpu-bundle/bundle.tar.xz (about
# 22 MB; git-ignored). Carry .gpu-bundle with the working tree (the device tool takes 64 MiB in all); gpu-check.sh
# unpacks and uses it when cargo is absent. Same x86-64 target as CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
rm -rf .gpu-bundle && mkdir -p .gpu-bundle
stage=$(mktemp -d)
# The test executables cargo just built (the last line per target is the newest).
cargo test --release --locked --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
    case "$name" in kernel_lab) ;; golden_cuda | kernels | emulator | ops | emu_pipeline | serve_scheduler) objcopy --strip-debug "$exe" "$stage/$name" ;; esac
done
# The criterion op benches (benches/ops.rs), run on the GPU as `ops --bench`.
cargo bench --locked --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do objcopy --strip-debug "$exe" "$stage/bench_$name"; done
objcopy --strip-debug target/release/llamagen "$stage/llamagen"
git rev-parse HEAD > "$stage/COMMIT"
ls -l "$stage"
tar -C "$stage" -cf - . | xz -T0 -6 > .gpu-bundle/bundle.tar.xz
rm -rf "$stage"
ls -l .gpu-bundle
