#!/usr/bin/env bash
# Every test, after ./scripts/setup.sh: the Rust suite (release mode), then `llamagen serve` from outside: its web
# page in headless Chromium and a short loopback load test (continuous batching must beat one request at a time).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked
./scripts/browser-test.sh
python3 tools/loadtest.py --clients 1 8 32 --requests 4 --budget 300 --min-ratio 1.2
