"""Minimal PNG writer (no Pillow needed) for image grids."""
import struct
import zlib

import numpy as np


def write_png(path, img):
    """img: (H, W, 3) uint8."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def grid(images, cols, scale=1, pad=2):
    """images: (n, 3, H, W) float in [-1, 1] -> (H', W', 3) uint8 grid, rows of `cols`."""
    x = np.clip(127.5 * images + 128, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if scale > 1:
        x = x.repeat(scale, 1).repeat(scale, 2)
    n, h, w, _ = x.shape
    rows = (n + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[i]
    return out
