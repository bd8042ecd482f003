"""Web-mercator tiling: zoom choice from the target ground pixel size, the tile grid of a
raster, and windowed reads of aligned tiles through a WarpedVRT (any CRS in)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mercantile
import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from indexer.config import TilingSettings
from indexer.raster import WORLD_M, RasterInfo, to_uint8, valid_mask

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


@dataclass(frozen=True)
class TileRead:
    rgb: np.ndarray  # uint8 [3, S, S]
    nodata_fraction: float


class TileReader:
    """Reads aligned web-mercator tiles of one raster at one zoom.

    One WarpedVRT spans the raster's tile range on the exact tile grid (pixel size =
    tile width / S), so every tile is an integer window of it: GDAL warps only that window.
    """

    def __init__(self, info: RasterInfo, block: TileBlock, tile_px: int, tiling: TilingSettings):
        self.info, self.zoom, self.px, self.tiling = info, block.zoom, tile_px, tiling
        zoom = block.zoom
        self.x0, self.y0 = block.x0, block.y0
        nx, ny = block.width, block.y1 - block.y0 + 1
        tile_m = WORLD_M / 2**zoom
        res = tile_m / tile_px
        transform = Affine(res, 0.0, -ORIGIN + self.x0 * tile_m, 0.0, -res,
                           ORIGIN - self.y0 * tile_m)
        self._src = rasterio.open(info.path)
        shifted = {}
        if block.src_shift:  # the source as if written in this span's longitudes
            shifted["src_transform"] = Affine.translation(block.src_shift, 0) * self._src.transform
        self._vrt = WarpedVRT(
            self._src, crs="EPSG:3857", transform=transform, width=nx * tile_px,
            height=ny * tile_px, resampling=Resampling[tiling.resampling],
            add_alpha=info.add_alpha, **shifted,
        )

    def read(self, tile: mercantile.Tile) -> TileRead:
        win = Window((tile.x - self.x0) * self.px, (tile.y - self.y0) * self.px, self.px, self.px)
        return _read_scaled(self._vrt, win, self.info, self.tiling)

    def close(self) -> None:
        self._vrt.close()
        self._src.close()


def _read_scaled(vrt: WarpedVRT, window: Window | None, info: RasterInfo,
                 tiling: TilingSettings) -> TileRead:
    """The selected bands of a window, scaled to uint8, invalid pixels zeroed and counted."""
    data = vrt.read(list(tiling.bands), window=window)
    valid = valid_mask(data, vrt.dataset_mask(window=window), tiling)
    rgb = to_uint8(data, info.scale_lo, info.scale_hi)
    if not valid.all():
        rgb = np.where(valid[None], rgb, np.uint8(0))
    return TileRead(rgb=rgb, nodata_fraction=float(1.0 - valid.mean()))


def read_mercator_window(src, info: RasterInfo, tiling: TilingSettings, left: float,
                         top: float, res: float, size: int) -> TileRead:
    """A size x size patch of the open raster `src` on an arbitrary EPSG:3857 grid (top-left
    corner, metres per pixel), read like a tile: same bands, scaling and nodata rules."""
    with WarpedVRT(src, crs="EPSG:3857", transform=Affine(res, 0.0, left, 0.0, -res, top),
                   width=size, height=size, resampling=Resampling[tiling.resampling],
                   add_alpha=info.add_alpha) as vrt:
        return _read_scaled(vrt, None, info, tiling)
