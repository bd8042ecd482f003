"""Synthetic embeddings with a realistic neighbour structure, and tile metadata for them.

Real image embeddings have a low intrinsic dimension: here, clusters in a `latent`-d space
mapped linearly into `dim`-d plus small isotropic noise, then L2-normalised. (Isotropic
noise alone makes every vector nearly equidistant and nearest neighbours meaningless.)

Two ways to draw vectors: `sample(n, seed)`, one stream for the whole array (the other
benches), and `chunk(i, size, seed)`, chunk i of a base of any size, drawn from its own
stream (`default_rng([seed, i])`): any chunk can be regenerated alone, in any order, so a
benchmark at 10M tiles streams the base twice (build, ground truth) and never holds it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

import mercantile
import numpy as np

ZOOM = 16
AREA = (0.0, 40.0, 10.0, 50.0)  # west, south, east, north (degrees): where the tiles lie
T0 = datetime(2018, 1, 1, tzinfo=UTC)
SPAN_US = 5 * 365 * 86_400 * 10**6  # acquisition times over 5 years from T0
SCENE_TILES = 10_000  # tiles per synthetic source (scene)
SCENE_WIDTH = 100  # a scene's tiles: SCENE_WIDTH cells a row (0.55 x 0.42 degrees at z16)
LAYOUTS = ("scenes", "random")


class EmbeddingWorld:
    def __init__(self, dim: int = 512, latent: int = 32, clusters: int = 2000, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.latent = dim, latent
        self.proj = rng.normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)
        self.centres = rng.normal(size=(clusters, latent)).astype(np.float32)
        self.spread = 0.35  # within-cluster spread in the latent space
        self.noise = 0.15  # isotropic ambient noise per dimension, relative

    def _embed(self, c: np.ndarray, z_noise: np.ndarray, x_noise: np.ndarray,
               proj: np.ndarray) -> np.ndarray:
        """Unit vectors: cluster centres `c` + latent noise, projected, + ambient noise (in
        proj's precision: `self.proj` is float64, which `sample` has always used)."""
        x = (self.centres[c] + z_noise * self.spread) @ proj
        x += x_noise * (proj.dtype.type(self.noise / np.sqrt(self.dim))
                        * np.linalg.norm(x, axis=1, keepdims=True))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            c = rng.integers(0, len(self.centres), m)
            z = rng.normal(size=(m, self.latent)).astype(np.float32)
            out[s:s + m] = self._embed(c, z, rng.normal(size=(m, self.dim)).astype(np.float32),
                                       self.proj)
        return out

    def chunk(self, i: int, size: int, seed: int, rows: int | None = None) -> np.ndarray:
        """float32 [size, dim] (the first `rows` of them if given): rows i*size.. of a base
        drawn in chunks of `size` from `seed`. Deterministic per (i, size, seed), independent
        of any other chunk; float32 throughout (several times faster than `sample`)."""
        rng = np.random.default_rng([seed, i])
        c = rng.integers(0, len(self.centres), size)
        z = rng.standard_normal((size, self.latent), dtype=np.float32)
        x = self._embed(c, z, rng.standard_normal((size, self.dim), dtype=np.float32),
                        self.proj.astype(np.float32))
        return x if rows is None or rows >= size else x[:rows]


@cache
def cell_bounds(zoom: int = ZOOM, area: tuple = AREA) -> dict[str, np.ndarray | int]:
    """The web-mercator cells at `zoom` covering `area`: x0, y0 and per-x west/east,
    per-y south/north edges, each exactly what `mercantile.bounds(x, y, zoom)` gives (its
    longitudes depend on x only and its latitudes on y only; checked in `tile_columns`)."""
    w, s, e, n = area
    tl, br = mercantile.tile(w, n, zoom), mercantile.tile(e, s, zoom)
    xs, ys = range(tl.x, br.x + 1), range(tl.y, br.y + 1)
    bx = [mercantile.bounds(x, tl.y, zoom) for x in xs]
    by = [mercantile.bounds(tl.x, y, zoom) for y in ys]
    return {"x0": tl.x, "y0": tl.y,
            "west": np.array([b.west for b in bx]), "east": np.array([b.east for b in bx]),
            "south": np.array([b.south for b in by]), "north": np.array([b.north for b in by])}


def tile_columns(n: int, seed: int = 0, chunk: int | None = None, first: int = 0,
                 layout: str = "scenes") -> dict[str, np.ndarray]:
    """Metadata for n tiles (tile numbers first..first+n-1, which name their scene), at
    zoom-16 web-mercator cells over AREA (lon 0..10, lat 40..50), bounds exactly
    mercantile.bounds(x, y, 16), acquisition times over 5 years from 2018-01-01
    (datetime64[us], UTC). `layout`:
    - "scenes" (what the indexing job writes): a scene's SCENE_TILES tiles are consecutive
      numbers covering a SCENE_WIDTH-wide patch of cells at a random place in AREA, row by
      row, acquired at one time (plus a second per row of tiles);
    - "random": each tile at the cell under a uniform random point and a uniform random
      time (ids carry no locality: the worst case for zone maps).
    A cell can repeat (a place imaged again). `chunk`: draw from default_rng([seed,
    chunk]), so chunks of one seed are independent and can be regenerated alone (scenes are
    drawn from default_rng([seed, 2**40, scene]) whichever chunk they fall in)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: one of {LAYOUTS}")
    rng = np.random.default_rng(seed if chunk is None else [seed, chunk])
    w, s, e, nn = AREA
    cb = cell_bounds()
    t0_us = int(T0.timestamp()) * 10**6
    if layout == "random":
        lon = rng.uniform(w, e, n)
        lat = rng.uniform(s, nn, n)
        # The cell containing each point, by the exact edges (west edges ascend with x,
        # north edges descend with y).
        ix = np.searchsorted(cb["west"], lon, side="right") - 1
        iy = np.searchsorted(-cb["north"], -lat, side="right") - 1
        ix = np.clip(ix, 0, len(cb["west"]) - 1)
        iy = np.clip(iy, 0, len(cb["north"]) - 1)
        acquired = (t0_us + rng.integers(0, SPAN_US, n)).astype("datetime64[us]")
    else:
        number = np.arange(first, first + n, dtype=np.int64)
        scene, j = number // SCENE_TILES, number % SCENE_TILES
        rows = -(-SCENE_TILES // SCENE_WIDTH)
        params = {}
        for sc in np.unique(scene).tolist():
            r = np.random.default_rng([seed, 1 << 40, sc])
            params[sc] = (int(r.integers(0, len(cb["west"]) - SCENE_WIDTH)),
                          int(r.integers(0, len(cb["north"]) - rows)),
                          int(r.integers(0, SPAN_US)))
        p = np.asarray([params[sc] for sc in scene.tolist()], dtype=np.int64).reshape(-1, 3)
        ix = p[:, 0] + j % SCENE_WIDTH
        iy = p[:, 1] + j // SCENE_WIDTH
        acquired = (t0_us + p[:, 2] + (j // SCENE_WIDTH) * 10**6).astype("datetime64[us]")
    cols = {
        "number": np.arange(first, first + n, dtype=np.int64),
        "z": np.full(n, ZOOM, dtype=np.int8),
        "x": (cb["x0"] + ix).astype(np.int32), "y": (cb["y0"] + iy).astype(np.int32),
        "west": cb["west"][ix], "east": cb["east"][ix],
        "south": cb["south"][iy], "north": cb["north"][iy],
        "acquired": acquired,
    }
    # Spot check against mercantile itself (cheap: a few cells per call).
    for j in range(0, n, max(1, n // 4)):
        b = mercantile.bounds(int(cols["x"][j]), int(cols["y"][j]), ZOOM)
        got = (cols["west"][j], cols["south"][j], cols["east"][j], cols["north"][j])
        if got != tuple(b):
            raise AssertionError(f"tile {j}: bounds {got} != mercantile {tuple(b)}")
    return cols


def rows_from_columns(cols: dict[str, np.ndarray], start: int, stop: int) -> list[dict]:
    """IndexWriter.add rows for cols[start:stop] (one dict per tile, columns converted to
    Python values in bulk, times as aware datetimes)."""
    sl = slice(start, stop)
    scenes = (cols["number"][sl] // SCENE_TILES).tolist()
    names = {s: (f"/archive/scene{s:04d}.tif", f"k{s:04d}") for s in set(scenes)}
    utc = UTC
    when = [datetime.fromtimestamp(u / 1e6, utc)
            for u in cols["acquired"][sl].astype(np.int64).tolist()]
    return [{"z": z, "x": x, "y": y, "west": w, "south": s, "east": e, "north": n,
             "source": names[sc][0], "source_key": names[sc][1], "acquired": t,
             "sensor": "synthetic", "gsd_m": 10.0, "native_gsd_m": 10.0,
             "nodata_fraction": 0.0}
            for z, x, y, w, s, e, n, sc, t in zip(
                cols["z"][sl].tolist(), cols["x"][sl].tolist(), cols["y"][sl].tolist(),
                cols["west"][sl].tolist(), cols["south"][sl].tolist(),
                cols["east"][sl].tolist(), cols["north"][sl].tolist(), scenes, when,
                strict=True)]
