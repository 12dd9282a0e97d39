"""A small Fashion-MNIST CNN classifier (seeded, CPU), used to score the demo model's generated images.

Input: 32×32 grey in [-1, 1] (the demo's model space: 28×28 padded by 2 px of background; RGB images are averaged
over channels). Train: `python classifier.py train` -> classifier.safetensors (~0.9 MB) + test accuracy.
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "train_demo"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data import load  # noqa: E402  (tools/train_demo/data.py)

WEIGHTS = os.path.join(HERE, "classifier.safetensors")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c2, self.b2 = nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.c3, self.b3 = nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128)
        self.fc1 = nn.Linear(128 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):  # x: (b, 1, 32, 32)
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)  # 16
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)  # 8
        x = F.max_pool2d(F.relu(self.b3(self.c3(x))), 2)  # 4
        return self.fc2(self.drop(F.relu(self.fc1(x.flatten(1)))))


def grey(x):
    """(n, 3, 32, 32) or (n, 32, 32, 3) uint8 / float -> (n, 1, 32, 32) float in [-1, 1]."""
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8:  # NHWC uint8 (engine npz)
            x = torch.from_numpy(x.astype(np.float32) / 255.0 * 2 - 1).permute(0, 3, 1, 2)
        else:
            x = torch.from_numpy(x)
    return x.mean(1, keepdim=True)


def load_classifier():
    from safetensors.torch import load_file
    if not os.path.exists(WEIGHTS):
        raise SystemExit(f"{WEIGHTS} missing: run `python classifier.py train` first")
    net = Net()
    net.load_state_dict(load_file(WEIGHTS))
    return net.eval()


@torch.no_grad()
def predict(net, x, batch=1000):
    return torch.cat([net(x[i:i + batch]).argmax(1) for i in range(0, x.shape[0], batch)])


def train(epochs=3, batch=128, lr=2e-3, seed=0):
    from safetensors.torch import save_file
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    x, y = load("train")
    xt, yt = load("test")
    x, xt = grey(x), grey(xt)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * (x.shape[0] // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    step = 0
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0] - batch + 1, batch):
            ib = perm[i:i + batch]
            xb = x[ib]
            # light augmentation: random shift by up to 2 px (the padding border)
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[ib])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        net.eval()
        acc = (predict(net, xt) == yt).float().mean().item()
        print(f"epoch {ep + 1}/{epochs}: loss {loss.item():.3f}, test accuracy {100 * acc:.2f}%", flush=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, WEIGHTS)
    print(f"saved {WEIGHTS} ({os.path.getsize(WEIGHTS)} bytes); real test accuracy {100 * acc:.2f}%")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        train()
    else:
        print(__doc__)
