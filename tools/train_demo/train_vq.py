"""Stage 1: train the VQ tokenizer on the 60k Fashion-MNIST training images (CPU, seeded).

Loss: L2 + L1 reconstruction, codebook loss + 0.25·commitment (official VectorQuantizer with an L2-normalised
codebook and the straight-through estimator). Codes unused for `--reinit-every` steps are re-initialised from
encoder outputs of the current batch (until 80 % of training), which keeps codebook usage high.
"""
import argparse
import math
import os

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import torch
import torch.nn.functional as F

from common import VQ_CONFIG, WORK, Log, psnr, setup
from data import load
from models import VQModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=0.6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--reinit-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    setup(a.seed)
    log = Log("train_vq")
    x, _ = load("train")
    xt, _ = load("test")
    model = VQModel(VQ_CONFIG)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"VQ config {VQ_CONFIG}; {n_params} parameters")
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.99))
    steps_per_epoch = x.shape[0] // a.batch
    total = int(round(a.epochs * steps_per_epoch))
    g = torch.Generator().manual_seed(a.seed)
    K = VQ_CONFIG["codebook_size"]
    used = torch.zeros(K, dtype=torch.bool)
    perm, pos = torch.randperm(x.shape[0], generator=g), 0
    model.train()
    for step in range(total):
        if pos + a.batch > x.shape[0]:
            perm, pos = torch.randperm(x.shape[0], generator=g), 0
        xb = x[perm[pos:pos + a.batch]]
        pos += a.batch
        lr = a.lr * min(1.0, (step + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
        for pg in opt.param_groups:
            pg["lr"] = lr
        rec, vq_loss, commit_loss, idx, zf = model(xb)
        rec_loss = F.mse_loss(rec, xb) + F.l1_loss(rec, xb)
        loss = rec_loss + vq_loss + commit_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        used[idx] = True
        if (step + 1) % a.reinit_every == 0:
            n_dead = int((~used).sum())
            if n_dead > 0 and step < 0.8 * total:
                with torch.no_grad():
                    dead = (~used).nonzero().squeeze(1)
                    pick = torch.randint(0, zf.shape[0], (n_dead,), generator=g)
                    model.quantize.embedding.weight[dead] = zf[pick] + 0.01 * torch.randn(n_dead, zf.shape[1], generator=g)
            log(f"step {step + 1}/{total} lr {lr:.2e} rec {rec_loss.item():.4f} vq {vq_loss.item():.4f} "
                f"commit {commit_loss.item():.4f} psnr {psnr(rec.detach(), xb):.2f} used {int(used.sum())}/{K}"
                f" reinit {n_dead if step < 0.8 * total else 0}")
            used.zero_()
    train_s = log.elapsed()
    model.eval()
    with torch.no_grad():
        ps, codes = [], []
        for i in range(0, xt.shape[0], 500):
            rec, _, _, idx, _ = model(xt[i:i + 500])
            ps.append(psnr(rec, xt[i:i + 500]) * rec.shape[0])
            codes.append(idx)
        test_psnr = sum(ps) / xt.shape[0]
        usage = torch.unique(torch.cat(codes)).numel()
    log(f"done: {total} steps in {train_s:.0f}s; test PSNR {test_psnr:.2f} dB; test codebook usage {usage}/{K}")
    torch.save({"model": model.state_dict(), "config": VQ_CONFIG, "test_psnr": test_psnr, "test_usage": usage,
                "train_seconds": train_s, "steps": total}, os.path.join(WORK, "vq.pt"))


if __name__ == "__main__":
    main()
