"""Scaling any pixel type to uint8 and the valid-pixel rule (GDAL mask, finite values, all-zero
pixels), shared by tiles, GRAFT patches and query images."""

from __future__ import annotations

import functools

import numpy as np

from indexer.config import TilingSettings


def finite_mask(data: np.ndarray) -> np.ndarray:
    """[B, H, W] -> [H, W]: pixels whose every band is a finite number. NaN and +-inf are
    nodata whether or not the raster declares a nodata value (always true for integers)."""
    if data.dtype.kind not in "fc":
        return np.ones(data.shape[1:], dtype=bool)
    return np.isfinite(data).all(axis=0)


def valid_mask(data: np.ndarray, mask: np.ndarray, tiling: TilingSettings) -> np.ndarray:
    """Pixels of `data` [3, H, W] that are valid: inside the raster and not nodata (GDAL's
    mask), finite, and not 0 in every band when tiling.zero_is_nodata."""
    valid = mask > 0  # a new array (the caller's mask is left as it is)
    if data.dtype.kind in "fc":
        valid &= finite_mask(data)
    if tiling.zero_is_nodata:
        if data.dtype.kind in "iu":  # the bands OR-ed: a quarter of np.any's time
            # logical_and reads the OR's integers as "not 0" itself: one pass, not two
            np.logical_and(valid, functools.reduce(np.bitwise_or, data), out=valid)
        else:
            valid &= np.any(data != 0, axis=0)
    return valid


def scaling_mode(dtype: str, tiling: TilingSettings) -> str:
    """tiling.scaling with "auto" decided by the pixel type: uint8 as it is, else the
    percentiles of the raster's pixels."""
    if tiling.scaling == "auto":
        return "uint8" if dtype == "uint8" else "percentile"
    return tiling.scaling


def scaling_range(dtype: str, data: np.ndarray, valid: np.ndarray, tiling: TilingSettings
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per band (value mapped to 0, value mapped to 255) by tiling.scaling; percentiles are
    taken over the `valid` pixels of `data` [3, H, W]."""
    mode = scaling_mode(dtype, tiling)
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
