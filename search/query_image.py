"""Query images: sniff the type from the bytes, check the declared size before decoding
anything, decode cheaply, and preprocess like indexed tiles.

A few kilobytes can declare billions of pixels (a sparse TIFF, a 1-bit PNG, a JPEG), so the
header's width x height is checked against `max_pixels` before a single pixel is decoded;
JPEGs are decoded at a reduced DCT scale (`draft`) and TIFFs read decimated, straight to
the encoder's input size, so the work is bounded by the output, not the upload.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import mercantile
import numpy as np
from PIL import Image

from encoder.images import square_tile
from indexer.config import DiscoverySettings, TileRecipe
from indexer.errors import InputError
from indexer.rasters.grid import Window
from indexer.rasters.inspect import inspect_raster
from indexer.rasters.reader import RasterReader
from indexer.rasters.scaling import finite_mask, scaling_range, to_uint8
from indexer.rasters.sources import RasterSource


class ImageError(ValueError):
    """The uploaded bytes are not a usable image (one-line message)."""


class UnsupportedImageType(ImageError):
    """The bytes are none of the allowed image types."""


def sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def _check_size(width: int, height: int, max_pixels: int, min_px: int) -> None:
    if width * height > max_pixels:
        raise ImageError(f"image declares {width}x{height} pixels, more than the "
                         f"{max_pixels} allowed (api.max_image_pixels): send a smaller image")
    if min(width, height) < min_px:
        raise ImageError(f"image is {width}x{height} pixels; at least {min_px}x{min_px} "
                         "is needed")


def _from_tiff(data: bytes, recipe: TileRecipe, max_pixels: int, min_px: int) -> np.ndarray:
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: fine for a query
            with MemoryFile(data) as mem, mem.open() as src:
                _check_size(src.width, src.height, max_pixels, min_px)
                t = recipe.tiling()
                bands = t.bands if src.count >= max(t.bands) else (
                    (1, 1, 1) if src.count < 3 else (1, 2, 3))
                t = dataclasses.replace(t, bands=bands)
                if src.crs is not None:
                    return _georeferenced(mem.name, t, recipe.tile_px)
                return _plain_tiff(src, t, recipe.tile_px)
    except RasterioError:
        raise ImageError("not a readable TIFF (truncated, corrupt or unsupported layout)"
                         ) from None


def _georeferenced(path: str, tiling, tile_px: int) -> np.ndarray:
    """A GeoTIFF query read like an index tile, through the indexer's RasterReader: the
    centre square of its footprint, warped to EPSG:3857 at the tile size."""
    try:
        info = inspect_raster(RasterSource(path), DiscoverySettings(), tiling)
    except InputError as e:
        raise ImageError(f"GeoTIFF: {e.message}") from None
    w, s, e, n = info.lonlat_bounds
    (x0, y0), (x1, y1) = mercantile.xy(w, s), mercantile.xy(e if e > w else e + 360, n)
    side = min(x1 - x0, y1 - y0)
    left, top = (x0 + x1 - side) / 2, (y0 + y1 + side) / 2
    reader = RasterReader(tiling, max_open=1)
    try:
        patch = reader.read(info, Window.square(left, top, side / tile_px, tile_px))
    finally:
        reader.close()
    if patch.nodata_fraction >= 1.0:
        raise ImageError("GeoTIFF has no valid pixel in its centre square")
    return patch.rgb


def _plain_tiff(src, tiling, tile_px: int) -> np.ndarray:
    """A TIFF without georeference: its centre square, read decimated straight to the tile
    size (overviews when the file has them), scaled by the recipe: memory is bounded by the
    tile, not the upload."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window as PixelWindow

    side = min(src.width, src.height)
    window = PixelWindow((src.width - side) // 2, (src.height - side) // 2, side, side)
    arr = src.read(list(tiling.bands), window=window, out_shape=(3, tile_px, tile_px),
                   resampling=Resampling[tiling.resampling])
    valid = finite_mask(arr)
    if not valid.any():
        raise ImageError("TIFF has no finite pixel value")
    rgb = to_uint8(arr, *scaling_range(arr.dtype.name, arr, valid, tiling))  # NaN -> 0
    return np.where(valid[None], rgb, np.uint8(0))


def _from_pil(data: bytes, kind: str, tile_px: int, max_pixels: int, min_px: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError:
        raise ImageError("image declares too many pixels (api.max_image_pixels)") from None
    except (OSError, SyntaxError, ValueError):
        raise ImageError(f"cannot decode {kind.upper()} (truncated or corrupt data)") from None
    _check_size(img.width, img.height, max_pixels, min_px)
    try:
        if kind == "jpeg":
            # DCT scaling: decode at 1/2, 1/4 or 1/8 size, still at least the tile size.
            img.draft("RGB", (tile_px, tile_px))
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ImageError(f"cannot decode {kind.upper()} (truncated or corrupt data)") from None
    return square_tile(img, tile_px)


def decode_query_image(data: bytes, recipe: TileRecipe, allowed: tuple[str, ...],
                       min_px: int, max_pixels: int = 50_000_000) -> np.ndarray:
    """bytes -> uint8 [3, S, S] (S = the recipe's tile size): the centre square, resized to
    the tile size (as CLIP preprocesses); TIFF bands and scaling by the index's recipe."""
    kind = sniff(data)
    if kind is None or kind not in allowed:
        raise UnsupportedImageType(f"unsupported image type {kind or 'unknown'}: send "
                                   f"{', '.join(t.upper() for t in allowed)}")
    if kind == "tiff":
        return _from_tiff(data, recipe, max_pixels, min_px)
    return _from_pil(data, kind, recipe.tile_px, max_pixels, min_px)
