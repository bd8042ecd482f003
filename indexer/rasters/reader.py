"""Web-mercator tiling: zoom choice from the target ground pixel size, the tile grid of a
raster, and windowed reads of aligned tiles through a WarpedVRT (any CRS in)."""

from __future__ import annotations

from dataclasses import dataclass

import mercantile
import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from indexer.config import TilingSettings
from indexer.rasters.grid import ORIGIN, WORLD_M, TileBlock
from indexer.rasters.inspect import RasterInfo
from indexer.rasters.scaling import to_uint8, valid_mask


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
