"""Inspecting a raster before indexing: CRS, footprint, ground pixel size, time, sensor,
scaling statistics, and the checks that turn bad input into one-line errors."""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds

from indexer.config import DiscoverySettings, TilingSettings
from indexer.discover import RasterSource, parse_tiff_datetime
from indexer.errors import InputError

EARTH_RADIUS_M = 6378137.0
WORLD_M = 2 * math.pi * EARTH_RADIUS_M  # web-mercator world width in projected metres
METRES_PER_DEGREE = WORLD_M / 360
MAX_LAT = 85.05112878  # web-mercator's latitude limit
WEB_MERCATOR_EPSG = (3857, 900913)
# Decimated read used for validity checks and percentile statistics (never the full scene).
OVERVIEW_PX = 512


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
    m = re.search(settings.filename_time_pattern, Path(source.path).name)
    if m:
        try:
            return datetime.strptime(m.group(1), settings.filename_time_format).replace(tzinfo=UTC)
        except (ValueError, IndexError):
            return None
    return None


def _sensor(source: RasterSource, tags: dict, settings: DiscoverySettings) -> str:
    if source.sensor:
        return source.sensor
    name = Path(source.path).name
    for pattern, sensor in settings.sensor_patterns.items():
        if fnmatch.fnmatch(name, pattern):
            return sensor
    for key in ("SENSOR", "SATELLITE", "PLATFORM", "SPACECRAFT_ID"):
        if tags.get(key):
            return str(tags[key])
    return "unknown"


def finite_mask(data: np.ndarray) -> np.ndarray:
    """[B, H, W] -> [H, W]: pixels whose every band is a finite number. NaN and +-inf are
    nodata whether or not the raster declares a nodata value (always true for integers)."""
    if data.dtype.kind not in "fc":
        return np.ones(data.shape[1:], dtype=bool)
    return np.isfinite(data).all(axis=0)


def valid_mask(data: np.ndarray, mask: np.ndarray, tiling: TilingSettings) -> np.ndarray:
    """Pixels of `data` [3, H, W] that are valid: inside the raster and not nodata (GDAL's
    mask), finite, and not 0 in every band when tiling.zero_is_nodata."""
    valid = (mask > 0) & finite_mask(data)
    if tiling.zero_is_nodata:
        valid &= np.any(data != 0, axis=0)
    return valid


def inspect_raster(source: RasterSource, discovery: DiscoverySettings,
                   tiling: TilingSettings) -> RasterInfo:
    """Open and check one raster; raises InputError with a one-line reason."""
    path = source.path
    try:
        src = rasterio.open(path)
    except RasterioError:
        raise InputError(path, "not a raster GDAL can read (or a corrupt GeoTIFF)") from None
    with src:
        if src.crs is None:
            raise InputError(path, "raster has no CRS (georeference it, e.g. gdal_edit.py -a_srs)")
        if src.width == 0 or src.height == 0:
            raise InputError(path, "raster has no pixels")
        bad = [b for b in tiling.bands if b > src.count]
        if bad:
            raise InputError(path, f"band {bad[0]} requested by tiling.bands but the raster "
                             f"has {src.count} band(s)")
        try:
            spans, s, n = _footprint(src)
        except Exception as exc:  # PROJ errors come in several types
            raise InputError(path, f"cannot transform bounds to lon/lat: {exc}") from None
        n, s = min(n, MAX_LAT), max(s, -MAX_LAT)
        if not spans or not s < n:
            raise InputError(path, "raster footprint is outside the web-mercator world "
                             "(latitudes beyond +-85.05 or an empty extent)")
        w, e = spans[0][0], spans[-1][1]
        lat = (s + n) / 2
        # Decimated read: checks that pixels decode and gives the statistics for scaling.
        scale = min(1.0, OVERVIEW_PX / max(src.width, src.height))
        shape = (max(1, round(src.height * scale)), max(1, round(src.width * scale)))
        try:
            data = src.read(list(tiling.bands), out_shape=(3, *shape))
            mask = src.dataset_mask(out_shape=shape)
        except RasterioError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else "read error"
            raise InputError(path,
                             f"cannot read pixels (truncated or corrupt file?): {msg}") from None
        valid = valid_mask(data, mask, tiling)
        if not valid.any():
            inside = mask > 0
            if inside.any() and not finite_mask(data)[inside].any():
                raise InputError(path, "raster has no finite pixel value (all NaN or inf)")
            raise InputError(path, "raster is entirely nodata (no valid pixel)")
        dtype = src.dtypes[0]
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
            scale_lo=lo, scale_hi=hi, spans=spans,
        )


def scaling_range(dtype: str, data: np.ndarray, valid: np.ndarray, tiling: TilingSettings
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per band (value mapped to 0, value mapped to 255) by tiling.scaling; percentiles are
    taken over the `valid` pixels of `data` [3, H, W]."""
    mode = tiling.scaling
    if mode == "auto":
        mode = "uint8" if dtype == "uint8" else "percentile"
    if mode == "uint8":
        return (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)
    if mode == "divisor":
        d = tiling.reflectance_divisor
        return (0.0, 0.0, 0.0), (d, d, d)
    lo, hi = [], []
    for band in data:
        vals = band[valid].astype(np.float64)
        p_lo, p_hi = np.percentile(vals, tiling.percentiles)
        if p_hi <= p_lo:
            p_hi = p_lo + 1.0
        lo.append(float(p_lo))
        hi.append(float(p_hi))
    return tuple(lo), tuple(hi)


def to_uint8(data: np.ndarray, lo: tuple[float, ...], hi: tuple[float, ...]) -> np.ndarray:
    """[3, H, W] any dtype -> uint8 by the per-band linear map lo->0, hi->255 (clipped);
    non-finite values become 0 (callers mark them invalid)."""
    if data.dtype == np.uint8 and lo == (0.0, 0.0, 0.0) and hi == (255.0, 255.0, 255.0):
        return data
    if data.dtype.kind in "fc":
        data = np.nan_to_num(data.real if data.dtype.kind == "c" else data, nan=0.0,
                             posinf=0.0, neginf=0.0)
    lo_a = np.asarray(lo, dtype=np.float32)[:, None, None]
    hi_a = np.asarray(hi, dtype=np.float32)[:, None, None]
    out = (data.astype(np.float32) - lo_a) * (255.0 / (hi_a - lo_a))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
