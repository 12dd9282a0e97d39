#!/usr/bin/env bash
# The whole demo recipe: VQ tokenizer, then GPT, then export to models/demo/. Seeded, CPU, 2 threads.
# PYTHON defaults to /work/venv/bin/python (torch + numpy + safetensors installed outside the repository).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-/work/venv/bin/python}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "${TRAIN_DEMO_WORK:-work}"
time "$PY" train_vq.py
time "$PY" train_gpt.py
"$PY" export.py
