"""Web-mercator cells as integer ranges: which x and y of a zoom a lon/lat box touches,
exactly as the tiles' stored float64 bounds (`mercantile.bounds`, what the job writes) say.

A tile's footprint is its cell, so the tile table keeps z/x/y (9 bytes) instead of four
bounds, and a bbox filter becomes two integer ranges per zoom. The ranges come from a
binary search over `mercantile.bounds` itself (the same arithmetic that made the stored
bounds), so `east > w AND west < e AND north > s AND south < n` over the stored columns and
the ranges select the same tiles, edges included.
"""

from __future__ import annotations

from collections.abc import Callable

import mercantile
import numpy as np


def _first(pred: Callable[[int], bool], n: int) -> int:
    """The smallest i in 0..n with pred(i) true (n when none); pred false then true."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def x_range(z: int, west: float, east: float) -> tuple[int, int]:
    """[lo, hi): the x of cells at zoom z with east edge > west and west edge < east
    (west < east)."""
    n = 1 << z
    lo = _first(lambda x: mercantile.bounds(x, 0, z).east > west, n)
    hi = _first(lambda x: mercantile.bounds(x, 0, z).west >= east, n)
    return lo, hi


def x_below(z: int, east: float) -> int:
    """[0, hi): the x of cells whose west edge < east."""
    return _first(lambda x: mercantile.bounds(x, 0, z).west >= east, 1 << z)


def x_above(z: int, west: float) -> int:
    """[lo, 2^z): the x of cells whose east edge > west."""
    return _first(lambda x: mercantile.bounds(x, 0, z).east > west, 1 << z)


def y_range(z: int, south: float, north: float) -> tuple[int, int]:
    """[lo, hi): the y of cells at zoom z with north edge > south and south edge < north
    (y grows southwards)."""
    n = 1 << z
    lo = _first(lambda y: mercantile.bounds(0, y, z).south < north, n)
    hi = _first(lambda y: mercantile.bounds(0, y, z).north <= south, n)
    return lo, hi


def cell_bounds(z: np.ndarray, x: np.ndarray, y: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """west, south, east, north of cells, vectorised (mercantile's formula; numpy's
    transcendental functions may differ from `math`'s in the last bit)."""
    n = np.exp2(np.asarray(z, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)

    def lat(yy):
        return np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * yy / n))))

    return x / n * 360.0 - 180.0, lat(y + 1), (x + 1) / n * 360.0 - 180.0, lat(y)


def exact_cell_bounds(z: np.ndarray, x: np.ndarray, y: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """west, south, east, north of cells, each bit for bit `mercantile.bounds` (what the
    tile table stores, and `x_range`/`y_range` search): mercantile is called once per
    distinct (z, x) for the longitudes and (z, y) for the latitudes, not once per cell
    (a batch of tiles covers a few rows and columns)."""
    z = np.asarray(z, dtype=np.int64) << 32  # x, y < 2**z <= 2**31: one int64 per pair
    cols, col = np.unique(z | np.asarray(x, dtype=np.int64), return_inverse=True)
    rows, row = np.unique(z | np.asarray(y, dtype=np.int64), return_inverse=True)
    lon = np.array([mercantile.bounds(k & 0xFFFFFFFF, 0, k >> 32)[::2]  # (west, east)
                    for k in cols.tolist()], dtype=np.float64).reshape(-1, 2)
    lat = np.array([mercantile.bounds(0, k & 0xFFFFFFFF, k >> 32)[1::2]  # (south, north)
                    for k in rows.tolist()], dtype=np.float64).reshape(-1, 2)
    return lon[col, 0], lat[row, 0], lon[col, 1], lat[row, 1]
