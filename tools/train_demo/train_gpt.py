"""Stage 2: tokenize Fashion-MNIST with the trained VQ, then train the c2i GPT on the codes (CPU, seeded).

Teacher forcing as in the official train_c2i.py: input = [class embedding, tokens 0..62], targets = tokens 0..63;
the class is replaced by the null class `num_classes` with probability class_dropout_prob (0.1) for CFG.
"""
import argparse
import math
import os

import common  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import torch
import torch.nn.functional as F

from common import GPT_CONFIG, WORK, Log, setup
from data import load
from models import GPT, VQModel


@torch.no_grad()
def tokenize(vq, x, batch=500):
    return torch.cat([vq.encode_codes(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=1.5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    setup(a.seed)
    log = Log("train_gpt")

    codes_path = os.path.join(WORK, "codes.pt")
    if os.path.exists(codes_path):
        d = torch.load(codes_path)
        log(f"codes from {codes_path}")
    else:
        ck = torch.load(os.path.join(WORK, "vq.pt"))
        vq = VQModel(ck["config"])
        vq.load_state_dict(ck["model"])
        vq.eval()
        x, y = load("train")
        xt, yt = load("test")
        d = {"train": tokenize(vq, x).reshape(x.shape[0], -1), "train_labels": y,
             "test": tokenize(vq, xt).reshape(xt.shape[0], -1), "test_labels": yt}
        torch.save(d, codes_path)
        log(f"tokenized {x.shape[0]} + {xt.shape[0]} images; train usage {torch.unique(d['train']).numel()}")
    z, y, zt, yt = d["train"], d["train_labels"], d["test"], d["test_labels"]
    tok_s = log.elapsed()

    torch.manual_seed(a.seed)
    model = GPT(GPT_CONFIG)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"GPT config {GPT_CONFIG}; {n_params} parameters")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    V = GPT_CONFIG["vocab_size"]
    steps_per_epoch = z.shape[0] // a.batch
    total = int(round(a.epochs * steps_per_epoch))
    g = torch.Generator().manual_seed(a.seed)
    perm, pos, run, hist = torch.randperm(z.shape[0], generator=g), 0, [], []
    model.train()
    for step in range(total):
        if pos + a.batch > z.shape[0]:
            perm, pos = torch.randperm(z.shape[0], generator=g), 0
        ib = perm[pos:pos + a.batch]
        pos += a.batch
        zb, yb = z[ib], y[ib]
        warm = min(1.0, (step + 1) / a.warmup)
        lr = a.min_lr + (a.lr - a.min_lr) * 0.5 * (1 + math.cos(math.pi * step / total))
        for pg in opt.param_groups:
            pg["lr"] = lr * warm
        logits = model(yb, zb[:, :-1], train=True)
        loss = F.cross_entropy(logits.reshape(-1, V), zb.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run.append(loss.item())
        hist.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == total:
            log(f"step {step + 1}/{total} lr {lr * warm:.2e} loss {sum(run) / len(run):.4f}")
            run = []
    train_s = log.elapsed() - tok_s
    last_loss = sum(hist[-100:]) / len(hist[-100:])
    model.eval()
    with torch.no_grad():
        tl = 0.0
        for i in range(0, zt.shape[0], 500):
            lg = model(yt[i:i + 500], zt[i:i + 500, :-1])
            tl += F.cross_entropy(lg.reshape(-1, V), zt[i:i + 500].reshape(-1), reduction="sum").item()
        test_loss = tl / zt.numel()
    log(f"done: {total} steps in {train_s:.0f}s (+{tok_s:.0f}s tokenizing); final train loss (last 100 steps) "
        f"{last_loss:.4f}; test loss {test_loss:.4f} nats/token")
    torch.save({"model": model.state_dict(), "config": GPT_CONFIG, "train_loss": last_loss, "test_loss": test_loss,
                "train_seconds": train_s, "tokenize_seconds": tok_s, "steps": total},
               os.path.join(WORK, "gpt.pt"))


if __name__ == "__main__":
    main()
