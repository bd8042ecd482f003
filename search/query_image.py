"""Query images: sniff the type from the bytes, check the declared size before decoding
anything, decode cheaply, and preprocess like indexed tiles.

A few kilobytes can declare billions of pixels (a sparse TIFF, a 1-bit PNG, a JPEG), so the
header's width x height is checked against `max_pixels` before a single pixel is decoded;
JPEGs are decoded at a reduced DCT scale (`draft`) and TIFFs read decimated, straight to
the encoder's input size, so the work is bounded by the output, not the upload.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from encoder.images import square_tile
from indexer.config import TilingSettings
from indexer.rasters.scaling import finite_mask, scaling_range, to_uint8


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


def _from_tiff(data: bytes, tile_px: int, tiling: TilingSettings, max_pixels: int,
               min_px: int) -> np.ndarray:
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile
    from rasterio.windows import Window

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: fine for a query
            with MemoryFile(data) as mem, mem.open() as src:
                _check_size(src.width, src.height, max_pixels, min_px)
                bands = list(tiling.bands) if src.count >= max(tiling.bands) else (
                    [1, 1, 1] if src.count < 3 else [1, 2, 3])
                # The centre square, read decimated straight to the tile size (overviews
                # when the file has them): memory is bounded by the tile, not the upload.
                side = min(src.width, src.height)
                window = Window((src.width - side) // 2, (src.height - side) // 2, side, side)
                arr = src.read(bands, window=window, out_shape=(3, tile_px, tile_px),
                               resampling=Resampling[tiling.resampling])
    except RasterioError:
        raise ImageError("not a readable TIFF (truncated, corrupt or unsupported layout)"
                         ) from None
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


def decode_query_image(data: bytes, tile_px: int, tiling: TilingSettings,
                       allowed: tuple[str, ...], min_px: int,
                       max_pixels: int = 50_000_000) -> np.ndarray:
    """bytes -> uint8 [3, tile_px, tile_px]: the centre square, resized to the tile size (as
    CLIP preprocesses), bands and scaling as configured for tiles."""
    kind = sniff(data)
    if kind is None or kind not in allowed:
        raise UnsupportedImageType(f"unsupported image type {kind or 'unknown'}: send "
                                   f"{', '.join(t.upper() for t in allowed)}")
    if kind == "tiff":
        return _from_tiff(data, tile_px, tiling, max_pixels, min_px)
    return _from_pil(data, kind, tile_px, max_pixels, min_px)
