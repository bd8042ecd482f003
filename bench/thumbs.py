"""Thumbnails: the job's (`indexer.job.thumbnails.jpeg_thumbnail`: a whole-factor area mean and
bilinear by OpenCV, OpenCV's JPEG) against the one it replaced (PIL: a BOX resize, PIL's
JPEG), on the same tiles in one run: ms per tile, and how far each thumbnail's pixels are
from the exact area mean of the tile.

    python bench/thumbs.py                 # 224 px tiles of the shared rasters -> 128 px
    python bench/thumbs.py --px 256 --size 128

Tiles: 224 px windows of each raster in ../shared/data/geotiff (at their own resolution);
a synthetic texture when the folder is absent.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.job.thumbnails import jpeg_thumbnail, thumbnail_bands  # noqa: E402
from tests.helpers import SHARED_GEOTIFF  # noqa: E402


def pil_thumbnail(rgb: np.ndarray, size: int, quality: int) -> tuple[bytes, np.ndarray]:
    """The replaced thumbnail (before 2026-11-26): PIL's BOX resize and JPEG encoder."""
    img = Image.merge("RGB", [Image.fromarray(np.ascontiguousarray(b)) for b in rgb])
    img = img.resize((size, size), Image.Resampling.BOX)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), np.asarray(img)


def tiles(px: int, per_raster: int) -> list[np.ndarray]:
    out = []
    for path in sorted(SHARED_GEOTIFF.glob("*.tif")):
        with rasterio.open(path) as src:
            if src.count < 3 or src.width < px or src.height < px:
                continue
            for k in range(per_raster):
                r = (src.height - px) * (k + 1) // (per_raster + 1)
                c = (src.width - px) * (per_raster - k) // (per_raster + 1)
                data = src.read([1, 2, 3], window=((r, r + px), (c, c + px)))
                if data.dtype != np.uint8:
                    lo, hi = np.percentile(data, (2, 98))
                    data = np.clip((data - lo) * 255.0 / max(hi - lo, 1), 0, 255)
                out.append(data.astype(np.uint8))
    if not out:  # no shared data: a smoothed-noise texture
        rng = np.random.default_rng(0)
        for _ in range(per_raster * 6):
            base = rng.normal(128, 40, (3, px // 4, px // 4)).clip(0, 255).astype(np.uint8)
            out.append(np.stack([np.asarray(Image.fromarray(b).resize((px, px),
                                 Image.Resampling.BICUBIC)) for b in base]))
    return out


def per_tile_ms(fn, items: list[np.ndarray], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for t in items:
            fn(t)
        best = min(best, (time.perf_counter() - t0) / len(items))
    return best * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--px", type=int, default=224)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--quality", type=int, default=85)
    p.add_argument("--per-raster", type=int, default=40)
    p.add_argument("--repeat", type=int, default=3, help="passes; the best is kept")
    args = p.parse_args()
    items = tiles(args.px, args.per_raster)
    n, q = args.size, args.quality
    old = per_tile_ms(lambda t: pil_thumbnail(t, n, q), items, args.repeat)
    new = per_tile_ms(lambda t: jpeg_thumbnail(t, n, q), items, args.repeat)
    old_resize = per_tile_ms(lambda t: Image.merge("RGB", [Image.fromarray(
        np.ascontiguousarray(b)) for b in t]).resize((n, n), Image.Resampling.BOX), items,
        args.repeat)
    new_resize = per_tile_ms(lambda t: thumbnail_bands(t, n), items, args.repeat)
    diffs, sizes_old, sizes_new = [], [], []
    for t in items:
        jpeg_old, area = pil_thumbnail(t, n, q)  # PIL's BOX resize is the exact area mean
        diffs.append(np.abs(np.stack(thumbnail_bands(t, n), axis=2).astype(np.float64)
                            - area).mean())
        sizes_old.append(len(jpeg_old))
        sizes_new.append(len(jpeg_thumbnail(t, n, q)))
    print(f"{len(items)} tiles of {args.px} px -> {n} px, JPEG quality {q}")
    print(f"{'thumbnail':<40} {'ms/tile':>8} {'resize ms':>10} {'JPEG bytes':>11}")
    print(f"{'PIL BOX + PIL JPEG (replaced)':<40} {old:>8.3f} {old_resize:>10.3f} "
          f"{np.mean(sizes_old):>11.0f}")
    print(f"{'area/bilinear + OpenCV JPEG (the job)':<40} {new:>8.3f} {new_resize:>10.3f} "
          f"{np.mean(sizes_new):>11.0f}")
    print(f"speed-up {old / new:.1f}x; the job's thumbnail pixels vs the exact area mean "
          f"(before JPEG): mean {np.mean(diffs):.2f} grey levels (worst tile "
          f"{np.max(diffs):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
