"""The reader processes alone: job.workers readers read a raster's tiles as the job's do
(TileDataset strips, collated into reused shared-memory buffers, handed over by the
DataLoader), and the main process only takes each batch and gives its buffer back: no warp
on a device, no encoder, no writer. What a reader costs per tile (user and system CPU, page
faults), the number that bounds the job where the readers are the limit (BENCHMARKS.md).

    python bench/readers.py --tiles 6000 --workers 2 --rounds 3
    python bench/readers.py --pixels real --defer yes no      # real NAIP pixels, both paths
    python bench/readers.py --device-thumbnails yes no        # deferred tiles' thumbnails
    python bench/readers.py --pixels real --layout deflate --workers 1   # a compressed COG
    python bench/readers.py --tiles 12000 --pixels real --layout deflate --bands yes no

Variants run alternated, round after round, on the same raster, each in fresh reader
processes. `--pixels noise` (uniform random uint8) is the JPEG thumbnails' worst case;
`real` mirrors ../shared/data's 5 m NAIP scene across the raster.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import resource
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import indexer.job.thumbnails as thumbnails  # noqa: E402
from bench.index import LAYOUTS, noise, scene_raster  # noqa: E402
from bench.timeline import _replace  # noqa: E402
from indexer.config import load_settings  # noqa: E402
from indexer.job.plan import new_band  # noqa: E402
from indexer.job.read import RasterPlan, TileDataset, read_tiles, tile_loader  # noqa: E402
from indexer.job.slots import SharedSlots  # noqa: E402
from indexer.job.thumbnails import crop_thumbnail_bands  # noqa: E402
from indexer.rasters.grid import choose_zoom, column_bands, raster_blocks  # noqa: E402
from indexer.rasters.inspect import inspect_raster  # noqa: E402
from indexer.rasters.sources import RasterSource  # noqa: E402
from tests.helpers import OFFLINE_CONFIG  # noqa: E402

NAIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "geotiff" / \
    "naip_nd_20090818.tif"
TILE_PX = 224


def pixels(kind: str, side: int) -> np.ndarray:
    """uint8 [3, side, side]: uniform noise, or the NAIP scene's RGB mirrored to fill."""
    if kind == "noise":
        return noise(side)
    if not NAIP.exists():
        sys.exit(f"--pixels real needs {NAIP} (../shared/data is absent here)")
    with rasterio.open(NAIP) as src:
        scene = src.read([1, 2, 3])
    h, w = scene.shape[1:]
    # Mirrored copies (no seams), then cut: a 5 m scene as the raster's own 5 m pixels.
    across = np.concatenate([scene if j % 2 == 0 else scene[:, :, ::-1]
                             for j in range(-(-side // w))], axis=2)
    out = np.concatenate([across if i % 2 == 0 else across[:, ::-1]
                          for i in range(-(-side // h))], axis=1)
    return np.ascontiguousarray(out[:, :side, :side])


def raster(work: Path, kind: str, tiles: int, keep: bool, layout: str = "strips") -> Path:
    """bench/index.py's synthetic raster, of these pixels, stored this way."""
    path = work / f"scene-{kind}{'' if layout == 'strips' else '-' + layout}.tif"
    return scene_raster(path, tiles, TILE_PX, keep, lambda side: pixels(kind, side),
                        **LAYOUTS[layout])


def run_once(plans, settings, defer: bool, device_thumbs: bool) -> dict:
    """Every tile of `plans` through the readers; their costs per tile."""
    job = settings.job
    ds = TileDataset(plans, TILE_PX, settings.tiling, job, defer=defer,
                     device_thumbs=device_thumbs)
    slots = SharedSlots(job.workers, read_tiles(job), TILE_PX)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    tiles = kept = 0
    worker_s = 0.0
    it = iter(tile_loader(ds, job, False, slots))
    for batch in it:
        tiles += len(batch)
        kept += int((batch.pixel_row >= 0).sum())
        worker_s += batch.read_s
        if batch.slot >= 0:
            slots.release(batch.slot)
    del it  # the readers exit: their CPU time is the children's now
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    per = 1000.0 / max(1, tiles)
    return {"tiles": tiles, "kept": kept, "tiles/s": tiles / wall, "wall s": wall,
            "user ms": (r1.ru_utime - r0.ru_utime) * per,
            "system ms": (r1.ru_stime - r0.ru_stime) * per,
            "worker ms": worker_s * per,
            "faults": (r1.ru_minflt - r0.ru_minflt) / max(1, tiles)}


def jpeg_cost(plans, settings) -> str:
    """What the job's process pays per thumbnail the device makes: jpegs_later (one thread)
    on the thumbnail pixels of a batch of deferred tiles (made here by the readers' OpenCV
    resampling, standing in for the device's)."""
    job = settings.job
    ds = TileDataset(plans, TILE_PX, settings.tiling, job, defer=True)
    strips = [ds[i] for i in range(min(len(ds), 32))]
    size = job.thumbnail_size
    pixels = torch.from_numpy(np.stack([
        np.stack(crop_thumbnail_bands(d.crop, d.matrix, TILE_PX, size, s["scale"]))
        for s in strips for d in s["deferred"].values()]))
    undo = _replace(thumbnails, "JPEG_THREADS", 1)
    try:
        thumbnails.jpegs_later(pixels[:8], None, job.thumbnail_quality).result()  # warm-up
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            thumbnails.jpegs_later(pixels, None, job.thumbnail_quality).result()
            best = min(best, time.perf_counter() - t)
    finally:
        undo()
    return (f"JPEG of a device-made thumbnail on the job's threads: {best / len(pixels) * 1e3:.3f}"
            f" ms ({len(pixels)} of {size} px, one thread, best of 3)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=int, default=3000, help="about this many tiles")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--read-batch", type=int, default=512, help="tiles per reader call")
    p.add_argument("--pixels", choices=("noise", "real"), default="noise")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="strips",
                   help="how the raster is stored (see LAYOUTS)")
    p.add_argument("--defer", choices=("yes", "no"), nargs="+", default=["yes"],
                   help="yes: the plain tiles left to the encoder's device (job.warp_on = "
                   "device, as on a GPU); no: resampled in the readers")
    p.add_argument("--device-thumbnails", choices=("yes", "no"), nargs="+", default=["yes"],
                   help="with --defer yes: the deferred tiles' thumbnails left to the "
                   "encoder's device (yes: as on a GPU; their JPEG is then the job "
                   "process's, timed apart below) or made by the readers (no)")
    p.add_argument("--bands", choices=("yes", "no"), nargs="+", default=["yes"],
                   help="yes: a raster stored in blocks read in column bands (plan.new_band) "
                   "(as the job plans it); no: in whole rows (the order before them)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--keep-raster", action="store_true")
    p.add_argument("--out", default="/tmp/satfind-bench-readers")
    args = p.parse_args()

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    base = load_settings(OFFLINE_CONFIG)
    settings = dataclasses.replace(
        base, tiling=dataclasses.replace(base.tiling, warp="fast"),
        job=dataclasses.replace(base.job, workers=args.workers, batch_size=args.read_batch,
                                read_batch=args.read_batch))
    t = time.perf_counter()
    path = raster(work, args.pixels, args.tiles, args.keep_raster, args.layout)
    info = inspect_raster(RasterSource(str(path)), settings.discovery, settings.tiling)
    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, TILE_PX, settings.tiling)
    band = new_band(info)
    ordered = {b: [RasterPlan(info, block, 0) for block in
                   column_bands(raster_blocks(info, zoom), band if b == "yes" else 0)]
               for b in args.bands}
    plans = next(iter(ordered.values()))
    print(f"{path.name}: {info.width} x {info.height} px, {sum(b.block.count for b in plans)} "
          f"tiles at zoom {zoom} ({time.perf_counter() - t:.1f} s to make); {args.workers} "
          f"readers, {args.read_batch} tiles a call; "
          + (f"stored in blocks: bands of {band} tiles" if band else "stored in strips"))

    if "yes" in args.device_thumbnails:
        print(jpeg_cost(plans, settings))
    rows = []
    for rnd in range(1, args.rounds + 1):
        for b, defer, thumbs in itertools.product(args.bands, args.defer,
                                                  args.device_thumbnails):
            if defer == "no" and thumbs == "yes":
                continue
            got = run_once(ordered[b], settings, defer == "yes", thumbs == "yes")
            name = f"defer {defer}" + (f", device thumbs {thumbs}" if defer == "yes" else "")
            name += f", bands {b}" if len(args.bands) > 1 else ""
            rows.append((rnd, name, got))
            print(f"round {rnd}, {name}: {got['tiles/s']:,.0f} tiles/s, "
                  f"readers {got['user ms'] + got['system ms']:.3f} ms CPU a tile", flush=True)
    print("\n| round | readers | tiles/s | user ms / tile | system ms / tile | CPU ms / tile "
          "| worker s / tile (ms) | page faults / tile |")
    print("|---|---|---|---|---|---|---|---|")
    for rnd, name, g in rows:
        print(f"| {rnd} | {name} | {g['tiles/s']:,.0f} | {g['user ms']:.3f} | "
              f"{g['system ms']:.3f} | {g['user ms'] + g['system ms']:.3f} | "
              f"{g['worker ms']:.3f} | {g['faults']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
