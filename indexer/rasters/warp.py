"""The fast warp (`tiling.warp = "fast"`): a window of EPSG:3857 pixels resampled from a
raster in any CRS without GDAL's warper, whose general kernel costs ~2 ms per 224 px tile
per core (it is what limited the indexing job).

How: the window is cut into square pieces of a lattice anchored on the global web-mercator
pixel grid, with the window's height as side (a strip of tiles: one piece per tile). On
each piece the projection is replaced by an affine map fitted to it at 9 points (corners,
edge middles, centre; a piece whose fit is off by more than MAX_ERROR_PX = 0.02 px at any
of them is cut in four; GDAL's approximate transformer allows 0.125 px). Each piece is then
resampled by OpenCV's `warpAffine` (bilinear or nearest, fixed-point, SIMD) from a view of
one source read. A piece depends only on its own lattice cell, never on the window it is
read in, so a tile cut from a strip is exactly the tile read alone.

What differs from GDAL's bilinear (measured in tests/test_fast_warp.py and BENCHMARKS.md):
- Upsampling: the same kernel; coordinates are rounded to 1/32 px (OpenCV's fixed point),
  so values differ by about 0.1 grey level on average; more (0.5 on the 300 m Landsat
  scene) where GDAL's own approximate transformer is off the exact projection by more
  than this warp's fits are.
- Downsampling (tile pixels over 1.05x the raster's; from 2x the internal overviews take
  over, when the raster has them): GDAL widens its bilinear kernel to the tile pixel (a
  tent `ratio` source pixels wide). Here the source is first blurred by a Gaussian of the
  variance the wider kernel adds (sigma^2 = (ratio^2 - 1) / 6), then sampled bilinearly:
  alias-free like GDAL's, and 0.5-1.5 grey levels from it on average on the shared
  rasters; 3-5 where a raster without overviews is shrunk 2-3.5x (the Gaussian keeps less
  of the finest detail than GDAL's tent does).
- Validity: a pixel is valid where at least half of its bilinear weight falls on valid
  source pixels (inside the raster and valid in GDAL's mask of the source); its value is
  the mean of the valid ones only (as GDAL renormalises), so nodata never bleeds in.

`warp_or_defer` can leave the plain tiles of a strip unresampled (a whole tile that is one
piece, of a uint8 or uint16 raster, bilinear, not downsampled, every sample valid): their
source crops and maps go to the encoder's GPU, which resamples them at the same positions
(indexer/job/device_warp.py, job.warp_on).

`warp_window` returns None where the projection fails at a fitted point (e.g. a UTM raster
far outside its zone), or where the window's source rectangle is over MAX_SOURCE_PIXELS:
the reader then warps that window with GDAL.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.io import DatasetReader
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window as PixelWindow

from indexer.rasters.grid import ORIGIN, Window

# Largest error of a piece's affine map at its fitted points, in source pixels: a sixth of
# GDAL's default for its approximate transformer (0.125), so the fast warp is nearer the
# exact projection than GDAL's default warp is (tests/test_fast_warp.py).
MAX_ERROR_PX = 0.02
MAX_PIECE = 512  # a window taller than this is cut in pieces of PIECE px
PIECE = 256
MIN_PIECE = 16  # pieces are not cut further (the fit is kept, however far off)
DOWNSAMPLE_FROM = 1 / 0.95  # GDAL widens its kernel past this ratio (dfXScale < 0.95)
# Types warpAffine resamples natively; others are resampled as float64 and cast back.
NATIVE = {np.dtype(t) for t in ("uint8", "uint16", "int16", "float32", "float64")}
# A window whose source rectangle is larger (a strip far coarser than a raster without
# overviews: tiling.max_downsample raised) is left to GDAL, which warps it in chunks.
MAX_SOURCE_PIXELS = 32 * 1024 * 1024
FLAGS = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}  # FAST_RESAMPLINGS
# Types whose plain tiles warp_or_defer can leave to the encoder's device (scaled there).
DEFERRABLE = {np.dtype("uint8"), np.dtype("uint16")}
# The 9 fitting points of a piece, in units of its side (pixel centres of its corners).
_UNIT = np.array([0.0, 0.5, 1.0])

cv2.setNumThreads(1)  # one thread per reading process: the job runs one process per core


@dataclass(frozen=True)
class _Piece:
    col: int  # where the piece's clipped part lands in the window
    row: int
    width: int
    height: int
    matrix: np.ndarray  # [2, 3] float64: window-piece pixel (col, row) -> source pixel
    # The Gaussian standing in for GDAL's widened kernel (0: none); the source rectangle
    # the piece reads (columns c0..c1, rows r0..r1, within the raster); whether every
    # sample and its far bilinear neighbour fall inside the raster.
    sigma: float
    source: tuple[int, int, int, int]  # c0, r0, c1, r1
    inside: bool


def _piece(col: int, row: int, width: int, height: int, m: np.ndarray, resampling: str,
           size: tuple[int, int]) -> _Piece:
    """A piece with what follows from its map alone (so never from the window): its blur
    and its source rectangle in a raster of `size` (width, height) pixels."""
    corners = m @ np.array([[0, width - 1, 0, width - 1], [0, 0, height - 1, height - 1],
                            [1, 1, 1, 1]])
    lo_c, hi_c = corners[0].min(), corners[0].max()
    lo_r, hi_r = corners[1].min(), corners[1].max()
    ratio = math.sqrt(abs(np.linalg.det(m[:, :2])))
    sigma = 0.0
    if resampling == "bilinear" and ratio > DOWNSAMPLE_FROM:
        sigma = blur_sigma(ratio)
    # Bilinear's far neighbour, and the reach of OpenCV's float Gaussian kernel (4 sigma).
    pad = 1 + (math.ceil(4 * sigma) if sigma else 0)
    source = (max(math.floor(lo_c) - pad, 0), max(math.floor(lo_r) - pad, 0),
              min(math.ceil(hi_c) + 1 + pad, size[0]), min(math.ceil(hi_r) + 1 + pad, size[1]))
    inside = lo_c >= 0 and lo_r >= 0 and hi_c + 1 <= size[0] - 1 and hi_r + 1 <= size[1] - 1
    return _Piece(col, row, width, height, m, sigma, source, bool(inside))


def blur_sigma(ratio: float) -> float:
    """The Gaussian standing in for GDAL's bilinear kernel widened to `ratio` source pixels
    (the variance the wider tent adds)."""
    return math.sqrt((ratio * ratio - 1) / 6)


def _source_transform(src: DatasetReader, shift: float) -> Affine:
    if shift:  # the source as if written in this span's longitudes
        return Affine.translation(shift, 0) @ src.transform
    return src.transform


def _fit(window: Window, to_pixel: Affine, crs, cells: list[tuple[int, int, int, int]]
         ) -> list[tuple[int, int, int, int, np.ndarray]] | None:
    """Affine maps of lattice cells (global column, global row, width, height): [2, 3] each,
    from cell-local pixel (col, row) to the source pixel whose centre is (0, 0); a cell whose
    fit is off by more than MAX_ERROR_PX at a fitted point is cut in four and fitted again.
    None where a point does not project."""
    out: list[tuple[int, int, int, int, np.ndarray]] = []
    todo, res = cells, window.res
    # A window off the global pixel grid (a query image's) is fitted where its pixels are.
    fc = (window.left + ORIGIN) / res
    fr = (ORIGIN - window.top) / res
    fc = 0.0 if abs(fc - round(fc)) < 1e-6 else fc - round(fc)
    fr = 0.0 if abs(fr - round(fr)) < 1e-6 else fr - round(fr)
    while todo:
        n = len(todo)
        c = np.array(todo, dtype=np.float64)  # [n, 4]
        lc = _UNIT[None, None, :] * (c[:, 2, None, None] - 1)  # [n, 1, 3] local columns
        lr = _UNIT[None, :, None] * (c[:, 3, None, None] - 1)  # [n, 3, 1] local rows
        lc, lr = np.broadcast_arrays(lc, lr)  # [n, 3, 3]
        xs = -ORIGIN + (c[:, 0, None, None] + lc + 0.5 + fc) * res
        ys = ORIGIN - (c[:, 1, None, None] + lr + 0.5 + fr) * res
        try:
            px, py = warp_transform("EPSG:3857", crs, xs.ravel().tolist(), ys.ravel().tolist())
        except Exception:  # PROJ errors come in several types
            return None
        px, py = np.asarray(px, dtype=np.float64), np.asarray(py, dtype=np.float64)
        if not (np.isfinite(px).all() and np.isfinite(py).all()):
            return None
        col = (to_pixel.a * px + to_pixel.b * py + to_pixel.c - 0.5).reshape(n, 9)
        row = (to_pixel.d * px + to_pixel.e * py + to_pixel.f - 0.5).reshape(n, 9)
        a = np.stack([lc.reshape(n, 9), lr.reshape(n, 9), np.ones((n, 9))], axis=2)
        if (c[:, 2:] == c[0, 2:]).all():  # one size of cell (the usual): one pseudo-inverse
            pinv = np.broadcast_to(np.linalg.pinv(a[0]), (n, 3, 9))
        else:
            pinv = np.linalg.pinv(a)  # [n, 3, 9]
        mc = np.einsum("nkp,np->nk", pinv, col)
        mr = np.einsum("nkp,np->nk", pinv, row)
        err = np.maximum(np.abs(np.einsum("npk,nk->np", a, mc) - col).max(axis=1),
                         np.abs(np.einsum("npk,nk->np", a, mr) - row).max(axis=1))
        nxt = []
        for i, (gc, gr, w, h) in enumerate(todo):
            if err[i] > MAX_ERROR_PX and min(w, h) >= 2 * MIN_PIECE:
                hw, hh = w // 2, h // 2
                nxt += [(gc, gr, hw, hh), (gc + hw, gr, w - hw, hh),
                        (gc, gr + hh, hw, h - hh), (gc + hw, gr + hh, w - hw, h - hh)]
            else:
                out.append((gc, gr, w, h, np.stack([mc[i], mr[i]])))
        todo = nxt
    return out


def _pieces(window: Window, src: DatasetReader, shift: float, resampling: str
            ) -> list[_Piece] | None:
    side = window.height if window.height <= MAX_PIECE else PIECE
    g0c = round((window.left + ORIGIN) / window.res)
    g0r = round((ORIGIN - window.top) / window.res)
    cells = []
    for gr in range(g0r - (g0r % side), g0r + window.height, side):
        for gc in range(g0c - (g0c % side), g0c + window.width, side):
            cells.append((gc, gr, side, side))
    fits = _fit(window, ~_source_transform(src, shift), src.crs, cells)
    if fits is None:
        return None
    out = []
    for gc, gr, w, h, m in fits:
        c0, r0 = max(gc, g0c), max(gr, g0r)
        c1, r1 = min(gc + w, g0c + window.width), min(gr + h, g0r + window.height)
        if c1 <= c0 or r1 <= r0:
            continue
        if (c0, r0) != (gc, gr):  # clipped by the window: the map starts further in
            m = m.copy()
            m[:, 2] += m[:, 0] * (c0 - gc) + m[:, 1] * (r0 - gr)
        out.append(_piece(c0 - g0c, r0 - g0r, c1 - c0, r1 - r0, m, resampling,
                          (src.width, src.height)))
    return out


def has_mask(src: DatasetReader) -> bool:
    """Whether GDAL's mask of the raster may mark pixels invalid (nodata, alpha, internal
    mask): otherwise only the raster's edges do."""
    return any(set(f) != {MaskFlags.all_valid} for f in src.mask_flag_enums)


@dataclass(frozen=True)
class Deferred:
    """A tile of a window left to be resampled elsewhere (the encoder's device: warp_tiles
    in indexer/job/device_warp.py): its source pixels and its affine map."""

    tile: int  # the tile's index in the window: its columns tile * px .. (tile + 1) * px
    crop: np.ndarray  # [bands, h, w] in the raster's type: a view of the window's source read
    matrix: np.ndarray  # [2, 3] float64: tile pixel (col, row) -> crop pixel (centres at 0)


def warp_window(src: DatasetReader, bands: list[int], window: Window, shift: float,
                resampling: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(data [len(bands), H, W] in the raster's type, valid bool [H, W]) of an EPSG:3857
    window, or None where the projection fails (read it with GDAL then)."""
    got = warp_or_defer(src, bands, window, shift, resampling)
    return None if got is None else got[:2]


def warp_or_defer(src: DatasetReader, bands: list[int], window: Window, shift: float,
                  resampling: str, defer_px: int = 0, zero_is_nodata: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, list[Deferred]] | None:
    """warp_window, and with `defer_px` (the tile side of a window one tile high) the tiles
    that are one plain piece each are not resampled here but handed back as Deferred: their
    pixels in `data` stay 0 and valid True. A plain piece: a whole tile, of a uint8 or uint16
    raster, bilinear, not downsampled (no blur), every sample inside the raster and valid in
    its mask, and (`zero_is_nodata`) no source pixel whose bands are all below 2, so no
    resampled pixel can be 0 in every band (its bands sum to at least 2 - 3 x 0.5 before
    rounding) and every pixel of the tile is valid, as the warp here would find."""
    pieces = _pieces(window, src, shift, resampling)
    if pieces is None:
        return None
    dtype = np.dtype(src.dtypes[bands[0] - 1])
    out = np.zeros((len(bands), window.height, window.width), dtype=dtype)
    valid = np.zeros((window.height, window.width), dtype=bool)
    # One read: the union of the source rectangles of the pieces that reach the raster.
    rects = np.array([p.source for p in pieces if p.source[0] < p.source[2]
                      and p.source[1] < p.source[3]]).reshape(-1, 4)
    if not len(rects):
        return out, valid, []  # wholly outside the raster
    c0, r0 = rects[:, :2].min(axis=0).tolist()
    c1, r1 = rects[:, 2:].max(axis=0).tolist()
    if (c1 - c0) * (r1 - r0) > MAX_SOURCE_PIXELS:
        return None  # a window far coarser than a raster without overviews: GDAL, chunked
    unique = sorted(set(bands))
    win = PixelWindow(c0, r0, c1 - c0, r1 - r0)
    raw = src.read(unique, window=win)
    data = raw if unique == bands else raw[[unique.index(b) for b in bands]]
    mask = src.dataset_mask(window=win) if has_mask(src) else None
    flag = FLAGS[resampling]
    deferred: list[Deferred] = []
    plain = (defer_px and window.height == defer_px and dtype in DEFERRABLE
             and resampling == "bilinear")
    for p in pieces:
        if plain and (d := _deferred(p, data, mask, (c0, r0), defer_px, zero_is_nodata)):
            deferred.append(d)
            valid[:, p.col:p.col + p.width] = True
            continue
        _warp_piece(p, data, mask, (c0, r0), flag, out, valid)
    return out, valid, deferred


def _deferred(p: _Piece, data: np.ndarray, mask: np.ndarray | None, origin: tuple[int, int],
              px: int, zero_is_nodata: bool) -> Deferred | None:
    """The piece as a Deferred tile when it is a plain one (warp_or_defer), else None."""
    if not (p.inside and not p.sigma and p.width == px and p.height == px
            and p.col % px == 0 and p.row == 0):
        return None
    sc0, sr0, sc1, sr1 = p.source
    view = (slice(sr0 - origin[1], sr1 - origin[1]), slice(sc0 - origin[0], sc1 - origin[0]))
    if mask is not None and cv2.minMaxLoc(mask[view])[0] == 0:
        return None
    crop = data[(slice(None), *view)]
    # Some band at least 2 everywhere (most often the first looked at), else every pixel's.
    if zero_is_nodata and all(cv2.minMaxLoc(band)[0] < 2 for band in crop) and \
            functools.reduce(np.maximum, crop).min() < 2:
        return None
    m = p.matrix.copy()
    m[0, 2] -= sc0
    m[1, 2] -= sr0
    return Deferred(p.col // px, crop, m)


def _warp_piece(p: _Piece, data: np.ndarray, mask: np.ndarray | None,
                origin: tuple[int, int], flag: int, out: np.ndarray, valid: np.ndarray
                ) -> None:
    """Resample one piece into `out` / `valid` from the source read at `origin`. The piece
    sees only its own source rectangle (from its own map and the raster's size), so its
    pixels do not depend on the window it was read in."""
    sc0, sr0, sc1, sr1 = p.source
    sigma = p.sigma
    rows = slice(p.row, p.row + p.height)
    cols = slice(p.col, p.col + p.width)
    if sc1 <= sc0 or sr1 <= sr0:
        return  # the piece is outside the raster: zeros, invalid
    view = (slice(sr0 - origin[1], sr1 - origin[1]), slice(sc0 - origin[0], sc1 - origin[0]))
    m = p.matrix.copy()
    m[0, 2] -= sc0
    m[1, 2] -= sr0
    dsize = (p.width, p.height)
    flags = flag | cv2.WARP_INVERSE_MAP
    if p.inside and (mask is None or mask[view].min() > 0):
        for b in range(data.shape[0]):  # every sample valid: resample the values as they are
            band = data[b][view]
            native = band.dtype in NATIVE
            src = band if native else band.astype(np.float64)
            if sigma:
                src = cv2.GaussianBlur(src, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
            if not native:
                res = cv2.warpAffine(src, m, dsize, flags=flags,
                                     borderMode=cv2.BORDER_REPLICATE)
                out[b, rows, cols] = _cast(res, band.dtype)
                continue
            # Straight into the window (OpenCV writes into a strided view of its type).
            dst = out[b, rows, cols]
            res = cv2.warpAffine(src, m, dsize, dst=dst, flags=flags,
                                 borderMode=cv2.BORDER_REPLICATE)
            if res is not dst:  # OpenCV made an array of its own (another type)
                dst[...] = res
        valid[rows, cols] = True
        return
    # Some samples invalid or outside: resample value x weight and weight, renormalise.
    w = (np.ones((sr1 - sr0, sc1 - sc0), np.float32) if mask is None
         else (mask[view] > 0).astype(np.float32))
    if sigma:
        w = cv2.GaussianBlur(w, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    # Outside the raster the weight is 0 (BORDER_CONSTANT), i.e. no pixel.
    ww = cv2.warpAffine(w, m, dsize, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=0)
    ok = ww >= 0.5
    valid[rows, cols] = ok
    if not ok.any():
        return
    keep = mask[view] > 0 if mask is not None else None
    exact32 = data.dtype.itemsize < 4 or data.dtype == np.float32  # float32 holds it
    for b in range(data.shape[0]):
        band = data[b][view].astype(np.float32 if exact32 else np.float64)
        if keep is not None:
            band = np.where(keep, band, 0)
        if sigma:
            band = cv2.GaussianBlur(band, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        num = cv2.warpAffine(band, m, dsize, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0)
        val = np.where(ok, num / np.where(ok, ww, 1), 0)
        out[b, rows, cols] = _cast(val, data.dtype)


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Resampled values in the raster's type: integers rounded and clipped to the type."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)

