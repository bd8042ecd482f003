"""Decompression bombs: a few KB that declare billions of pixels (PNG, JPEG, TIFF), and a
large image that is allowed (under api.max_image_pixels) but costs real memory to decode."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import rasterio
from PIL import Image


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: a few KB declaring a huge image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\0" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def jpeg_bomb(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is rewritten to declare width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 30)).save(buf, format="JPEG")
    b = bytearray(buf.getvalue())
    sof = b.index(b"\xff\xc0")
    b[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(b)


def tiff_bomb(side: int) -> bytes:
    """A sparse GeoTIFF declaring side x side pixels (its blocks are never written)."""
    with rasterio.MemoryFile() as mem:
        with mem.open(driver="GTiff", width=side, height=side, count=3, dtype="uint8",
                      tiled=True, compress="deflate", sparse_ok=True) as dst:
            dst.write(np.full((3, 16, 16), 7, np.uint8),
                      window=rasterio.windows.Window(0, 0, 16, 16))
        return mem.read()


def bomb_corpus() -> dict[str, bytes]:
    return {"png-13000": png_bomb(13000, 13000), "png-60000": png_bomb(60000, 60000),
            "jpeg-60000": jpeg_bomb(60000, 60000), "jpeg-20000": jpeg_bomb(20000, 12000),
            "tiff-60000": tiff_bomb(60000), "tiff-100000": tiff_bomb(100000)}


def allowed_heavy_png(side: int = 7000) -> bytes:
    """A 1-bit PNG of side x side (49 MP at 7000): under the default cap, decoded for real."""
    return png_bomb(side, side)
