"""Tile reading, old against new, in one run on the same synthetic raster: the two-warp read
per tile (data, then GDAL's dataset mask: the reader before read_masked), the one-warp read
per tile, and a strip of 16 tiles read in one call and cut into tiles in numpy; then
thumbnails, LANCZOS resize against the area mean.

    python bench/read.py                 # 5 m UTM raster without nodata (mask: added alpha)
    python bench/read.py --nodata 0      # with nodata = 0 (mask: from the bands' values)
    python bench/read.py --size 4096 --px 224 --strip 16 --repeat 3

Tiles are read as the indexing job reads them: through their block's grid (one cached
warped view per block); every pass starts with a fresh reader (cold GDAL caches for its
datasets) and the best of --repeat passes is shown.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, features
from rasterio.enums import Resampling

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.config import DiscoverySettings, TilingSettings  # noqa: E402
from indexer.job.read import jpeg_thumbnail  # noqa: E402
from indexer.rasters.grid import (  # noqa: E402
    block_window,
    choose_zoom,
    raster_blocks,
    strip_window,
    tile_gsd_m,
    tile_window,
)
from indexer.rasters.inspect import inspect_raster  # noqa: E402
from indexer.rasters.reader import RasterReader  # noqa: E402
from indexer.rasters.scaling import to_uint8, valid_mask  # noqa: E402
from indexer.rasters.sources import RasterSource  # noqa: E402
from tests.helpers import patterned_raster  # noqa: E402


class TwoWarpReader(RasterReader):
    """The reader before read_masked: data, then vrt.dataset_mask, per read."""

    def __init__(self, tiling):
        super().__init__(tiling, use_overviews=False)

    def _read(self, vrt, rule, win, info):
        data = vrt.read(list(self.tiling.bands), window=win)
        valid = valid_mask(data, vrt.dataset_mask(window=win), self.tiling)
        rgb = to_uint8(data, info.scale_lo, info.scale_hi)
        if not valid.all():
            rgb = np.where(valid[None], rgb, np.uint8(0))
        return rgb, valid


def lanczos_thumbnail(rgb: np.ndarray, size: int, quality: int) -> bytes:
    """jpeg_thumbnail before: LANCZOS resize."""
    img = Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)))
    if img.width != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="raster side, pixels (5 m)")
    ap.add_argument("--px", type=int, default=224, help="tile side, pixels")
    ap.add_argument("--strip", type=int, default=16, help="tiles per strip read")
    ap.add_argument("--nodata", type=float, default=None)
    ap.add_argument("--thumb", type=int, default=128, help="thumbnail side, pixels")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    tiling = TilingSettings(target_gsd_m=5.0)
    px = args.px
    with tempfile.TemporaryDirectory() as tmp:
        path = patterned_raster(Path(tmp) / "utm5m.tif", args.size, args.nodata)
        info = inspect_raster(RasterSource(str(path)), DiscoverySettings(), tiling)
        zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, tiling)
        (block,) = raster_blocks(info, zoom)
        grid = block_window(block, px)
        rows = range(block.y0, block.y1 + 1)
        tiles = [tile_window(zoom, *block.tile(i), px, block.src_shift)
                 for i in range(block.count)]

        def per_tile(reader_cls, **kw):
            def run():
                reader = reader_cls(tiling, **kw)
                out = [reader.read_masked(info, t, grid) for t in tiles]
                reader.close()
                return out
            return run

        def strips():
            reader = RasterReader(tiling)
            out = []
            for y in rows:
                for x0 in range(block.x0, block.x1 + 1, args.strip):
                    n = min(args.strip, block.x1 + 1 - x0)
                    rgb, valid = reader.read_masked(info, strip_window(block, px, x0, y, n),
                                                    grid)
                    for i in range(n):
                        cut = slice(i * px, (i + 1) * px)
                        out.append((np.ascontiguousarray(rgb[:, :, cut]),
                                    np.ascontiguousarray(valid[:, cut])))
            reader.close()
            return out

        # the three give the same tiles (checked once, outside the timings)
        old, new, cut = per_tile(TwoWarpReader)(), per_tile(RasterReader)(), strips()
        for a, b, c in zip(old, new, cut, strict=True):
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            assert np.array_equal(b[0], c[0]) and np.array_equal(b[1], c[1])

        t_old = best(per_tile(TwoWarpReader), args.repeat)
        t_new = best(per_tile(RasterReader), args.repeat)
        t_strip = best(strips, args.repeat)
        n = len(tiles)
        kind = "no nodata (added alpha)" if args.nodata is None else f"nodata={args.nodata:g}"
        print(f"raster {args.size}x{args.size} px, 5 m, EPSG:32632, {kind}; zoom {zoom}, "
              f"{block.width}x{block.y1 - block.y0 + 1} = {n} tiles of {px} px; "
              f"best of {args.repeat}")
        print(f"{'read':<34}{'ms/tile':>9}{'tiles/s':>9}{'vs old':>8}")
        for name, t in (("old: two warps per tile", t_old), ("new: one warp per tile", t_new),
                        (f"new: strip of {args.strip} + numpy cut", t_strip)):
            print(f"{name:<34}{1000 * t / n:>9.2f}{n / t:>9.0f}{t_old / t:>7.2f}x")

        rgbs = [rgb for rgb, valid in new if valid.mean() > 0.5][:200]
        q = 85
        t_lz = best(lambda: [lanczos_thumbnail(r, args.thumb, q) for r in rgbs], args.repeat)
        t_area = best(lambda: [jpeg_thumbnail(r, args.thumb, q) for r in rgbs], args.repeat)
        half = px // 2
        t_lz2 = best(lambda: [lanczos_thumbnail(r, half, q) for r in rgbs], args.repeat)
        t_area2 = best(lambda: [jpeg_thumbnail(r, half, q) for r in rgbs], args.repeat)
        m = len(rgbs)
        print(f"thumbnails of {m} tiles, JPEG quality {q} "
              f"(libjpeg-turbo: {features.check_feature('libjpeg_turbo')})")
        print(f"{'thumbnail':<34}{'ms/tile':>9}{'vs old':>8}")
        for name, t, ref in (
                (f"old: LANCZOS to {args.thumb} px", t_lz, t_lz),
                (f"new: area mean (BOX) to {args.thumb} px", t_area, t_lz),
                (f"old: LANCZOS to {half} px", t_lz2, t_lz2),
                (f"new: area mean (reduce) to {half} px", t_area2, t_lz2)):
            print(f"{name:<34}{1000 * t / m:>9.3f}{ref / t:>7.2f}x")
        # Tiles ~4x coarser than the raster (two zooms up), warped from the full-resolution
        # pixels or from the internal overview (built here: 2x, 4x, 8x, averaged)
        with rasterio.open(path, "r+") as dst:
            dst.build_overviews([2, 4, 8], Resampling.average)
        (coarse,) = raster_blocks(info, zoom - 2)
        cgrid = block_window(coarse, px)
        ctiles = [tile_window(zoom - 2, *coarse.tile(i), px, coarse.src_shift)
                  for i in range(coarse.count)]

        def coarse_tiles(use_overviews):
            def run():
                reader = RasterReader(tiling, use_overviews=use_overviews)
                for t in ctiles:
                    reader.read_masked(info, t, cgrid)
                reader.close()
            return run

        t_full = best(coarse_tiles(False), args.repeat)
        t_ovr = best(coarse_tiles(True), args.repeat)
        level = RasterReader(tiling).overview_level(info, cgrid)
        k = len(ctiles)
        ratio = tile_gsd_m(zoom - 2, info.centre_lat, px) / info.native_gsd_m
        print(f"{k} tiles at zoom {zoom - 2} ({ratio:.1f}x the raster's pixel size): "
              f"overview level {level} (factor {2 ** (level + 1)})")
        for name, t in (("warped from full resolution", t_full),
                        ("warped from the overview", t_ovr)):
            print(f"{name:<34}{1000 * t / k:>9.2f}{k / t:>9.0f}{t_full / t:>7.2f}x")

        tile_ms = 1000 * t_strip / n
        print(f"per tile, strip read + thumbnail: {tile_ms + 1000 * t_area / m:.2f} ms "
              f"(old per-tile read + LANCZOS: {1000 * t_old / n + 1000 * t_lz / m:.2f} ms)")


if __name__ == "__main__":
    main()
