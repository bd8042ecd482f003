"""The reader's two pixel copies, old against new, in one run: (1) a batch's kept tiles cut
from their strips ([3, px, n * px] arrays seen as [n, 3, px, px]) into the batch tensor,
by np.compress (before) and by slices of runs of kept tiles (`indexer.job.read.collate`
now); (2) a resampled band of a tile written into its strip, as a new array copied in
(before) and by OpenCV straight into the strip (`indexer.rasters.warp` now).

    python bench/copies.py                   # 224 px tiles, strips of 16, 2,048 tiles
    python bench/copies.py --px 256 --keep 0.9

The batch tensor is allocated once and reused, as the readers' shared-memory buffers are,
so neither side pays page faults; microseconds per tile, best of --repeat passes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.read import best  # noqa: E402
from indexer.job.read import STRIP_TILES  # noqa: E402
from indexer.rasters.grid import tile_runs  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--px", type=int, default=224)
    p.add_argument("--tiles", type=int, default=2048)
    p.add_argument("--keep", type=float, default=1.0, help="share of tiles kept (the rest "
                   "dropped at random: nodata, or committed by an earlier run)")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    px, n = args.px, STRIP_TILES
    strips = [rng.integers(0, 256, (3, px, n * px), dtype=np.uint8)
              for _ in range(args.tiles // n)]
    views = [s.reshape(3, px, n, px).transpose(2, 0, 1, 3) for s in strips]
    keeps = [rng.random(n) < args.keep for _ in strips]
    out = np.empty((sum(int(k.sum()) for k in keeps), 3, px, px), np.uint8)

    def compress():
        a = 0
        for tiles, keep in zip(views, keeps, strict=True):
            k = int(keep.sum())
            np.compress(keep, tiles, axis=0, out=out[a:a + k])
            a += k

    def runs():
        a = 0
        for tiles, keep in zip(views, keeps, strict=True):
            for i0, i1 in tile_runs(keep):
                out[a:a + i1 - i0] = tiles[i0:i1]
                a += i1 - i0

    compress()
    want = out.copy()
    runs()
    assert np.array_equal(out, want), "the two copies differ"
    kept = len(out)
    old_copy = best(compress, args.repeat) / kept * 1e6
    new_copy = best(runs, args.repeat) / kept * 1e6

    # One band of each tile resampled (a slight rotation and 1.45x enlargement, as a 5 m UTM
    # raster into 3.46 m web-mercator tiles) into its place in the strip.
    src = rng.integers(0, 256, (px, px), dtype=np.uint8)
    m = np.array([[0.69, 0.012, 3.0], [-0.012, 0.69, 3.0]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    strip = strips[0]

    def alloc_copy():
        for i in range(n):
            strip[0, :, i * px:(i + 1) * px] = cv2.warpAffine(
                src, m, (px, px), flags=flags, borderMode=cv2.BORDER_REPLICATE)

    def into():
        for i in range(n):
            dst = strip[0, :, i * px:(i + 1) * px]
            cv2.warpAffine(src, m, (px, px), dst=dst, flags=flags,
                           borderMode=cv2.BORDER_REPLICATE)

    alloc_copy()
    want = strip.copy()
    into()
    assert np.array_equal(strip, want), "the two warps differ"
    old_warp = best(alloc_copy, args.repeat) / n * 1e6 * 3  # 3 bands per tile
    new_warp = best(into, args.repeat) / n * 1e6 * 3

    print(f"{px} px tiles, strips of {n}, {kept} of {len(views) * n} tiles kept; "
          f"microseconds per tile, best of {args.repeat}\n")
    print(f"{'step':<44} {'before':>8} {'now':>8} {'ratio':>7}")
    print(f"{'kept tiles -> batch tensor (compress | runs)':<44} {old_copy:>8.1f} "
          f"{new_copy:>8.1f} {old_copy / new_copy:>6.1f}x")
    print(f"{'3 bands warped (new array + copy | in place)':<44} {old_warp:>8.1f} "
          f"{new_warp:>8.1f} {old_warp / new_warp:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
