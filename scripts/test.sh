#!/usr/bin/env bash
# Every test, after ./scripts/setup.sh: the Rust suite (release mode), then `llamagen serve` from outside: its web
# page in headless Chromium and a short loopback load test (continuous batching must beat one request at a time;
# the bound is loose because the one-client rate swings 30-50 images/s between runs on the 2-core box, while a
# scheduler that serialised requests would sit at 1.0).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked
./scripts/browser-test.sh
python3 tools/loadtest.py --clients 1 8 32 --requests 8 --budget 300 --min-ratio 1.1
