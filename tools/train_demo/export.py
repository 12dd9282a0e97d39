"""Stage 3: write models/demo/ from the trained checkpoints in work/.

* vq.safetensors, gpt.safetensors: f32, official state-dict names, the config JSON as safetensors metadata
  `config` (GPT: official ModelArgs fields; VQ: official VQ config fields + ch, num_res_blocks), so
  `llamagen generate --gpt models/demo/gpt.safetensors --vq models/demo/vq.safetensors` needs no other flag;
* gpt.config.json, vq.config.json: the same configs beside the weights;
* classes.json: the 10 Fashion-MNIST class names in label order.
"""
import json
import os

import common  # noqa: F401
import torch
from safetensors.torch import save_file

from common import MODELS, WORK, save_json
from data import CLASSES


def export(sd, cfg, path, extra=None):
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}
    meta = {"config": json.dumps(cfg), "format": "pt"}
    meta.update(extra or {})
    save_file(tensors, path, metadata=meta)
    os.chmod(path, 0o644)
    n = sum(t.numel() for t in tensors.values())
    print(f"{path}: {len(tensors)} tensors, {n} values, {os.path.getsize(path)} bytes")


def main():
    os.makedirs(MODELS, exist_ok=True)
    vq = torch.load(os.path.join(WORK, "vq.pt"))
    gpt = torch.load(os.path.join(WORK, "gpt.pt"))
    source = "llamagen demo: Fashion-MNIST 32x32, trained by tools/train_demo (see its README.md)"
    export(vq["model"], vq["config"], os.path.join(MODELS, "vq.safetensors"), {"source": source})
    export(gpt["model"], gpt["config"], os.path.join(MODELS, "gpt.safetensors"),
           {"source": source, "classes": json.dumps(CLASSES)})
    save_json(vq["config"], os.path.join(MODELS, "vq.config.json"))
    save_json(gpt["config"], os.path.join(MODELS, "gpt.config.json"))
    save_json(CLASSES, os.path.join(MODELS, "classes.json"))
    summary = {
        "vq": {k: vq[k] for k in ("test_psnr", "test_usage", "train_seconds", "steps")},
        "gpt": {k: gpt[k] for k in ("train_loss", "test_loss", "train_seconds", "tokenize_seconds", "steps")},
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
