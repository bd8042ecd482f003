"""Synthetic embeddings with a realistic neighbour structure, and tile metadata for them.

Real image embeddings have a low intrinsic dimension: here, clusters in a `latent`-d space
mapped linearly into `dim`-d plus small isotropic noise, then L2-normalised. (Isotropic
noise alone makes every vector nearly equidistant and nearest neighbours meaningless.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np


class EmbeddingWorld:
    def __init__(self, dim: int = 512, latent: int = 32, clusters: int = 2000, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.latent = dim, latent
        self.proj = rng.normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)
        self.centres = rng.normal(size=(clusters, latent)).astype(np.float32)
        self.spread = 0.35  # within-cluster spread in the latent space
        self.noise = 0.15  # isotropic ambient noise per dimension, relative

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            c = rng.integers(0, len(self.centres), m)
            z = self.centres[c] + rng.normal(size=(m, self.latent)).astype(np.float32) * self.spread
            x = z @ self.proj
            x += rng.normal(size=x.shape).astype(np.float32) * (self.noise / np.sqrt(self.dim)
                                                                 * np.linalg.norm(x, axis=1,
                                                                                  keepdims=True))
            out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def tile_columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Tile metadata for n tiles: uniform over a 10 x 10 degree area, times over 5 years."""
    rng = np.random.default_rng(seed)
    lon = rng.uniform(0.0, 10.0, n)
    lat = rng.uniform(40.0, 50.0, n)
    half = 0.002
    t0 = datetime(2018, 1, 1, tzinfo=UTC)
    days = rng.uniform(0, 5 * 365, n)
    return {
        "west": lon - half, "east": lon + half, "south": lat - half, "north": lat + half,
        "acquired": np.array([t0 + timedelta(days=float(d)) for d in days]),
    }


def rows_from_columns(cols: dict[str, np.ndarray], start: int, stop: int) -> list[dict]:
    out = []
    for i in range(start, stop):
        out.append({
            "z": 16, "x": i % 65536, "y": i // 65536, "west": float(cols["west"][i]),
            "south": float(cols["south"][i]), "east": float(cols["east"][i]),
            "north": float(cols["north"][i]), "source": f"/archive/scene{i // 10000:04d}.tif",
            "source_key": f"k{i // 10000:04d}", "acquired": cols["acquired"][i],
            "sensor": "synthetic", "gsd_m": 10.0, "native_gsd_m": 10.0, "nodata_fraction": 0.0,
        })
    return out
