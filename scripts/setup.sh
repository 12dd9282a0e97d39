#!/usr/bin/env bash
# One-command set-up: builds the release binary and the test executables.
set -euo pipefail
cd "$(dirname "$0")/.."

# CUDA toolchain for the GPU kernels: nvcc 13.0 from PyPI, all pinned together, in .toolchain/cuda (git-ignored),
# where build.rs looks for .toolchain/cuda/nvidia/cu13/bin/nvcc. Skipped when that exact nvcc is already there.
# Without it the crate still builds and tests (CPU backend and CUDA emulator), with a cargo warning.
NVCC_LOCAL=.toolchain/cuda/nvidia/cu13/bin/nvcc
if [ -x "$NVCC_LOCAL" ] && "$NVCC_LOCAL" --version 2>/dev/null | grep -q "V13.0.88"; then
    echo "nvcc 13.0.88 already installed in .toolchain/cuda"
elif python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-input --upgrade --target .toolchain/cuda \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85; then
    echo "installed nvcc: $("$NVCC_LOCAL" --version | grep release)"
    touch build.rs # a build script that already ran without nvcc runs again and finds it
else
    echo "warning: installing nvcc from PyPI failed; the GPU kernels will not be built" >&2
fi

# cuobjdump + nvdisasm (read-only tools over the cubins: the kernel lab's SASS instruction mix, built into the binary
# by build.rs). 13.2 is the oldest on PyPI; reading sm_80/sm_90 cubins made by nvcc 13.0 needs no matching version.
CUOBJDUMP_LOCAL=.toolchain/cuobjdump/nvidia/cu13/bin/cuobjdump
if [ -x "$CUOBJDUMP_LOCAL" ] && [ -x .toolchain/cuobjdump/nvidia/cu13/bin/nvdisasm ]; then
    echo "cuobjdump already installed in .toolchain/cuobjdump"
elif python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-input --upgrade \
    --target .toolchain/cuobjdump nvidia-cuda-cuobjdump==13.2.78 nvidia-cuda-nvdisasm==13.2.78; then
    echo "installed cuobjdump: $("$CUOBJDUMP_LOCAL" --version | grep release)"
    touch build.rs
else
    echo "warning: installing cuobjdump from PyPI failed; the kernel lab will lack the SASS instruction mix" >&2
fi

# One build: the test build also builds the binary (the CLI tests run it), with the same dependency features as
# `cargo test`; a separate `cargo build` would compile rayon, serde, gemm and the crate a second time (dev-dependencies
# turn on other features of them), ~2.5 of ~6.5 minutes on the 2-core box.
cargo test --release --locked --no-run
test -x target/release/llamagen
echo "set-up done: target/release/llamagen"
