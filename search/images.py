"""Query images: sniff the type from the bytes, decode, and preprocess like indexed tiles."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from encoder.images import square_tile
from indexer.config import TilingSettings
from indexer.raster import scaling_range, to_uint8


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


def _from_tiff(data: bytes, tiling: TilingSettings) -> np.ndarray:
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: fine for a query
            with MemoryFile(data) as mem, mem.open() as src:
                bands = list(tiling.bands) if src.count >= max(tiling.bands) else (
                    [1, 1, 1] if src.count < 3 else [1, 2, 3])
                arr = src.read(bands)
    except RasterioError as e:
        raise ImageError(f"not a readable TIFF ({str(e).splitlines()[0]})") from None
    valid = np.ones(arr.shape[1:], dtype=bool)
    return to_uint8(arr, *scaling_range(arr.dtype.name, arr, valid, tiling))


def decode_query_image(data: bytes, tile_px: int, tiling: TilingSettings,
                       allowed: tuple[str, ...], min_px: int) -> np.ndarray:
    """bytes -> uint8 [3, tile_px, tile_px]: shortest side resized to the tile size, then a
    centre crop (as CLIP preprocesses), bands and scaling as configured for tiles."""
    kind = sniff(data)
    if kind is None or kind not in allowed:
        raise UnsupportedImageType(f"unsupported image type {kind or 'unknown'}: send "
                         f"{', '.join(t.upper() for t in allowed)}")
    if kind == "tiff":
        arr = _from_tiff(data, tiling)
        img = Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)))
    else:
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Image.DecompressionBombError:
            raise ImageError("image has too many pixels") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"cannot decode {kind.upper()} ({e})") from None
        img = img.convert("RGB")
    if min(img.size) < min_px:
        raise ImageError(f"image is {img.width}x{img.height} pixels; at least {min_px}x{min_px} "
                         "is needed")
    return square_tile(img, tile_px)
