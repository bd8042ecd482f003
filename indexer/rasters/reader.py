"""`RasterReader`: THE way pixels leave a raster. Any EPSG:3857 window of any raster (any
CRS in, warped through GDAL's WarpedVRT), with the configured bands, scaling and valid-pixel
rule, as a uint8 `Patch`. Index tiles, GRAFT training patches and georeferenced query images
all come through here, so they look alike.

One cache of open datasets (least recently used closed first). Windows on a common pixel
grid (the tiles of one block) name that grid: the reader keeps one warped view of it, and
each window is an integer window of that view, so GDAL warps only what is read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as PixelWindow

from indexer.config import TilingSettings
from indexer.rasters.grid import METRES_PER_DEGREE, Window
from indexer.rasters.inspect import RasterInfo
from indexer.rasters.scaling import to_uint8, valid_mask

OPEN_DATASETS = 8  # per reading process


@dataclass(frozen=True)
class Patch:
    rgb: np.ndarray  # uint8 [3, H, W], invalid pixels 0
    nodata_fraction: float


def _shift(info: RasterInfo, window: Window) -> float:
    if window.shift is not None:
        return window.shift
    lon = (window.left + window.width * window.res / 2) / METRES_PER_DEGREE
    for west, east, shift in info.spans:
        if west <= lon <= east:
            return shift
    return info.spans[0][2] if info.spans else 0.0


class RasterReader:
    def __init__(self, tiling: TilingSettings, max_open: int = OPEN_DATASETS):
        self.tiling, self.max_open = tiling, max_open
        self._datasets: OrderedDict[str, rasterio.DatasetReader] = OrderedDict()
        self._views: OrderedDict[tuple[str, Window], WarpedVRT] = OrderedDict()

    def read(self, info: RasterInfo, window: Window, grid: Window | None = None) -> Patch:
        """The window's pixels, scaled to uint8, invalid pixels zeroed and counted. `grid`:
        a larger window on the same pixel grid that holds `window` (e.g. its block of
        tiles), read through one cached warped view."""
        if grid is not None and (offset := window.offset_in(grid)) is not None:
            vrt = self._view(info, grid)
            col, row = offset
            return self._read(vrt, PixelWindow(col, row, window.width, window.height), info)
        with self._warp(info, window) as vrt:
            return self._read(vrt, None, info)

    def _read(self, vrt: WarpedVRT, win: PixelWindow | None, info: RasterInfo) -> Patch:
        data = vrt.read(list(self.tiling.bands), window=win)
        valid = valid_mask(data, vrt.dataset_mask(window=win), self.tiling)
        rgb = to_uint8(data, info.scale_lo, info.scale_hi)
        if not valid.all():
            rgb = np.where(valid[None], rgb, np.uint8(0))
        return Patch(rgb=rgb, nodata_fraction=float(1.0 - valid.mean()))

    def _dataset(self, path: str) -> rasterio.DatasetReader:
        if path in self._datasets:
            self._datasets.move_to_end(path)
            return self._datasets[path]
        while len(self._datasets) >= self.max_open:
            old, src = self._datasets.popitem(last=False)
            for key in [k for k in self._views if k[0] == old]:
                self._views.pop(key).close()
            src.close()
        self._datasets[path] = rasterio.open(path)
        return self._datasets[path]

    def _warp(self, info: RasterInfo, window: Window) -> WarpedVRT:
        src = self._dataset(info.path)
        shifted = {}
        shift = _shift(info, window)
        if shift:  # the source as if written in this span's longitudes
            shifted["src_transform"] = Affine.translation(shift, 0) * src.transform
        return WarpedVRT(src, crs="EPSG:3857", transform=window.transform, width=window.width,
                         height=window.height, resampling=Resampling[self.tiling.resampling],
                         add_alpha=info.add_alpha, **shifted)

    def _view(self, info: RasterInfo, grid: Window) -> WarpedVRT:
        key = (info.path, grid)
        if key in self._views:
            self._views.move_to_end(key)
            return self._views[key]
        vrt = self._warp(info, grid)  # opens (and may evict) datasets first
        while len(self._views) >= self.max_open:
            self._views.popitem(last=False)[1].close()
        self._views[key] = vrt
        return vrt

    def close(self) -> None:
        for vrt in self._views.values():
            vrt.close()
        for src in self._datasets.values():
            src.close()
        self._views.clear()
        self._datasets.clear()
