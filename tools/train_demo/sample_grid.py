"""Class-sorted sample grid from an engine run: sample_grid.py DIR OUT.png [PER_CLASS] [SCALE]
(DIR from `llamagen generate ... --out DIR --npz DIR/samples.npz`; one row per class)."""
import glob
import json
import os
import sys

import numpy as np

from pngio import grid, write_png


def main():
    d, out = sys.argv[1], sys.argv[2]
    per = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    scale = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    a = np.load(glob.glob(os.path.join(d, "*.npz"))[0])["arr_0"].astype(np.float32) / 127.5 - 1
    with open(os.path.join(d, "manifest.jsonl")) as f:
        man = sorted((json.loads(line) for line in f if line.strip()), key=lambda r: r["index"])
    classes = sorted({r["class"] for r in man})
    order = [i for c in classes for i in [r["index"] for r in man if r["class"] == c][:per]]
    write_png(out, grid(a[order].transpose(0, 3, 1, 2), cols=per, scale=scale))


if __name__ == "__main__":
    main()
