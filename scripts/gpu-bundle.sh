#!/usr/bin/env bash
# Builds, on a machine with a Rust toolchain, everything scripts/gpu-check.sh needs on a GPU machine that has none:
# the release binary and the GPU test executables (debug info stripped), into .gpu-bundle/ (git-ignored). Carry
# .gpu-bundle (or out/gpu-bundle.tar.xz) with the working tree; gpu-check.sh uses it when cargo is absent. Same
# x86-64 target as CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
rm -rf .gpu-bundle && mkdir -p .gpu-bundle
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
    case "$name" in golden_cuda | kernels_emu | kernel_*) objcopy --strip-debug "$exe" ".gpu-bundle/$name" ;; esac
done
objcopy --strip-debug target/release/llamagen .gpu-bundle/llamagen
git rev-parse HEAD > .gpu-bundle/COMMIT
du -sh .gpu-bundle
ls -l .gpu-bundle
# The same, compressed (the binaries share most of their bytes: ~10x smaller), for carrying to a GPU machine where
# the bundle itself is too large; gpu-check.sh unpacks it when .gpu-bundle/ is absent.
mkdir -p out
tar -cf - .gpu-bundle | xz -T0 -6 > out/gpu-bundle.tar.xz
ls -l out/gpu-bundle.tar.xz
