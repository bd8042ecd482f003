"""Turning an arbitrary picture into the encoder's square uint8 input."""

from __future__ import annotations

import numpy as np
from PIL import Image


def square_tile(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> uint8 [3, size, size]: shortest side resized to `size` (bicubic), then a
    centre crop, as CLIP preprocesses."""
    img = img.convert("RGB")
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    if (w, h) != img.size:
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
