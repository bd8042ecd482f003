"""`RasterReader`: THE way pixels leave a raster. Any EPSG:3857 window of any raster (any
CRS in), with the configured bands, scaling and valid-pixel rule, as a uint8 `Patch`. Index
tiles, GRAFT training patches and georeferenced query images all come through here, so they
look alike.

Two warps (tiling.warp): "fast" (warp.py: per-piece affine fits and OpenCV, one plain
source read per window) and "gdal" (GDAL's WarpedVRT; below). Both use the raster's internal
overviews the same way.

One cache of open datasets (least recently used closed first), keyed by (path, overview
level). Windows on a common pixel grid (the tiles of one block, or a strip of them) name
that grid: the reader keeps one warped view of it, and each window is an integer window of
that view, so GDAL warps only what is read.

One warp per read: the pixels and the validity mask come from the same `vrt.read` (see
`_MaskRule`). Windows at least 2x coarser than the raster are warped from its internal
overview (as gdalwarp's `-ovr AUTO`), not from the full-resolution pixels.

Remote rasters (URLs) are opened through GDAL's network file systems with satfind's GDAL
settings around each read; a read that fails half-way is retried on reopened datasets
(`remote.with_retries`), so a result is always a whole read.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window as PixelWindow

from indexer.config import RemoteSettings, TilingSettings
from indexer.rasters.grid import METRES_PER_DEGREE, Window, tile_runs
from indexer.rasters.inspect import RasterInfo
from indexer.rasters.remote import gdal_path, with_retries
from indexer.rasters.scaling import to_uint8, valid_mask
from indexer.rasters.warp import Deferred, warp_or_defer

OPEN_DATASETS = 8  # per reading process
FULL = -1  # the overview "level" of the full-resolution pixels
# An overview is used when its pixels are no larger than the window's (relative slack for
# rounding, as gdalwarp's own small fuzz): 2x overviews from a 2x coarser window on.
OVERVIEW_SLACK = 1e-3


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


# GDAL's nodata test for floating-point bands (GDALNoDataMaskBand: ARE_REAL_EQUAL, 2 ulp of
# float32 relative to the sum, in the band's work type).
_FLOAT_EPS = np.finfo(np.float32).eps


def _nodata_work_type(dtype: str, nodata: float) -> np.dtype | None:
    """The type GDAL compares a band of `dtype` with its nodata value in, or None where we
    do not reproduce GDAL's comparison exactly (then the reader asks GDAL)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:  # e.g. rasterio's complex_int16
        return None
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not math.isfinite(nodata) or not info.min <= nodata <= info.max:
            return None  # GDAL would not flag the band as nodata-masked anyway
        if dt.itemsize == 8 and abs(nodata) > 2**53:
            return None  # GDAL reads 64-bit nodata exactly; rasterio gives us a double
        return dt
    if dt in (np.float32, np.complex64):
        return np.dtype(np.float32)
    if dt in (np.float64, np.complex128):
        return np.dtype(np.float64)
    return None


def _nodata_valid(band: np.ndarray, nodata: float) -> np.ndarray:
    """[H, W] pixels of `band` that GDAL's nodata mask band marks valid (255)."""
    if band.dtype.kind in "iu":
        # GDAL casts the nodata value to the band's type (truncation toward zero)
        return band != band.dtype.type(math.trunc(nodata))
    work = np.float32 if band.dtype in (np.float32, np.complex64) else np.float64
    v = band.real if band.dtype.kind == "c" else band
    v = v.astype(work, copy=False)
    if math.isnan(nodata):
        return ~np.isnan(v)
    nd = work(nodata)
    with np.errstate(invalid="ignore", over="ignore"):
        equal = (v == nd) | (np.abs(v - nd) < work(_FLOAT_EPS) * np.abs(v + nd) * work(2))
    return ~equal


@dataclass(frozen=True)
class _MaskRule:
    """How the warped view's dataset mask, as `rasterio`'s `dataset_mask` makes it, follows
    from band values read with the data, so that one `vrt.read` gives both.

    dataset_mask is, in order: (1) a per-dataset mask (GDAL: the alpha band of a 2- or
    4-band dataset, e.g. the alpha the warp adds to a 1- or 3-band raster without nodata,
    which also carries the raster's internal mask, or the raster's own alpha): that band's
    values (byte, or uint16 rescaled with 0 kept 0); (2) a 4-band dataset whose first band
    is red: band 4's own mask; (3) otherwise the OR of every band's mask (nodata: value !=
    nodata; no nodata: all valid). So the alpha added to a 4-band raster (a 5-band view)
    or to a float raster is no mask to GDAL: all valid, as it always was here (outside
    pixels are then caught by zero_is_nodata only).

    kind: "alpha" (valid where the one band in `bands` is not 0), "nodata" (valid where any
    band in `bands` is not its `nodata`), "valid" (every pixel), "gdal" (not reproduced:
    a second read of `vrt.dataset_mask`, i.e. a second warp, for this view only)."""

    kind: str
    bands: tuple[int, ...] = ()
    nodata: tuple[float, ...] = ()

    @classmethod
    def of(cls, vrt: WarpedVRT) -> _MaskRule:
        flags = [set(f) for f in vrt.mask_flag_enums]
        if MaskFlags.per_dataset in flags[0]:
            alpha = vrt.count
            if (MaskFlags.alpha in flags[0] and vrt.count in (2, 4)
                    and vrt.colorinterp[alpha - 1] == ColorInterp.alpha
                    and vrt.dtypes[alpha - 1] in ("uint8", "uint16")):
                return cls("alpha", (alpha,))
            return cls("gdal")  # a per-dataset mask band that is not a band we can read
        if vrt.count == 4 and vrt.colorinterp[0] == ColorInterp.red:
            candidates: tuple[int, ...] = (4,)
        else:
            candidates = tuple(range(1, vrt.count + 1))
        bands, nodata = [], []
        for b in candidates:
            f, nd = flags[b - 1], vrt.nodatavals[b - 1]
            if f == {MaskFlags.all_valid}:
                return cls("valid")  # one all-valid band mask makes the OR all valid
            if (f != {MaskFlags.nodata} or nd is None
                    or _nodata_work_type(vrt.dtypes[b - 1], nd) is None):
                return cls("gdal")
            bands.append(b)
            nodata.append(float(nd))
        return cls("nodata", tuple(bands), tuple(nodata))

    def valid(self, values: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """[H, W] bool from the bands read (`values`: band index -> [H, W])."""
        if self.kind == "valid":
            return np.ones(shape, dtype=bool)
        if self.kind == "alpha":
            return values[self.bands[0]] != 0
        out = _nodata_valid(values[self.bands[0]], self.nodata[0])
        for b, nd in zip(self.bands[1:], self.nodata[1:], strict=True):
            out |= _nodata_valid(values[b], nd)
        return out


def _pixels_per_pixel(crs: CRS, transform: Affine, window: Window) -> float:
    """How many source pixels one window pixel spans (geometric mean across and down),
    measured at the window's centre; nan where the centre does not project."""
    cx = window.left + window.width * window.res / 2
    cy = window.top - window.height * window.res / 2
    h = window.res / 2
    try:
        xs, ys = warp_transform("EPSG:3857", crs, [cx - h, cx + h, cx, cx],
                                [cy, cy, cy + h, cy - h])
    except Exception:  # PROJ errors come in several types
        return math.nan
    inv = ~transform
    (c0, r0), (c1, r1), (c2, r2), (c3, r3) = (inv @ (x, y) for x, y in zip(xs, ys, strict=True))
    return math.sqrt(math.hypot(c1 - c0, r1 - r0) * math.hypot(c3 - c2, r3 - r2))


@dataclass
class _View:
    vrt: WarpedVRT
    rule: _MaskRule
    dataset: tuple[str, int]  # the (path, level) it warps


class RasterReader:
    def __init__(self, tiling: TilingSettings, max_open: int = OPEN_DATASETS,
                 use_overviews: bool = True, remote: RemoteSettings | None = None):
        """`remote`: GDAL settings and retries for remote rasters (defaults if None)."""
        self.tiling, self.max_open, self.use_overviews = tiling, max_open, use_overviews
        self.warp = tiling.resolved_warp()  # "fast" or "gdal"
        self.remote = remote or RemoteSettings()
        self._datasets: OrderedDict[tuple[str, int], rasterio.DatasetReader] = OrderedDict()
        self._views: OrderedDict[tuple[str, Window], _View] = OrderedDict()
        # path -> (overview factors, CRS, full-resolution transform)
        self._grids: dict[str, tuple[tuple[int, ...], CRS, Affine]] = {}

    def read(self, info: RasterInfo, window: Window, grid: Window | None = None) -> Patch:
        """The window's pixels, scaled to uint8, invalid pixels zeroed and counted. `grid`:
        a larger window on the same pixel grid that holds `window` (e.g. its block of
        tiles), read through one cached warped view."""
        rgb, valid = self.read_masked(info, window, grid)
        return Patch(rgb=rgb, nodata_fraction=float(1.0 - valid.mean()))

    def read_masked(self, info: RasterInfo, window: Window, grid: Window | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 [3, H, W] with invalid pixels 0, valid bool [H, W]) of the window, from
        one warp. `grid` as in `read`; `window` may be any integer window of it, e.g. a strip
        of tiles to cut in numpy (each tile then equals its own read through `grid`).
        A remote raster is read with satfind's GDAL settings; a read that fails half-way is
        retried on freshly opened datasets (remote.read_retries), never returned partial."""
        return with_retries(info.path, self.remote,
                            lambda: self._read_masked(info, window, grid),
                            reset=lambda: self.forget(info.path))

    def read_deferring(self, info: RasterInfo, window: Window, grid: Window, px: int
                       ) -> tuple[np.ndarray, np.ndarray, list[Deferred]]:
        """read_masked of a window one tile of `px` pixels high, with the tiles that are one
        plain piece of the fast warp (warp.warp_or_defer) left unresampled and handed back
        as Deferred (their pixels 0, valid; scaled to uint8 where they are resampled, by
        info.scale_lo / scale_hi): through the fast warp only."""
        if self.warp != "fast":
            return (*self.read_masked(info, window, grid), [])
        return with_retries(info.path, self.remote,
                            lambda: self._read_masked(info, window, grid, px),
                            reset=lambda: self.forget(info.path))

    def _read_masked(self, info: RasterInfo, window: Window, grid: Window | None,
                     defer_px: int = 0):
        """(rgb, valid), or with `defer_px` (rgb, valid, deferred tiles)."""
        if self.warp == "fast" and (got := self._read_fast(info, window, grid,
                                                           defer_px)) is not None:
            return got
        got = self._read_gdal(info, window, grid)
        return (*got, []) if defer_px else got

    def _read_gdal(self, info: RasterInfo, window: Window, grid: Window | None
                   ) -> tuple[np.ndarray, np.ndarray]:
        if grid is not None and (offset := window.offset_in(grid)) is not None:
            view = self._view(info, grid)
            col, row = offset
            return self._read(view.vrt, view.rule,
                              PixelWindow(col, row, window.width, window.height), info)
        vrt, _ = self._warp(info, window)
        with vrt:
            return self._read(vrt, _MaskRule.of(vrt), None, info)

    def _read_fast(self, info: RasterInfo, window: Window, grid: Window | None,
                   defer_px: int = 0):
        """The window through the fast warp (warp.py), or None where it cannot take it
        (complex values, a projection that fails, a huge source rectangle): GDAL's warp
        then. The overview level and longitude span are the grid's when there is one (as
        GDAL's warped view of it has), so every tile of a block comes from the same
        pixels however it is read."""
        where = grid if grid is not None and window.offset_in(grid) is not None else window
        level = self.overview_level(info, where)
        src = self._dataset(info.path, level)
        if np.dtype(src.dtypes[0]).kind not in "iuf":
            return None  # complex values
        got = warp_or_defer(src, list(self.tiling.bands), window, _shift(info, where),
                            self.tiling.resampling, defer_px, self.tiling.zero_is_nodata)
        if got is None:
            return None
        data, mask, deferred = got
        if not deferred:
            rgb, valid = self._scaled(data, mask, info)
            return (rgb, valid, []) if defer_px else (rgb, valid)
        # The tiles resampled here scaled and checked as usual; the deferred ones are valid
        # (warp_or_defer checked) and their pixels (0) are not looked at.
        todo = np.ones(data.shape[2] // defer_px, dtype=bool)
        todo[[d.tile for d in deferred]] = False
        identity = (data.dtype == np.uint8 and tuple(info.scale_lo) == (0.0, 0.0, 0.0)
                    and tuple(info.scale_hi) == (255.0, 255.0, 255.0))
        rgb = data if identity else np.zeros(data.shape, dtype=np.uint8)  # (no copy)
        for t0, t1 in tile_runs(todo):
            cols = slice(t0 * defer_px, t1 * defer_px)
            rgb[:, :, cols], mask[:, cols] = self._scaled(data[:, :, cols], mask[:, cols], info)
        return rgb, mask, deferred

    def _read(self, vrt: WarpedVRT, rule: _MaskRule, win: PixelWindow | None,
              info: RasterInfo) -> tuple[np.ndarray, np.ndarray]:
        bands = list(self.tiling.bands)
        if rule.kind == "gdal" or (win is None and len(bands) >= vrt.count):
            # Two calls, as the reader always did, in two cases. (1) The mask is not one we
            # reproduce (rule "gdal"). (2) A window read alone (no grid) asking for as many
            # bands as its view has (a 3-band raster with nodata; a 1-band raster as
            # (1, 1, 1)): GDAL warps such a whole-view read as one region
            # (VRTWarpedDataset::IRasterIO), not block by block, and when downsampling the
            # two differ by a few grey levels; dataset_mask, band by band, always went
            # block by block. One read cannot give both, so these keep the second call.
            data = vrt.read(bands, window=win)
            if rule.kind == "valid":
                mask = np.ones(data.shape[1:], dtype=bool)
            else:
                mask = vrt.dataset_mask(window=win)
        else:
            # One read, block by block (GDAL's whole-region path off): what a read of fewer
            # bands than the view has (the data bands without the alpha or extra bands)
            # always got, so the data are the old read's and the mask bands come from the
            # same warped blocks as dataset_mask's did. A pixel is also the same whatever
            # window asks for it: tiles cut from a strip equal the tiles read one by one.
            # (Through a grid the old reader took GDAL's whole-region path in one case:
            # every band selected and the tile the whole view (a one-tile block) or over
            # 512 x 128 px; those now come block by block too.)
            indexes = sorted(set(bands) | set(rule.bands))
            with rasterio.Env(GDAL_VRT_WARP_USE_DATASET_RASTERIO="NO"):
                raw = vrt.read(indexes, window=win)
            pos = {b: i for i, b in enumerate(indexes)}
            if indexes[:len(bands)] == bands:
                data = raw[:len(bands)]  # a view, no copy
            else:
                data = raw[[pos[b] for b in bands]]
            mask = rule.valid({b: raw[pos[b]] for b in rule.bands}, raw.shape[1:])
        return self._scaled(data, mask, info)

    def _scaled(self, data: np.ndarray, mask: np.ndarray, info: RasterInfo
                ) -> tuple[np.ndarray, np.ndarray]:
        """Warped values and GDAL's mask -> (rgb uint8 with invalid pixels 0, valid)."""
        valid = valid_mask(data, mask, self.tiling)
        rgb = to_uint8(data, info.scale_lo, info.scale_hi)
        if not valid.all():
            rgb = np.where(valid[None], rgb, np.uint8(0))
        return rgb, valid

    def overview_level(self, info: RasterInfo, window: Window) -> int:
        """The raster's internal overview a window is warped from: the coarsest whose pixels
        are no larger than the window's (gdalwarp -ovr AUTO), or FULL (-1) for the
        full-resolution pixels (windows less than 2x coarser, or no overviews)."""
        if not self.use_overviews:
            return FULL
        if info.path not in self._grids:
            src = self._dataset(info.path, FULL)
            factors = tuple(src.overviews(1)) if src.count else ()
            if len(self._grids) >= 4096:  # a small record per raster, bounded anyway
                self._grids.pop(next(iter(self._grids)))
            self._grids[info.path] = (factors, src.crs, src.transform)
        factors, crs, transform = self._grids[info.path]
        if not factors:
            return FULL
        ratio = _pixels_per_pixel(crs, transform, window)
        level = FULL
        for k, f in enumerate(factors):
            if f <= ratio * (1 + OVERVIEW_SLACK) and (level == FULL or f > factors[level]):
                level = k
        return level

    def _dataset(self, path: str, level: int = FULL) -> rasterio.DatasetReader:
        key = (path, level)
        if key in self._datasets:
            self._datasets.move_to_end(key)
            return self._datasets[key]
        while len(self._datasets) >= self.max_open:
            old, src = self._datasets.popitem(last=False)
            for k in [k for k, v in self._views.items() if v.dataset == old]:
                self._views.pop(k).vrt.close()
            src.close()
        if level == FULL:
            src = rasterio.open(gdal_path(path))
        else:
            src = rasterio.open(gdal_path(path), overview_level=level)
        self._datasets[key] = src
        return src

    def _warp(self, info: RasterInfo, window: Window) -> tuple[WarpedVRT, tuple[str, int]]:
        level = self.overview_level(info, window)
        src = self._dataset(info.path, level)
        shifted = {}
        shift = _shift(info, window)
        if shift:  # the source as if written in this span's longitudes
            shifted["src_transform"] = Affine.translation(shift, 0) @ src.transform
        vrt = WarpedVRT(src, crs="EPSG:3857", transform=window.transform, width=window.width,
                        height=window.height, resampling=Resampling[self.tiling.resampling],
                        add_alpha=info.add_alpha, **shifted)
        return vrt, (info.path, level)

    def _view(self, info: RasterInfo, grid: Window) -> _View:
        key = (info.path, grid)
        if key in self._views:
            self._views.move_to_end(key)
            return self._views[key]
        vrt, dataset = self._warp(info, grid)  # opens (and may evict) datasets first
        while len(self._views) >= self.max_open:
            self._views.popitem(last=False)[1].vrt.close()
        self._views[key] = view = _View(vrt, _MaskRule.of(vrt), dataset)
        return view

    def forget(self, path: str) -> None:
        """Close every view and dataset of one raster (opened again on the next read)."""
        for k in [k for k, v in self._views.items() if v.dataset[0] == path]:
            self._views.pop(k).vrt.close()
        for k in [k for k in self._datasets if k[0] == path]:
            self._datasets.pop(k).close()
        self._grids.pop(path, None)

    def close(self) -> None:
        for view in self._views.values():
            view.vrt.close()
        for src in self._datasets.values():
            src.close()
        self._views.clear()
        self._datasets.clear()
        self._grids.clear()
