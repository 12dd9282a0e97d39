#!/usr/bin/env bash
# Side by side on the same job, in one run: the official PyTorch LlamaGen (../shared/tools/bench_pytorch_reference.py)
# and `llamagen bench`, one after the other, then the ratio table (markdown) on stdout.
#
# The job: GPT-B c2i 256 px (256 tokens per image), cfg 4.0, top-k 2000, temperature 1, the deterministic weights of
# weights.py on both sides (the engine's --synthetic-weights is the same generator, bit for bit), f32 and bf16;
# VQ-16 decode of 256 px images (f32), in process and as a whole `llamagen decode` process.
#
# Usage: tools/bench_compare.sh [-b "1 8"] [-r REPS] [-p PYTORCH_REPS] [-o OUTDIR]
#   -b  batch sizes (default "1 8")
#   -r  engine repetitions after one warm-up (default 3)
#   -p  PyTorch runs per batch size (default 2: the first is cold, the rest are averaged; 1 = that single run)
#   -o  where the raw outputs go (default: a new temporary directory)
# Environment:
#   PYTHON        a Python with torch, numpy, safetensors (default /work/venv/bin/python if present, else python3)
#   LLAMAGEN_REF  a checkout of FoundationVision/LlamaGen (default /tmp/LlamaGen); never inside this repository
#   LLAMAGEN_BIN  the engine binary (default target/release/llamagen; build it first: cargo build --release)
#   SHARED        the shared directory holding tools/ and golden/ (default ../shared beside the repository)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd || echo "$ROOT/../shared")}
REF=${LLAMAGEN_REF:-/tmp/LlamaGen}
BIN=${LLAMAGEN_BIN:-$ROOT/target/release/llamagen}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x /work/venv/bin/python ]]; then PYTHON=/work/venv/bin/python; else PYTHON=python3; fi
fi
BATCHES="1 8"
REPS=3
PT_REPS=2
OUT=""
while getopts "b:r:p:o:h" opt; do
    case $opt in
        b) BATCHES=$OPTARG ;;
        r) REPS=$OPTARG ;;
        p) PT_REPS=$OPTARG ;;
        o) OUT=$OPTARG ;;
        *) sed -n '2,21p' "$0"; exit 2 ;;
    esac
done
[[ -n "$OUT" ]] || OUT=$(mktemp -d /tmp/bench_compare.XXXXXX)
mkdir -p "$OUT"

[[ -f "$SHARED/tools/bench_pytorch_reference.py" ]] || { echo "no $SHARED/tools/bench_pytorch_reference.py" >&2; exit 1; }
[[ -f "$REF/autoregressive/models/gpt.py" ]] || { echo "no LlamaGen checkout at $REF (set LLAMAGEN_REF)" >&2; exit 1; }
[[ -x "$BIN" ]] || { echo "no engine binary at $BIN (cargo build --release)" >&2; exit 1; }
"$PYTHON" -c "import torch, numpy, safetensors" || { echo "$PYTHON lacks torch/numpy/safetensors" >&2; exit 1; }

# Every batch size PT_REPS times in a row: the reference script loops over its arguments.
PT_ARGS=()
for b in $BATCHES; do for ((i = 0; i < PT_REPS; i++)); do PT_ARGS+=("$b"); done; done
ENGINE_BATCHES=$(echo $BATCHES | tr ' ' ',')

{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
    echo "commit: $(git -C "$ROOT" describe --always --dirty --abbrev=10 2>/dev/null || echo unknown)"
    echo "torch: $("$PYTHON" -c 'import torch; print(torch.__version__, "threads", torch.get_num_threads())')"
    echo "LlamaGen: $(git -C "$REF" rev-parse --short HEAD 2>/dev/null || echo "checkout at $REF")"
} > "$OUT/conditions.txt"

echo "== PyTorch reference ($PYTHON), load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "pytorch load before: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/conditions.txt"
"$PYTHON" "$SHARED/tools/bench_pytorch_reference.py" "$REF" "${PT_ARGS[@]}" | tee "$OUT/pytorch.jsonl" >&2

echo "== llamagen bench, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "engine load before: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/conditions.txt"
ENGINE_CMD=("$BIN" bench --gpt-model GPT-B --vq-model VQ-16 --image-size 256 --synthetic-weights
    -b "$ENGINE_BATCHES" --dtype f32,bf16 --cfg-scale 4.0 --top-k 2000 --warmup 1 -r "$REPS" --format csv)
echo "engine command: ${ENGINE_CMD[*]}" >> "$OUT/conditions.txt"
"${ENGINE_CMD[@]}" > "$OUT/engine.csv"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/conditions.txt"

# The VQ decode as a whole process, from a weights file to PNGs (`llamagen decode`): the official VQ-16 with the
# weights.py values written as safetensors, random codes, REPS runs per batch size, wall time by /usr/bin/time.
echo "== llamagen decode (whole process), load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$PYTHON" - "$REF" "$SHARED" "$ROOT/tests/data/vq16.config.json" "$OUT" $BATCHES <<'PY'
import json, os, sys
import numpy as np
import torch
from safetensors.numpy import save_file
ref, shared, config, out, batches = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
sys.path.insert(0, os.path.join(shared, "golden"))
sys.path.insert(0, ref)
import weights
from tokenizer.tokenizer_image import vq_model as V
shapes = {k: tuple(v.shape) for k, v in V.VQ_16().state_dict().items()}
sd = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.fill_state_dict(shapes).items()}
save_file(sd, f"{out}/vq16.safetensors", metadata={"config": json.dumps(json.load(open(config)))})
rng = np.random.default_rng(0)
for b in batches:
    np.save(f"{out}/codes_b{b}.npy", rng.integers(0, 16384, size=(int(b), 16, 16), dtype=np.int64))
PY
for b in $BATCHES; do
    for ((i = 0; i < REPS; i++)); do
        /usr/bin/time -f "%e %M" -o "$OUT/decode_b$b.$i.time" "$BIN" decode --vq "$OUT/vq16.safetensors" \
            --tokens "$OUT/codes_b$b.npy" --batch-size "$b" --out "$OUT/decoded_b$b" 2> /dev/null
    done
done

python3 - "$OUT" "$PT_REPS" <<'EOF'
import csv, json, statistics, sys
out, pt_reps = sys.argv[1], int(sys.argv[2])
pt = {}
for line in open(f"{out}/pytorch.jsonl"):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    dtype = {"torch.float32": "f32", "torch.bfloat16": "bf16", "float32": "f32"}.get(r["dtype"], r["dtype"])
    pt.setdefault((r["stage"], dtype, int(r["batch"])), []).append(float(r["seconds"]))
eng = {}
rows = list(csv.DictReader(open(f"{out}/engine.csv")))
for r in rows:
    if r["stage"] not in ("gpt_generate", "vq_decode"):
        continue
    key = (r["stage"], r["dtype"] if r["stage"] == "gpt_generate" else "f32", int(r["batch"]))
    eng.setdefault(key, []).append((float(r["time_ms"]) / 1e3, float(r["time_ms_std"]) / 1e3, r))

def pt_time(v):
    # The first run of each batch size is cold; later ones are averaged.
    warm = v[1:] if len(v) > 1 else v
    return statistics.mean(warm), v[0]

print(open(f"{out}/conditions.txt").read())
print("| job | batch | PyTorch (s) | PyTorch cold (s) | engine (s, mean ± std) | engine images/s | speed-up | engine % of ceiling |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for (stage, dtype, b) in sorted(pt, key=lambda k: (k[0] != "gpt_generate", k[1] != "f32", k[2])):
    e = eng.get((stage, dtype, b))
    if not e:
        continue
    # The VQ stage runs once per GPT configuration (f32 and bf16): pool them.
    t = statistics.mean(x[0] for x in e)
    s = statistics.mean(x[1] for x in e)
    r = e[0][2]
    p, cold = pt_time(pt[(stage, dtype, b)])
    job = f"GPT-B generate {dtype}" if stage == "gpt_generate" else "VQ-16 decode f32"
    pct = r["pct_of_ceiling"]
    pct = f"{float(pct):.1f} ({r['bound']})" if pct else ""
    print(f"| {job} | {b} | {p:.3f} | {cold:.3f} | {t:.3f} ± {s:.3f} | {b / t:.3f} | {p / t:.2f}× | {pct} |")
import glob
for b in sorted({k[2] for k in pt if k[0] == "vq_decode"}):
    runs = [open(f).read().split() for f in sorted(glob.glob(f"{out}/decode_b{b}.*.time"))]
    if not runs:
        continue
    secs = [float(r[0]) for r in runs]
    rss = max(int(r[1]) for r in runs) / 1024
    t, s = statistics.mean(secs), (statistics.stdev(secs) if len(secs) > 1 else 0.0)
    p, cold = pt_time(pt[("vq_decode", "f32", b)])
    print(f"| VQ-16 `llamagen decode`, whole process (peak RSS {rss:.0f} MiB) vs PyTorch in-process | {b} | {p:.3f} | {cold:.3f} | {t:.3f} ± {s:.3f} | {b / t:.3f} | {p / t:.2f}× | |")
print()
print(f"raw outputs: {out}/pytorch.jsonl, {out}/engine.csv, {out}/decode_b*.time")
EOF
