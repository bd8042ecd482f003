"""Inspecting a raster before indexing: CRS, footprint, ground pixel size, time, sensor,
scaling statistics, and the checks that turn bad input into one-line errors."""

from __future__ import annotations

import fnmatch
import math
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from indexer.config import DiscoverySettings, RemoteSettings, TilingSettings
from indexer.errors import InputError
from indexer.rasters.grid import MAX_LAT, METRES_PER_DEGREE, WEB_MERCATOR_EPSG, lon_spans
from indexer.rasters.remote import describe, file_name, gdal_path, is_remote, public, with_retries
from indexer.rasters.scaling import finite_mask, scaling_mode, scaling_range, valid_mask
from indexer.rasters.sources import RasterSource, parse_tiff_datetime

# Decimated read used for validity checks and percentile statistics (never the full scene).
OVERVIEW_PX = 512
# A raster stored in many blocks and without overviews (or only fine ones): the decimated
# read would decompress every block (a 476 MB DEFLATE GeoTIFF: 3.3 s before its first
# tile; over HTTP, the whole file once more than the readers fetch). Where the scaling needs
# no statistics (uint8, divisor), the checks read SAMPLE_GRID x SAMPLE_GRID of its blocks,
# spread over it (its corners among them), each at most SAMPLE_PX on a side. Percentile
# statistics keep the decimated read: the tiles of a raster resumed by a later run must be
# scaled as before.
SAMPLE_GRID = 4
SAMPLE_PX = 128


@dataclass(frozen=True)
class RasterInfo:
    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: str
    # west, south, east, north in degrees; west > east when the raster crosses the
    # antimeridian (as GeoJSON and STAC write it).
    lonlat_bounds: tuple[float, float, float, float]
    native_gsd_m: float
    acquired: datetime | None
    sensor: str
    add_alpha: bool  # no nodata value: the warp adds an alpha band to mark outside pixels
    scale_lo: tuple[float, float, float]  # per selected band: value mapped to 0
    scale_hi: tuple[float, float, float]  # ... and to 255
    # The footprint's longitude intervals inside -180..180 (two when it crosses the
    # antimeridian), each with the x shift (source CRS units) that brings the source's own
    # coordinates into it: a lon/lat raster written as 180.5..181.5 is read at -179.5..-178.5.
    spans: tuple[tuple[float, float, float], ...] = ()
    overviews: tuple[int, ...] = ()  # internal overview factors (band 1)
    # Stored in internal blocks narrower than the raster (a COG, a tiled GeoTIFF), not in
    # strips of whole rows: the job reads its tiles in column bands (grid.column_bands).
    tiled: bool = False

    @property
    def centre_lat(self) -> float:
        return (self.lonlat_bounds[1] + self.lonlat_bounds[3]) / 2


def _native_gsd_m(src, lat: float) -> float:
    """Ground size of one source pixel in metres (geometric mean of x and y)."""
    rx, ry = abs(src.res[0]), abs(src.res[1])
    crs = src.crs
    if crs.is_geographic:
        gx, gy = rx * METRES_PER_DEGREE * math.cos(math.radians(lat)), ry * METRES_PER_DEGREE
    else:
        unit = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        gx, gy = rx * unit, ry * unit
        if crs.to_epsg() in WEB_MERCATOR_EPSG:  # web-mercator metres shrink with latitude
            c = math.cos(math.radians(lat))
            gx, gy = gx * c, gy * c
    return math.sqrt(gx * gy)


def _footprint(src) -> tuple[tuple[tuple[float, float, float], ...], float, float]:
    """(longitude spans, south, north) of an open raster."""
    w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    if src.crs.is_geographic:
        # Source x is longitude as written (maybe past 180): keep it, to know the shift.
        w, e, per_degree = src.bounds.left, src.bounds.right, 1.0
    elif src.crs.to_epsg() in WEB_MERCATOR_EPSG:
        per_degree = METRES_PER_DEGREE
        w, e = src.bounds.left / per_degree, src.bounds.right / per_degree
    else:
        per_degree = 0.0  # PROJ wraps these itself; it marks a crossing with west > east
        if w > e:
            e += 360
    if not all(math.isfinite(v) for v in (w, s, e, n)) or w >= e:
        return (), s, n
    return lon_spans(w, e, per_degree), s, n


def _acquired(source: RasterSource, tags: dict, settings: DiscoverySettings) -> datetime | None:
    if source.acquired is not None:
        return source.acquired
    if "TIFFTAG_DATETIME" in tags:
        when = parse_tiff_datetime(tags["TIFFTAG_DATETIME"])
        if when is not None:
            return when
    m = re.search(settings.filename_time_pattern, file_name(source.path))
    if m:
        try:
            return datetime.strptime(m.group(1), settings.filename_time_format).replace(tzinfo=UTC)
        except (ValueError, IndexError):
            return None
    return None


def _sensor(source: RasterSource, tags: dict, settings: DiscoverySettings) -> str:
    if source.sensor:
        return source.sensor
    name = file_name(source.path)
    for pattern, sensor in settings.sensor_patterns.items():
        if fnmatch.fnmatch(name, pattern):
            return sensor
    for key in ("SENSOR", "SATELLITE", "PLATFORM", "SPACECRAFT_ID"):
        if tags.get(key):
            return str(tags[key])
    return "unknown"


def _in_blocks(src) -> bool:
    """Stored in internal blocks narrower than the raster (a COG, a tiled GeoTIFF), not in
    strips of whole rows."""
    return src.block_shapes[0][1] < src.width


def sampled_blocks(src) -> list[Window] | None:
    """The windows of the blocks the checks read (SAMPLE_GRID), or None where the decimated
    read costs little: a raster in strips of whole rows (it skips rows), or whose level the
    decimated read comes from (the raster, or the coarsest overview at least as fine as the
    read: a COG's pyramid has one of a few blocks) has few blocks."""
    if not _in_blocks(src):
        return None
    bh, bw = src.block_shapes[0]
    fine = max(src.width, src.height) / OVERVIEW_PX
    f = max([1, *(o for o in src.overviews(1) if o <= fine)])
    if -(-src.width // (f * bw)) * -(-src.height // (f * bh)) <= 2 * SAMPLE_GRID ** 2:
        return None
    nx, ny = -(-src.width // bw), -(-src.height // bh)
    cols = np.unique(np.linspace(0, nx - 1, SAMPLE_GRID).round().astype(int)).tolist()
    rows = np.unique(np.linspace(0, ny - 1, SAMPLE_GRID).round().astype(int)).tolist()
    return [Window(c * bw, r * bh, min(bw, src.width - c * bw), min(bh, src.height - r * bh))
            for r in rows for c in cols]


def _decimated(src, tiling: TilingSettings) -> tuple[np.ndarray, np.ndarray]:
    """The whole raster at most OVERVIEW_PX on a side: (data [3, h, w], mask [h, w])."""
    scale = min(1.0, OVERVIEW_PX / max(src.width, src.height))
    shape = (max(1, round(src.height * scale)), max(1, round(src.width * scale)))
    return (src.read(list(tiling.bands), out_shape=(3, *shape)),
            src.dataset_mask(out_shape=shape))


def _sample(src, tiling: TilingSettings, blocks: list[Window]
            ) -> tuple[np.ndarray, np.ndarray]:
    """The blocks, each at most SAMPLE_PX on a side, side by side: (data [3, 1, n],
    mask [1, n])."""
    data, mask = [], []
    for w in blocks:
        k = max(1, -(-max(w.width, w.height) // SAMPLE_PX))
        shape = (max(1, round(w.height / k)), max(1, round(w.width / k)))
        data.append(src.read(list(tiling.bands), window=w, out_shape=(3, *shape))
                    .reshape(3, 1, -1))
        mask.append(src.dataset_mask(window=w, out_shape=shape).reshape(1, -1))
    return np.concatenate(data, axis=2), np.concatenate(mask, axis=1)


class _PixelsUnreadable(RasterioError):
    """The raster opened but its pixels did not decode."""


def inspect_raster(source: RasterSource, discovery: DiscoverySettings,
                   tiling: TilingSettings, remote: RemoteSettings | None = None,
                   stop: threading.Event | None = None) -> RasterInfo:
    """Open and check one raster (local, or remote with satfind's GDAL settings and
    retries, none once `stop` is set); raises InputError with a one-line reason."""
    path, name = source.path, public(source.path)
    try:
        return with_retries(path, remote or RemoteSettings(),
                            lambda: _inspect(source, discovery, tiling), stop=stop)
    except _PixelsUnreadable as exc:
        msg = describe(exc) if is_remote(path) else (
            str(exc).splitlines()[0] if str(exc) else "read error")
        raise InputError(name, f"cannot read pixels (truncated or corrupt file?): {msg}") from None
    except RasterioError as exc:
        if is_remote(path):
            raise InputError(name, describe(exc)) from None
        raise InputError(path, "not a raster GDAL can read (or a corrupt GeoTIFF)") from None


def _inspect(source: RasterSource, discovery: DiscoverySettings, tiling: TilingSettings
             ) -> RasterInfo:
    path, name = source.path, public(source.path)
    src = rasterio.open(gdal_path(path))
    with src:
        if src.crs is None:
            raise InputError(name, "raster has no CRS (georeference it, e.g. gdal_edit.py -a_srs)")
        if src.width == 0 or src.height == 0:
            raise InputError(name, "raster has no pixels")
        bad = [b for b in tiling.bands if b > src.count]
        if bad:
            raise InputError(name, f"band {bad[0]} requested by tiling.bands but the raster "
                             f"has {src.count} band(s)")
        try:
            spans, s, n = _footprint(src)
        except Exception as exc:  # PROJ errors come in several types
            raise InputError(name, f"cannot transform bounds to lon/lat: {exc}") from None
        n, s = min(n, MAX_LAT), max(s, -MAX_LAT)
        if not spans or not s < n:
            raise InputError(name, "raster footprint is outside the web-mercator world "
                             "(latitudes beyond +-85.05 or an empty extent)")
        w, e = spans[0][0], spans[-1][1]
        lat = (s + n) / 2
        # Checks that pixels decode, and the statistics for scaling where it needs them.
        dtype = src.dtypes[0]
        blocks = (None if scaling_mode(dtype, tiling) == "percentile"
                  else sampled_blocks(src))
        try:
            data, mask = _sample(src, tiling, blocks) if blocks else _decimated(src, tiling)
            valid = valid_mask(data, mask, tiling)
            if blocks and not valid.any():  # the sample missed what is valid: all of it
                data, mask = _decimated(src, tiling)
                valid = valid_mask(data, mask, tiling)
        except RasterioError as exc:
            raise _PixelsUnreadable(str(exc)) from None
        if not valid.any():
            inside = mask > 0
            if inside.any() and not finite_mask(data)[inside].any():
                raise InputError(name, "raster has no finite pixel value (all NaN or inf)")
            raise InputError(name, "raster is entirely nodata (no valid pixel)")
        lo, hi = scaling_range(dtype, data, valid, tiling)
        tags = src.tags()
        has_alpha = any(ci.name == "alpha" for ci in src.colorinterp)
        return RasterInfo(
            path=path, width=src.width, height=src.height, count=src.count, dtype=dtype,
            crs=src.crs.to_string(), lonlat_bounds=(w, s, e, n),
            native_gsd_m=_native_gsd_m(src, lat),
            acquired=_acquired(source, tags, discovery),
            sensor=_sensor(source, tags, discovery),
            add_alpha=src.nodata is None and not has_alpha,
            scale_lo=lo, scale_hi=hi, spans=spans, overviews=tuple(src.overviews(1)),
            tiled=_in_blocks(src),
        )
