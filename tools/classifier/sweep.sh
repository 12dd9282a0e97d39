#!/usr/bin/env bash
# Generate 1000 images (100 per class) with the engine for each (cfg scale, top-k) and score them.
# usage: sweep.sh [OUTDIR] ; env CFGS="1.5 2 3 4", TOPKS="0 100", TEMP=1.0, SEED=0, LLAMAGEN=target/release/llamagen
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/work/venv/bin/python}
BIN=${LLAMAGEN:-target/release/llamagen}
OUT=${1:-/tmp/llamagen_sweep}
CFGS=${CFGS:-"1.5 2 3 4"}
TOPKS=${TOPKS:-"0 100"}
TEMP=${TEMP:-1.0}
dirs=()
for c in $CFGS; do
  for k in $TOPKS; do
    d="$OUT/cfg${c}_k${k}_t${TEMP}"
    "$BIN" generate --gpt models/demo/gpt.safetensors --vq models/demo/vq.safetensors --num-images 1000 \
      --cfg-scale "$c" --top-k "$k" --temperature "$TEMP" --seed "${SEED:-0}" --batch-size 50 --quiet \
      --out "$d" --npz "$d/samples.npz"
    dirs+=("$d")
  done
done
"$PY" tools/classifier/evaluate.py "${dirs[@]}"
