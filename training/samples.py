"""Satellite patches cut around photos: one sample per photo on a jittered EPSG:3857 grid, with
every other photo inside it and its pixel position (what GRAFT's pixel-level loss needs)."""

from __future__ import annotations

from dataclasses import dataclass

import mercantile
import numpy as np

from training.photos import Photo


@dataclass(frozen=True)
class Sample:
    anchor: int  # index of the photo the patch was cut around
    left: float  # EPSG:3857 bounds of the patch
    top: float
    res: float  # EPSG:3857 metres per patch pixel
    size: int
    photos: tuple[int, ...]  # every photo inside the patch (the anchor included)
    rows: tuple[float, ...]  # their pixel positions in the patch
    cols: tuple[float, ...]

    @property
    def centre(self) -> tuple[float, float]:
        """EPSG:3857 centre of the patch."""
        half = self.size * self.res / 2
        return self.left + half, self.top - half


def build_samples(photos: list[Photo], size: int, gsd_m: float, jitter: float = 0.35,
                  seed: int = 0) -> list[Sample]:
    """One sample per photo: a size x size patch of `gsd_m` ground pixels whose centre is
    the photo moved by up to `jitter` x the patch half-width. Photos are bucketed on a grid
    of the widest patch, so finding the photos inside a patch looks at 9 cells, not at every
    photo."""
    rng = np.random.default_rng(seed)
    if not photos:
        return []
    xy = np.array([mercantile.xy(p.lon, p.lat) for p in photos])
    res_all = gsd_m / np.cos(np.radians([p.lat for p in photos]))
    cell = float(size * res_all.max())
    keys = np.floor(xy / cell).astype(np.int64)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    buckets: dict[tuple[int, int], np.ndarray] = {}
    bounds = np.flatnonzero(np.any(np.diff(keys[order], axis=0) != 0, axis=1)) + 1
    for chunk in np.split(order, bounds):
        buckets[(int(keys[chunk[0], 0]), int(keys[chunk[0], 1]))] = chunk
    empty = np.zeros(0, dtype=np.int64)
    out = []
    for i in range(len(photos)):
        res = float(res_all[i])
        half = size * res / 2
        dx, dy = rng.uniform(-jitter, jitter, 2) * half
        left, top = xy[i, 0] + dx - half, xy[i, 1] + dy + half
        kx, ky = keys[i]
        near = np.sort(np.concatenate([buckets.get((int(kx + a), int(ky + b)), empty)
                                       for a in (-1, 0, 1) for b in (-1, 0, 1)]))
        cols = (xy[near, 0] - left) / res
        rows = (top - xy[near, 1]) / res
        mask = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
        inside = near[mask]
        assert i in inside
        out.append(Sample(i, float(left), float(top), res, size,
                          tuple(int(j) for j in inside), tuple(float(r) for r in rows[mask]),
                          tuple(float(c) for c in cols[mask])))
    return out
