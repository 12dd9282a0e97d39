"""Check models/demo/ against the PyTorch modules and the engine.

1. Loads both safetensors files strictly into the PyTorch modules (every official key present, no extra key) and
   checks the embedded configs and the sizes.
2. Runs engine_check (a tiny Rust program using the llamagen library, f32 CPU path) on training images and their
   codes, and compares: VQ decode (max abs diff of float images), VQ encode (codes equal), GPT teacher-forcing
   logits without guidance (max abs diff).

usage: verify.py [--n 16] [--engine-check PATH]  (default: builds engine_check with cargo)
"""
import argparse
import json
import os
import subprocess
import tempfile

import common  # noqa: F401
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from common import MODELS, REPO
from data import load
from models import GPT, VQModel


def load_model(cls, path):
    with safe_open(path, "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    m = cls(cfg)
    m.load_state_dict(load_file(path), strict=True)
    return m.eval(), cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--engine-check", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    vq_path, gpt_path = os.path.join(MODELS, "vq.safetensors"), os.path.join(MODELS, "gpt.safetensors")
    vq, vq_cfg = load_model(VQModel, vq_path)
    gpt, gpt_cfg = load_model(GPT, gpt_path)
    for name, cfg in (("vq", vq_cfg), ("gpt", gpt_cfg)):
        with open(os.path.join(MODELS, f"{name}.config.json")) as f:
            assert json.load(f) == cfg, f"{name}.config.json differs from the safetensors metadata"
    total = os.path.getsize(vq_path) + os.path.getsize(gpt_path)
    print(f"strict load OK; VQ {sum(p.numel() for p in vq.parameters())} params, "
          f"GPT {sum(p.numel() for p in gpt.parameters())} params; files {total} bytes")
    assert total <= 20 * 1024 * 1024

    x, y = load("train")
    x, y = x[:a.n], y[:a.n]
    with torch.no_grad():
        codes = vq.encode_codes(x)  # (n, 8, 8)
        img = vq.decode_code(codes)
        logits = gpt(y, codes.reshape(a.n, -1)[:, :-1])  # (n, 64, V), column j predicts token j
    tmp = tempfile.mkdtemp(prefix="llamagen_verify_")
    np.save(os.path.join(tmp, "codes.npy"), codes.numpy().astype(np.int64))
    np.save(os.path.join(tmp, "labels.npy"), y.numpy().astype(np.int64))
    np.save(os.path.join(tmp, "images.npy"), x.numpy().astype(np.float32))
    exe = a.engine_check
    if exe is None:
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_check")
        target = os.path.join(REPO, "target", "engine_check")
        subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path", os.path.join(here, "Cargo.toml"),
                        "--target-dir", target], check=True)
        exe = os.path.join(target, "release", "engine_check")
    subprocess.run([exe, vq_path, gpt_path, tmp], check=True)
    e_img = np.load(os.path.join(tmp, "engine_decode.npy"))
    e_codes = np.load(os.path.join(tmp, "engine_encode.npy"))
    e_logits = np.load(os.path.join(tmp, "engine_logits.npy"))
    d_img = np.abs(e_img - img.numpy()).max()
    d_log = np.abs(e_logits - logits.numpy()).max()
    same = (e_codes == codes.numpy()).mean()
    print(f"VQ decode: max |engine - torch| = {d_img:.2e} (image range {img.min():.2f}..{img.max():.2f})")
    print(f"VQ encode: {100 * same:.2f}% of codes equal")
    print(f"GPT teacher forcing (f32, no CFG): max |engine - torch| logits = {d_log:.2e} "
          f"(logit range {logits.min():.1f}..{logits.max():.1f}); argmax equal "
          f"{100 * (e_logits.argmax(-1) == logits.numpy().argmax(-1)).mean():.2f}%")
    ok = d_img < 1e-4 and same == 1.0 and d_log < 1e-3
    print("verify:", "OK" if ok else "MISMATCH")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
