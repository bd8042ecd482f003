"""The web-mercator grid: world constants, longitude spans, zoom choice from the target ground
pixel size, and blocks of tiles enumerated without being listed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mercantile
import numpy as np
from affine import Affine

from indexer.config import TilingSettings

if TYPE_CHECKING:
    from indexer.rasters.inspect import RasterInfo

import math
from dataclasses import dataclass, replace

EARTH_RADIUS_M = 6378137.0


WORLD_M = 2 * math.pi * EARTH_RADIUS_M  # web-mercator world width in projected metres


METRES_PER_DEGREE = WORLD_M / 360


MAX_LAT = 85.05112878  # web-mercator's latitude limit


WEB_MERCATOR_EPSG = (3857, 900913)


def lon_spans(west: float, east: float, units_per_degree: float
              ) -> tuple[tuple[float, float, float], ...]:
    """Longitude intervals inside -180..180 covering the unwrapped interval west..east
    (east > west, possibly past +-180), each as (west, east, source x shift): the shift is
    what moves source coordinates into the interval, in source units (0 for projected CRSs
    other than web-mercator, whose projections wrap by themselves)."""
    if east - west >= 360:
        east = west + 360
    k = math.floor((west + 180) / 360)
    w, e = west - 360 * k, east - 360 * k
    if e <= 180 + 1e-9:
        return ((w, min(e, 180.0), -360 * k * units_per_degree),)
    return ((w, 180.0, -360 * k * units_per_degree),
            (-180.0, e - 360, -360 * (k + 1) * units_per_degree))


ORIGIN = WORLD_M / 2


MAX_ZOOM = 24


def tile_gsd_m(zoom: int, lat: float, tile_px: int) -> float:
    """Ground size (m) of one pixel of a `tile_px`-wide tile at `zoom` and latitude `lat`."""
    return WORLD_M * math.cos(math.radians(lat)) / (tile_px * 2**zoom)


def choose_zoom(native_gsd_m: float, lat: float, tile_px: int, tiling: TilingSettings) -> int:
    """Zoom whose pixel size is nearest (in log scale) to target_gsd_m, restricted to
    [native / max_upsample, native * max_downsample] when any zoom falls in that range."""
    if tiling.zoom:
        return tiling.zoom
    lo = native_gsd_m / tiling.max_upsample
    hi = native_gsd_m * tiling.max_downsample
    zooms = range(MAX_ZOOM + 1)
    allowed = [z for z in zooms if lo <= tile_gsd_m(z, lat, tile_px) <= hi]
    goal = tiling.target_gsd_m
    if not allowed:  # the range falls between two zooms: nearest to the native size
        allowed, goal = list(zooms), native_gsd_m
    return min(allowed, key=lambda z: abs(math.log(tile_gsd_m(z, lat, tile_px) / goal)))


LL_EPSILON = 1e-11  # as mercantile.tiles: a tile touching the east/south edge is not in


@dataclass(frozen=True)
class TileBlock:
    """A rectangle of tiles at one zoom (x0..x1, y0..y1 inclusive), enumerated row by row
    without ever being listed; `src_shift` is the x shift (source CRS units) under which the
    source covers it (see RasterInfo.spans)."""

    zoom: int
    x0: int
    y0: int
    x1: int
    y1: int
    src_shift: float = 0.0

    @property
    def width(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def count(self) -> int:
        return self.width * (self.y1 - self.y0 + 1)

    def tile(self, i: int) -> tuple[int, int]:
        """(x, y) of the i-th tile in row-major order."""
        row, col = divmod(i, self.width)
        return self.x0 + col, self.y0 + row


def raster_blocks(info: RasterInfo, zoom: int) -> list[TileBlock]:
    """The tiles at `zoom` that intersect the raster's footprint: one block per longitude
    span (two for a raster across the antimeridian). Memory is independent of their number.
    The latitudes are inside web-mercator's already (inspect_raster clamps them)."""
    _, s, _, n = info.lonlat_bounds
    last = 2**zoom - 1
    out = []
    for w, e, shift in info.spans:
        ul = mercantile.tile(max(-180.0, w), n, zoom)
        lr = mercantile.tile(min(180.0, e) - LL_EPSILON, s + LL_EPSILON, zoom)
        x0, y0 = min(max(ul.x, 0), last), min(max(ul.y, 0), last)
        x1, y1 = min(max(lr.x, 0), last), min(max(lr.y, 0), last)
        if x1 >= x0 and y1 >= y0:
            out.append(TileBlock(zoom, x0, y0, x1, y1, shift))
    return out


def column_bands(blocks: list[TileBlock], width: int) -> list[TileBlock]:
    """The same tiles as bands of at most `width` tile columns, left to right, each band
    read row by row (0: the blocks as they are, whole rows).

    Why: the job's readers take consecutive batches in turn. A batch of whole rows of a
    wide raster is a thin slab, about one row of the source's internal blocks, so nearly
    every block row is decompressed by two readers; a band's batch is a compact region
    whose neighbours share only its edges (BENCHMARKS.md, "Column bands")."""
    if width <= 0:
        return list(blocks)
    return [replace(b, x0=x, x1=min(x + width - 1, b.x1))
            for b in blocks for x in range(b.x0, b.x1 + 1, width)]


def block_window(block: TileBlock, tile_px: int) -> Window:
    """The EPSG:3857 pixel grid of a whole block of tiles (tile_px pixels per tile)."""
    tile_m = WORLD_M / 2**block.zoom
    res = tile_m / tile_px
    return Window(-ORIGIN + block.x0 * tile_m, ORIGIN - block.y0 * tile_m, res,
                  block.width * tile_px, (block.y1 - block.y0 + 1) * tile_px, block.src_shift)


def tile_window(zoom: int, x: int, y: int, tile_px: int, shift: float | None = None) -> Window:
    """The EPSG:3857 window of tile z/x/y at tile_px pixels."""
    tile_m = WORLD_M / 2**zoom
    return Window.square(-ORIGIN + x * tile_m, ORIGIN - y * tile_m, tile_m / tile_px, tile_px,
                         shift)


def strip_window(block: TileBlock, tile_px: int, x0: int, y: int, count: int) -> Window:
    """The EPSG:3857 window of `count` tiles x0.. of tile row `y` of `block`, side by side:
    an integer window of block_window(block, tile_px), read in one call and cut into tiles
    (tile i is columns i * tile_px .. (i + 1) * tile_px of it)."""
    if not (block.x0 <= x0 and x0 + count - 1 <= block.x1 and block.y0 <= y <= block.y1
            and count >= 1):
        raise ValueError(f"tiles {x0}..{x0 + count - 1} of row {y} are not in {block}")
    tile_m = WORLD_M / 2**block.zoom
    return Window(-ORIGIN + x0 * tile_m, ORIGIN - y * tile_m, tile_m / tile_px,
                  count * tile_px, tile_px, block.src_shift)


@dataclass(frozen=True)
class Window:
    """A window in EPSG:3857: top-left corner (metres), metres per pixel, size in pixels.
    `shift`: the x shift (source CRS units) under which the source covers the window (see
    RasterInfo.spans); None = the span that holds the window's centre."""

    left: float
    top: float
    res: float
    width: int
    height: int
    shift: float | None = None

    @classmethod
    def square(cls, left: float, top: float, res: float, size: int,
               shift: float | None = None) -> Window:
        return cls(left, top, res, size, size, shift)

    @property
    def transform(self) -> Affine:
        return Affine(self.res, 0.0, self.left, 0.0, -self.res, self.top)

    def offset_in(self, grid: Window) -> tuple[int, int] | None:
        """(col, row) of this window inside `grid` when it is an integer window of it."""
        if not math.isclose(self.res, grid.res, rel_tol=1e-12):
            return None
        col, row = (self.left - grid.left) / grid.res, (grid.top - self.top) / grid.res
        c, r = round(col), round(row)
        if abs(col - c) > 1e-6 or abs(row - r) > 1e-6:
            return None
        if c < 0 or r < 0 or c + self.width > grid.width or r + self.height > grid.height:
            return None
        return c, r


def tile_runs(keep: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end)] of the runs of True in a bool vector (e.g. the tiles of a strip to
    copy, or to scale, as blocks)."""
    if keep.all():
        return [(0, len(keep))]
    edges = np.flatnonzero(np.diff(np.concatenate(([False], keep, [False])).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
