"""The fast warp's plain tiles resampled on the encoder's device (job.warp_on) against the
readers' warp (issues 12 and 19): what a reader process spends per tile either way, what
the device spends, and how far the tiles are apart. Also JPEG thumbnails on the device
(torchvision's nvJPEG on CUDA), the next step considered.

On the tiles of a synthetic 5 m UTM raster (smooth patterns + noise, as bench/read.py) at
224 px, 4 m target (upsampled: most tiles are one plain piece), read as the job reads them
(TileDataset strips collated into batches):

    python bench/device_warp.py                       # on the GPU when there is one
    python bench/device_warp.py --device cpu --tiles 1024 [--dtype uint16]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.read import best  # noqa: E402
from indexer.config import load_settings  # noqa: E402
from indexer.job.device_warp import resample_deferred  # noqa: E402
from indexer.job.read import (  # noqa: E402
    RasterPlan,
    StripBatches,
    TileBatch,
    TileDataset,
    collate,
)
from indexer.rasters.grid import choose_zoom, raster_blocks  # noqa: E402
from indexer.rasters.inspect import inspect_raster  # noqa: E402
from indexer.rasters.sources import RasterSource  # noqa: E402
from tests.helpers import OFFLINE_CONFIG, patterned_raster  # noqa: E402


def batches(ds: TileDataset, size: int) -> list:
    return [collate([ds[i] for i in group]) for group in StripBatches(ds, size)]


def fullest(made: list[TileBatch], dev: torch.device) -> TileBatch:
    """The batch with the most deferred tiles; on CUDA in page-locked memory, as the job's
    readers hand batches over."""
    b = max(made, key=lambda b: 0 if b.deferred is None else len(b.deferred))
    if dev.type != "cuda":
        return b
    return dataclasses.replace(b, rgb=b.rgb.pin_memory(), crops=b.crops.pin_memory())


def resampled(batch: TileBatch, dev: torch.device,
              thumbs: tuple[int, int] | None = None) -> TileBatch:
    """resample_deferred on a copy of `batch`, the device's work done (the thumbnails' JPEGs,
    on threads of the CPU, are not waited for)."""
    out = resample_deferred(dataclasses.replace(batch, thumbs=list(batch.thumbs)), dev, thumbs)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiles", type=int, default=4096, help="about this many tiles")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", choices=("uint8", "uint16"), default="uint8",
                    help="the raster's type (uint16: x150 + 400, scaled by its percentiles)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    base = load_settings(OFFLINE_CONFIG)
    tiling = dataclasses.replace(base.tiling, warp="fast", target_gsd_m=4.0)
    job = dataclasses.replace(base.job, batch_size=args.batch, read_batch=args.batch)
    px = 224
    side = int(np.sqrt(args.tiles) * px * 4.0 / 5.0) + 256
    with tempfile.TemporaryDirectory() as tmp:
        path = patterned_raster(Path(tmp) / "utm5m.tif", side)
        if args.dtype == "uint16":
            import rasterio

            with rasterio.open(path) as src:
                profile, data = src.profile, src.read()
            path = Path(tmp) / "utm5m-16.tif"
            with rasterio.open(path, "w", **{**profile, "dtype": "uint16"}) as dst:
                dst.write(data.astype(np.uint16) * 150 + 400)
        info = inspect_raster(RasterSource(str(path)), base.discovery, tiling)
        zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, tiling)
        plans = [RasterPlan(info, b, 0) for b in raster_blocks(info, zoom)]
        ref_ds = TileDataset(plans, px, tiling, job)
        dev_ds = TileDataset(plans, px, tiling, job, defer=True)
        ref_ds[0], dev_ds[0]  # datasets opened
        # A reader's work per tile, one process: read, warp (or cut), thumbnails, collate.
        times = {}
        for name, ds in (("readers", ref_ds), ("device", dev_ds)) * 2:
            t0 = time.perf_counter()
            got = batches(ds, args.batch)
            times[name] = min(times.get(name, 1e9), time.perf_counter() - t0)
            if name == "readers":
                ref = got
            else:
                mine = got
        total = sum(len(b) for b in ref)
        kept = sum(len(b.pixel_row[b.pixel_row >= 0]) for b in ref)
        deferred = sum(int(b.deferred.sum()) for b in mine if b.deferred is not None)
        crop = max(b.crops.shape[-1] for b in mine if b.crops is not None)
        nbytes = max(b.crops.element_size() for b in mine if b.crops is not None)
        name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
        print(f"device {dev} ({name}); zoom {zoom}, {total} tiles of {px} px, {kept} kept, "
              f"{deferred} of them deferred ({deferred / kept:.0%}); crops {crop} px: "
              f"{crop * crop * nbytes / (px * px):.2f}x a tile's bytes")
        r, d = times["readers"] / total * 1e3, times["device"] / total * 1e3
        print(f"a reader's work per tile (read, warp or cut, thumbnails, collate; one "
              f"process): readers' warp {r:.3f} ms, deferring {d:.3f} ms ({r / d:.2f}x)")

        # Agreement: the batches made whole on the device against the readers' batches.
        diffs = []
        for a, b in zip(ref, mine, strict=True):
            b = resample_deferred(dataclasses.replace(b), dev)
            diffs.append(np.abs(a.rgb.numpy().astype(np.int16)
                                - b.rgb.cpu().numpy().astype(np.int16)).ravel())
        diff = np.concatenate(diffs)
        print(f"device's tiles vs the readers': mean |diff| {diff.mean():.4f} grey levels, "
              f"max {diff.max()}, pixels off by more than 1: {(diff > 1).mean():.4%}")

        # The device's time per batch: copies from page-locked memory and the warp.
        full = fullest(mine, dev)

        def once():
            return resampled(full, dev)

        tiles = once().rgb
        t = best(once, args.repeat)
        n = len(full.deferred)
        print(f"the device's part, batch of {n} ({int(full.deferred.sum())} deferred), "
              f"copies included: {t / n * 1e3:.4f} ms per tile ({n / t:,.0f} tiles/s)")

        # The job's default on a GPU: the deferred tiles' thumbnails resampled there too
        # (job.thumbnails_on), from the same crops.
        thumbs_at = (job.thumbnail_size, job.thumbnail_quality)
        dt_ds = TileDataset(plans, px, tiling, job, defer=True, device_thumbs=True)
        whole = fullest(batches(dt_ds, args.batch), dev)

        def with_thumbs():
            return resampled(whole, dev, thumbs_at)

        n = len(whole.deferred)
        with_thumbs().thumbnails()
        took = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            made = with_thumbs()
            took.append(time.perf_counter() - t0)
            made.thumbnails()  # the JPEG threads done before the next round
        print(f"the device's part with thumbnails ({job.thumbnail_size} px), batch of {n}: "
              f"{min(took) / n * 1e3:.4f} ms per tile")

        # Thumbnails on the device (not used: the readers make them): a resize, then JPEG.
        size = job.thumbnail_size

        def thumbs():
            th = F.interpolate(tiles.float(), size=(size, size), mode="bilinear",
                               align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return th

        th = thumbs()
        print(f"thumbnails resized on the device: {best(thumbs, args.repeat) / n * 1e3:.4f} "
              "ms per tile")
        try:
            from torchvision.io import encode_jpeg

            def jpeg():
                return [o.cpu() for o in encode_jpeg(list(th), quality=job.thumbnail_quality)]

            jpeg()
            t = best(jpeg, args.repeat)
            print(f"JPEG there (torchvision encode_jpeg, {dev.type}): {t / n * 1e3:.4f} ms per "
                  f"tile ({n / t:,.0f} tiles/s)")
        except (ImportError, RuntimeError) as e:
            print(f"JPEG on the device: not available ({type(e).__name__}: {e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
