"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (idx files), as 32×32 RGB in [-1, 1]."""
import gzip
import os

import numpy as np
import torch

DATA_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_u8(split):
    """split 'train' (60k) or 'test' (10k) -> (uint8 images (n, 28, 28), int64 labels (n,))."""
    prefix = "train" if split == "train" else "t10k"
    if not os.path.exists(os.path.join(DATA_DIR, f"{prefix}-images-idx3-ubyte.gz")):
        raise SystemExit(f"{DATA_DIR}: Fashion-MNIST not found (apt-get install dataset-fashion-mnist)")
    x = _read_idx(os.path.join(DATA_DIR, f"{prefix}-images-idx3-ubyte.gz"))
    y = _read_idx(os.path.join(DATA_DIR, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    return x, y


def to_model_space(u8):
    """uint8 (n, 28, 28) -> float32 (n, 3, 32, 32) in [-1, 1]: 2 px background padding, grey replicated to RGB."""
    x = np.pad(u8, ((0, 0), (2, 2), (2, 2)), mode="constant", constant_values=0)
    x = torch.from_numpy(x.astype(np.float32) / 255.0 * 2.0 - 1.0)
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def load(split):
    x, y = load_u8(split)
    return to_model_space(x), torch.from_numpy(y)
