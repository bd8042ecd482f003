"""The two warps side by side in one run (tiling.warp "gdal" and "fast"): read time per tile
and how far the fast warp's pixels are from GDAL's, on synthetic 5 m UTM rasters (up- and
downsampled, with and without nodata) and on every shared raster.

    python bench/warp.py                  # 224 px tiles, strips of 16 as the job reads them
    python bench/warp.py --px 64 --repeat 3

Each row: tiles read as the indexing job reads them (strips of up to 16 tiles through their
block's grid), a fresh reader per pass (cold GDAL caches for its datasets), the best of
--repeat passes. "ratio": tile pixel / raster pixel (ground size; > 1 is downsampling),
"ovr": the internal overview read (-1: full resolution). Differences are over the pixels
both warps call valid; "mask" is the share of pixels whose validity differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.config import DiscoverySettings, TilingSettings  # noqa: E402
from indexer.rasters.grid import choose_zoom  # noqa: E402
from indexer.rasters.inspect import inspect_raster  # noqa: E402
from indexer.rasters.reader import RasterReader  # noqa: E402
from indexer.rasters.sources import RasterSource  # noqa: E402
from tests.helpers import (  # noqa: E402
    SHARED_GEOTIFF,
    job_strips,
    patterned_raster,
    read_difference,
)


def row(label: str, path: Path, tiling: TilingSettings, px: int, repeat: int) -> None:
    info = inspect_raster(RasterSource(str(path)), DiscoverySettings(), tiling)
    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, tiling)
    strips = job_strips(info, tiling, px)
    n = sum(s.width // px for _, s in strips)
    out, best = {}, {}
    for warp in ("gdal", "fast"):
        times = []
        for _ in range(repeat):
            reader = RasterReader(dataclasses.replace(tiling, warp=warp))
            t = time.perf_counter()
            out[warp] = [reader.read_masked(info, s, g) for g, s in strips]
            times.append(time.perf_counter() - t)
            level = reader.overview_level(info, strips[0][0])
            reader.close()
        best[warp] = min(times) / n * 1e3
    d, differ = read_difference(zip(out["gdal"], out["fast"], strict=True))
    ratio = strips[0][0].res * math.cos(math.radians(info.centre_lat)) / info.native_gsd_m
    print(f"{label:<34} {zoom:>3} {ratio:>5.2f} {level:>3} {n:>5} {best['gdal']:>7.2f} "
          f"{best['fast']:>7.2f} {best['gdal'] / best['fast']:>6.1f}x {d.mean():>6.3f} "
          f"{np.percentile(d, 99):>4.0f} {d.max():>4} {differ:>8.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--px", type=int, default=224, help="tile side, pixels")
    ap.add_argument("--size", type=int, default=4096, help="synthetic raster side, pixels")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    print(f"{'raster':<34} {'z':>3} {'ratio':>5} {'ovr':>3} {'tiles':>5} {'gdal ms':>7} "
          f"{'fast ms':>7} {'speed':>7} {'mean':>6} {'p99':>4} {'max':>4} {'mask':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for nodata in (None, 0):
            path = patterned_raster(Path(tmp) / f"s{nodata}.tif", args.size, nodata)
            for target in (5.0, 7.5):
                label = f"synthetic 5 m{' nodata' if nodata is not None else ''} @ {target} m"
                row(label, path, TilingSettings(target_gsd_m=target), args.px, args.repeat)
    for path in sorted(SHARED_GEOTIFF.glob("*.tif")):
        for target in (2.0, 10.0):
            row(f"{path.name[:26]} @ {target:g} m", path, TilingSettings(target_gsd_m=target),
                args.px, args.repeat)


if __name__ == "__main__":
    main()
