"""Shared settings of the demo recipe: model configs, paths, seeding."""
import json
import os
import random
import time

# Passive OpenMP waiting: with 2 threads on 2 shared cores, spinning threads lose badly to a busy neighbour
# (measured 4.0 s/step spinning vs 1.5 s/step passive for the VQ while a compiler ran). Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORK = os.environ.get("TRAIN_DEMO_WORK", os.path.join(HERE, "work"))  # checkpoints, codes (git-ignored)
MODELS = os.environ.get("TRAIN_DEMO_MODELS", os.path.join(REPO, "models", "demo"))
THREADS = int(os.environ.get("TRAIN_DEMO_THREADS", "2"))

# The official VQModel config fields (+ the Encoder/Decoder constructor arguments ch, num_res_blocks).
VQ_CONFIG = {
    "codebook_size": 512,
    "codebook_embed_dim": 8,
    "codebook_l2_norm": True,
    "encoder_ch_mult": [1, 2, 2],
    "decoder_ch_mult": [1, 2, 2],
    "z_channels": 64,
    "ch": 32,
    "num_res_blocks": 1,
}

# The official ModelArgs fields (same set and order as tests/data/gpt_tiny_c2i.config.json).
GPT_CONFIG = {
    "model_type": "c2i",
    "dim": 128,
    "n_layer": 8,
    "n_head": 4,
    "n_kv_head": None,
    "multiple_of": 64,
    "ffn_dim_multiplier": None,
    "rope_base": 10000,
    "norm_eps": 1e-05,
    "num_classes": 10,
    "caption_dim": 2048,
    "class_dropout_prob": 0.1,
    "vocab_size": 512,
    "cls_token_num": 1,
    "block_size": 64,
}


def setup(seed):
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    os.makedirs(WORK, exist_ok=True)


class Log:
    def __init__(self, name):
        self.t0 = time.time()
        self.f = open(os.path.join(WORK, f"{name}.log"), "w")

    def __call__(self, msg):
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()

    def elapsed(self):
        return time.time() - self.t0


def psnr(x, y):
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), per image, averaged."""
    mse = ((x.clamp(-1, 1) - y) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean().item()


def save_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
