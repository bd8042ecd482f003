"""Tile thumbnails: the small JPEG the store keeps per tile for maps and result lists, made
by the reader processes (a share of their time per tile, so made cheaply), or, for the tiles
the readers leave to the encoder's GPU, resampled there and JPEG-encoded on a few threads of
the job's process (device_warp.resample_deferred, `jpegs_later`)."""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import cv2
import numpy as np
import torch

from indexer.rasters.scaling import to_uint8
from indexer.rasters.warp import DOWNSAMPLE_FROM, blur_sigma

# Threads JPEG-encoding the thumbnails the encoder's device resampled: ~0.05-0.1 ms a 128 px
# thumbnail (OpenCV lets go of the GIL while it encodes), so 10,000 tiles/s keep about one
# core busy; more threads take the batches in parallel.
JPEG_THREADS = max(1, min(4, (os.cpu_count() or 1) // 4))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def thumbnail_bands(rgb: np.ndarray, size: int) -> list[np.ndarray]:
    """uint8 [3, H, W] (rows may be strided: a strip's tiles) -> its R, G, B bands at `size`
    x `size` px: a whole-factor area mean first (OpenCV's INTER_AREA, fast at whole factors)
    where the tile is at least twice the thumbnail, then a bilinear resize for what is left,
    under 2x, where bilinear's 2 x 2 footprint covers a thumbnail pixel. 224 -> 128 px: 0.05
    ms per tile against 0.25 for PIL's BOX resize (the exact area mean), 2.6 grey levels from
    it on average on the shared rasters' tiles (bench/thumbs.py); at whole factors rounding
    only (tests/test_reader_buffers.py)."""
    bands = list(rgb)
    h, w = bands[0].shape
    k = min(h, w) // size
    if k >= 2 and h % k == 0 and w % k == 0:
        bands = [cv2.resize(b, (w // k, h // k), interpolation=cv2.INTER_AREA) for b in bands]
    if bands[0].shape != (size, size):
        bands = [cv2.resize(b, (size, size), interpolation=cv2.INTER_LINEAR) for b in bands]
    return bands


def jpeg_thumbnail(rgb: np.ndarray, size: int, quality: int) -> bytes:
    """uint8 [3, H, W] -> JPEG bytes of its `size` px thumbnail (thumbnail_bands), by
    OpenCV's encoder (libjpeg-turbo, 4:2:0 chroma, as PIL's): 0.11 ms per 224 px tile in all,
    against 0.36 for PIL's resize and encoder (bench/thumbs.py)."""
    return _jpeg(thumbnail_bands(rgb, size), quality)


def device_thumbnails(px: int, size: int) -> bool:
    """Whether the encoder's device can make the thumbnails of the tiles the readers defer
    (`thumbnail_maps`): a deferred tile is at most DOWNSAMPLE_FROM source pixels a pixel, so
    its `size` px thumbnail is under 2x the source (no blur, as crop_thumbnail_bands would
    apply from 2x) when px / size is under 2 / DOWNSAMPLE_FROM (224 -> 128 px: 1.75)."""
    return px / size * DOWNSAMPLE_FROM < 2


def thumbnail_maps(maps: np.ndarray, px: int, size: int) -> np.ndarray:
    """Maps [D, 2, 3] from tile pixel to crop pixel -> from `size` px thumbnail pixel to crop
    pixel, as crop_thumbnail_bands samples: thumbnail pixel (u, v) is tile pixel
    ((u + 0.5) k - 0.5, (v + 0.5) k - 0.5), k = px / size (float32)."""
    k = px / size
    scale = np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2], [0.0, 0.0, 1.0]])
    return (maps.astype(np.float64) @ scale).astype(np.float32)


def jpegs_later(pixels: torch.Tensor, ready: torch.cuda.Event | None, quality: int
                ) -> Future:
    """The future list of JPEG bytes of thumbnails `pixels` (uint8 [T, 3, size, size] on the
    CPU: page-locked and still being copied from a GPU until `ready` has happened), made on
    one of JPEG_THREADS threads of this process."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=JPEG_THREADS,
                                       thread_name_prefix="satfind-jpeg")

    def encode() -> list[bytes]:
        if ready is not None:
            ready.synchronize()  # (lets go of the GIL while it waits)
        return [_jpeg(list(t), quality) for t in pixels.numpy()]

    return _pool.submit(encode)


def crop_thumbnail_bands(crop: np.ndarray, matrix: np.ndarray, px: int, size: int,
                         scale: tuple[tuple[float, ...], tuple[float, ...]] | None = None
                         ) -> list[np.ndarray]:
    """The R, G, B bands at `size` px of the thumbnail of a tile not resampled yet (a
    Deferred tile of indexer/rasters/warp.py: source pixels [3, h, w] and the map from tile
    pixel to source pixel), resampled straight from the source: thumbnail pixel (u, v) is
    tile pixel ((u + 0.5) k - 0.5, (v + 0.5) k - 0.5), k = px / size, sampled bilinearly.
    Under 2x from the source, as thumbnail_bands resizes a tile (bilinear, no blur); from 2x
    first blurred as the fast warp blurs a downsampled tile. `scale`: (values mapped to 0,
    values mapped to 255) per band, as the tile is scaled (None: uint8 as it is)."""
    k = px / size
    m = matrix @ np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2], [0.0, 0.0, 1.0]])
    ratio = math.sqrt(abs(np.linalg.det(m[:, :2])))
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = []
    for band in crop:
        if ratio >= 2:
            band = cv2.GaussianBlur(band, (0, 0), blur_sigma(ratio),
                                    borderType=cv2.BORDER_REPLICATE)
        out.append(cv2.warpAffine(band, m, (size, size), flags=flags,
                                  borderMode=cv2.BORDER_REPLICATE))
    if scale is not None:
        out = list(to_uint8(np.stack(out), *scale))
    return out


def jpeg_crop_thumbnail(crop: np.ndarray, matrix: np.ndarray, px: int, size: int,
                        quality: int,
                        scale: tuple[tuple[float, ...], tuple[float, ...]] | None = None
                        ) -> bytes:
    """jpeg_thumbnail of a tile not resampled yet (crop_thumbnail_bands)."""
    return _jpeg(crop_thumbnail_bands(crop, matrix, px, size, scale), quality)


def _jpeg(bands: list[np.ndarray], quality: int) -> bytes:
    r, g, b = bands
    ok, buf = cv2.imencode(".jpg", cv2.merge([b, g, r]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot JPEG-encode a {r.shape[0]} px thumbnail")
    return buf.tobytes()
