"""Score engine-generated Fashion-MNIST images: class accuracy (by classifier.py's CNN) and intra-class diversity.

usage: evaluate.py DIR [DIR ...]   each DIR from `llamagen generate ... --out DIR --npz DIR/samples.npz`

Reference rows: the classifier on the real test images, and on their VQ reconstructions (models/demo/vq.safetensors,
the best a generator using this tokenizer can look). Diversity = mean pairwise L2 distance between same-class images
(grey, [0, 1], 32×32), averaged over classes; the real reference uses 100 random test images per class (seed 0).
"""
import glob
import json
import os
import sys

from classifier import HERE, grey, load_classifier, predict  # noqa: I100  (sets OMP_WAIT_POLICY, sys.path)
import numpy as np
import torch

from data import load


def diversity(x01, labels, classes=range(10)):
    """x01: (n, 1024) in [0, 1]; mean over classes of the mean pairwise L2 distance."""
    per = []
    for c in classes:
        v = x01[labels == c]
        if v.shape[0] < 2:
            continue
        d = torch.cdist(v[None], v[None])[0]
        n = v.shape[0]
        per.append((d.sum() / (n * (n - 1))).item())
    return float(np.mean(per))


def flat01(g):
    return ((g + 1) / 2).flatten(1)


def main():
    torch.set_num_threads(2)
    net = load_classifier()
    xt, yt = load("test")
    gt = grey(xt)
    acc_real = (predict(net, gt) == yt).float().mean().item()
    g = torch.Generator().manual_seed(0)
    pick = torch.cat([(yt == c).nonzero().squeeze(1)[torch.randperm(1000, generator=g)[:100]] for c in range(10)])
    div_real = diversity(flat01(gt[pick]), yt[pick])
    rows = [("real test images (10k)", "-", "-", "-", acc_real, 1.0, div_real)]

    vq_path = os.path.join(os.path.dirname(os.path.dirname(HERE)), "models", "demo", "vq.safetensors")
    if os.path.exists(vq_path):
        from safetensors import safe_open
        from safetensors.torch import load_file
        from models import VQModel
        with safe_open(vq_path, "pt") as f:
            vq = VQModel(json.loads(f.metadata()["config"]))
        vq.load_state_dict(load_file(vq_path))
        vq.eval()
        with torch.no_grad():
            rec = torch.cat([vq(xt[i:i + 500])[0] for i in range(0, xt.shape[0], 500)])
        # the same uint8 rounding as the engine's PNG/npz output
        rec_u8 = torch.clamp(127.5 * rec + 128, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        acc_rec = (predict(net, grey(rec_u8)) == yt).float().mean().item()
        rows.append(("VQ reconstructions of the test images", "-", "-", "-", acc_rec, acc_rec / acc_real,
                     diversity(flat01(grey(rec_u8)[pick]), yt[pick])))

    for d in sys.argv[1:]:
        npz = glob.glob(os.path.join(d, "*.npz"))
        if len(npz) != 1:
            raise SystemExit(f"{d}: expected exactly one .npz (generate with --npz {d}/samples.npz)")
        arr = np.load(npz[0])["arr_0"]
        with open(os.path.join(d, "manifest.jsonl")) as f:
            man = sorted((json.loads(line) for line in f if line.strip()), key=lambda r: r["index"])
        labels = torch.tensor([r["class"] for r in man])
        assert len(man) == arr.shape[0]
        x = grey(arr)
        pred = predict(net, x)
        acc = (pred == labels).float().mean().item()
        per_class = [(pred[labels == c] == c).float().mean().item() for c in range(10)]
        s = man[0]
        rows.append((d, s["cfg_scale"], s["top_k"], s["temperature"], acc, acc / acc_real,
                     diversity(flat01(x), labels)))
        print(f"{d}: per-class accuracy " + " ".join(f"{100 * a:.0f}" for a in per_class), file=sys.stderr)

    print("| images | cfg scale | top-k | temperature | class accuracy | vs real | diversity (real "
          f"{div_real:.2f}) |")
    print("|---|---|---|---|---|---|---|")
    for name, cfg, k, t, acc, rel, div in rows:
        print(f"| {name} | {cfg} | {k} | {t} | {100 * acc:.1f}% | {100 * rel:.1f}% | {div:.2f} ({div / div_real:.2f}×) |")


if __name__ == "__main__":
    main()
