"""Embed: a batch of uint8 tiles to unit vectors with the encoder."""

from __future__ import annotations

import numpy as np

from encoder.model import SatelliteEncoder


def embed_tiles(encoder: SatelliteEncoder, items: list[dict]) -> np.ndarray:
    """float32 [N, D] vectors of the items' tiles, in order."""
    return encoder.encode_images(np.stack([it["rgb"] for it in items]))
