#!/usr/bin/env bash
# One-command set-up: builds the release binary and the test executables.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
cargo test --release --locked --no-run
echo "set-up done: target/release/llamagen"
