"""Indexing throughput: the full job (discover, read, warp, tile, encode, store) against
the encoder alone on pre-loaded tiles, on the same tiles in one run. The ratio says
whether reading or the model is the limit.

    python bench/index.py --model tiny             # small test model: read-bound
    python bench/index.py --model vit-b-16 --tiles 96   # ViT-B-16, random weights: compute-bound

Tiles come from a synthetic 5 m GeoTIFF in UTM (generated, --tiles of them), read exactly
as the job reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from encoder.identity import EncoderSpec  # noqa: E402
from encoder.model import SatelliteEncoder  # noqa: E402
from indexer.config import load_settings  # noqa: E402
from indexer.job.pipeline import IndexJob  # noqa: E402
from indexer.job.read import RasterPlan, TileDataset  # noqa: E402
from indexer.rasters.grid import choose_zoom, raster_blocks  # noqa: E402
from indexer.rasters.inspect import inspect_raster  # noqa: E402
from indexer.rasters.sources import RasterSource  # noqa: E402
from tests.helpers import OFFLINE_CONFIG, make_raster  # noqa: E402

MODELS = {
    "tiny": EncoderSpec(model="satfind-tiny", random_weights=True),
    "vit-b-16": EncoderSpec(model="ViT-B-16", random_weights=True),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--tiles", type=int, default=2000, help="about this many tiles")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=0, help="0 = the config's")
    p.add_argument("--out", default="/tmp/satfind-bench-index")
    args = p.parse_args()
    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    base = load_settings(OFFLINE_CONFIG)
    spec = dataclasses.replace(MODELS[args.model], device="auto")
    t0 = time.perf_counter()
    enc = SatelliteEncoder(spec)
    print(f"model {spec.model}: {enc.image_size} px input, {enc.dim}-d, device {enc.device}, "
          f"built in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    job = dataclasses.replace(base.job, workers=args.workers,
                              batch_size=args.batch_size or base.job.batch_size)
    settings = dataclasses.replace(base, encoder=spec, job=job)

    # A raster that yields about --tiles tiles at this model's tile size (5 m target).
    tile_m = 6.9 * enc.image_size  # tile width at zoom 16, 43.5 N
    side = int(math.sqrt(args.tiles) * tile_m / 5.0)
    raster = make_raster(work / "archive" / "scene.tif", size=side, res=5.0, seed=1)
    info = inspect_raster(RasterSource(str(raster)), settings.discovery, settings.tiling)
    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, enc.image_size, settings.tiling)
    plans = [RasterPlan(info, block, 0) for block in raster_blocks(info, zoom)]
    ds = TileDataset(plans, enc.image_size, settings.tiling, settings.job)
    tiles = range(len(ds))
    t0 = time.perf_counter()
    items = [ds[i] for i in range(len(ds))]
    read_s = time.perf_counter() - t0
    batch = np.stack([it["rgb"] for it in items if it["rgb"] is not None])
    n = len(batch)
    print(f"{len(tiles)} tiles at zoom {zoom}, {n} with data; reading + warping + JPEG in "
          f"one process: {len(tiles) / read_s:.1f} tiles/s")

    enc.encode_images(batch[: min(8, n)])  # warm-up
    bs = settings.job.batch_size
    t0 = time.perf_counter()
    for s in range(0, n, bs):
        enc.encode_images(batch[s:s + bs])
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    enc_rate = n / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    report = IndexJob(work / "idx", settings, enc, progress=False).run([str(raster)])
    job_s = time.perf_counter() - t0
    job_rate = report.tiles_written / job_s
    assert report.tiles_written == n, (report.tiles_written, n)
    print(f"\n{'path':<44} {'tiles/s':>9}")
    print(f"{'encoder only (pre-loaded uint8 tiles)':<44} {enc_rate:>9.1f}")
    print(f"{'full job (read, warp, tile, encode, store)':<44} {job_rate:>9.1f}")
    print(f"full job / encoder only = {job_rate / enc_rate:.2f} "
          f"(workers={args.workers}, batch={bs}, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
