"""Remote COGs: the indexing job on the same files read from local disk and over loopback
HTTP (Debian's nginx on 127.0.0.1, Range requests), side by side in one run, and from
nginx's access log the requests and bytes each indexed tile cost, with and without internal
overviews.

    python bench/remote.py                 # no model (the read path's ceiling), 224 px tiles
    python bench/remote.py --model tiny    # the small test model
    python bench/remote.py --sweep         # bytes fetched by 1 or 2 readers per read_batch

Rasters: COGs made from the shared rasters (../shared/data/geotiff) with tests/servers.py's
make_cogs (korea_cog / korea_flat are the same 0.6 m image with and without overviews; its
tiles are ~4x coarser than its pixels), and a synthetic 5 m scene of --side pixels written
as a COG.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio.shutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.index import MODELS, NullEncoder  # noqa: E402
from encoder.model import SatelliteEncoder  # noqa: E402
from indexer.config import load_settings  # noqa: E402
from indexer.job.pipeline import IndexJob  # noqa: E402
from tests.helpers import OFFLINE_CONFIG, make_raster  # noqa: E402
from tests.servers import SERVED, Nginx, make_cogs  # noqa: E402


def synthetic_cog(folder: Path, side: int) -> str:
    """A 5 m UTM scene (smooth fields plus noise: compresses like imagery) as a COG."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:side, 0:side]
    base = (np.sin(xx / 37.0) + np.cos(yy / 53.0)) * 50 + 120
    data = np.stack([base + rng.normal(0, 12, base.shape) + 10 * b for b in range(3)])
    data = np.clip(data, 1, 255).astype("uint8")
    tmp = make_raster(folder / "synthetic_tmp.tif", size=side, res=5.0, data=data)
    rasterio.shutil.copy(tmp, folder / "synthetic_cog.tif", driver="COG", BLOCKSIZE=256,
                         COMPRESS="DEFLATE", OVERVIEW_RESAMPLING="AVERAGE")
    tmp.unlink()
    return "synthetic_cog.tif"


def run(settings, encoder, archives: list[str], index_dir: Path):
    shutil.rmtree(index_dir, ignore_errors=True)
    t0 = time.perf_counter()
    report = IndexJob(index_dir, settings, encoder, progress=False,
                      log=lambda _: None).run(archives)
    return report, time.perf_counter() - t0


def sweep(settings, enc, root: Path, name: str, work: Path) -> int:
    """MB fetched over HTTP for one scene by 1 reader and by 2 readers at several
    job.read_batch values (readers re-fetch the rows at the edges of their calls)."""
    print(f"{name}: {(root / name).stat().st_size / 1e6:.1f} MB file; MB fetched (all "
          "requests) and tiles/s, 224 px tiles, encoder batches of 64")
    with Nginx(root, work / "nginx") as web:
        for workers, read_batch in [(1, 512), (2, 64), (2, 256), (2, 512), (2, 1024)]:
            job = dataclasses.replace(settings.job, workers=workers, read_batch=read_batch)
            web.clear_log()
            rep, s = run(dataclasses.replace(settings, job=job), enc, [f"{web.url}/{name}"],
                         work / "idx")
            mb = sum(r["bytes"] for r in web.log()) / 1e6
            print(f"readers {workers}  read_batch {read_batch:>5}: {mb:7.1f} MB  "
                  f"{rep.tiles_written / s:6.0f} tiles/s")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="null")
    p.add_argument("--repeats", type=int, default=5, help="runs per case (median reported)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--side", type=int, default=6000, help="synthetic scene size in pixels")
    p.add_argument("--sweep", action="store_true", help="only the synthetic scene over "
                   "HTTP: bytes fetched with 1 or 2 readers and several read_batch values")
    args = p.parse_args()
    base = load_settings(OFFLINE_CONFIG)
    enc = NullEncoder() if args.model == "null" else SatelliteEncoder(
        dataclasses.replace(MODELS[args.model], device="auto"))
    settings = dataclasses.replace(
        base, job=dataclasses.replace(base.job, workers=args.workers),
        store=dataclasses.replace(base.store, ivf_min_vectors=10**9))
    work = Path(tempfile.mkdtemp(prefix="satfind-bench-remote-"))
    try:
        root = make_cogs(work / "www")
        names = [synthetic_cog(root, args.side), *sorted(SERVED)]
        if args.sweep:
            return sweep(settings, enc, root, names[0], work)
        print(f"model {args.model}, {enc.image_size} px tiles, {args.workers} reader "
              f"processes, median of {args.repeats} runs; nginx on 127.0.0.1")
        print(f"{'raster':<22}{'MB':>7}{'ovr':>5}{'tiles':>7}{'local t/s':>11}"
              f"{'http t/s':>10}{'http/local':>11}{'req/tile':>10}{'KB/tile':>9}"
              f"{'read/file':>10}")
        with Nginx(root, work / "nginx") as web:
            for name in names:
                with rasterio.open(root / name) as src:
                    ovr = len(src.overviews(1))
                size = (root / name).stat().st_size
                local, far, logs = [], [], []
                tiles = 0
                for _ in range(args.repeats):
                    rep, s = run(settings, enc, [str(root / name)], work / "idx")
                    local.append(rep.tiles_written / s)
                    web.clear_log()
                    rep2, s2 = run(settings, enc, [f"{web.url}/{name}"], work / "idx")
                    far.append(rep2.tiles_written / s2)
                    logs.append(web.log())
                    tiles = rep2.tiles_written
                    assert rep.tiles_written == rep2.tiles_written and not rep2.problems
                log = logs[-1]
                nbytes = sum(r["bytes"] for r in log)
                lo, hi = statistics.median(local), statistics.median(far)
                print(f"{name:<22}{size / 1e6:>7.2f}{ovr:>5}{tiles:>7}{lo:>11.0f}{hi:>10.0f}"
                      f"{hi / lo:>11.2f}{len(log) / tiles:>10.2f}{nbytes / tiles / 1e3:>9.1f}"
                      f"{nbytes / size:>10.2f}")
        print("req/tile, KB/tile: every request of the HTTP run (HEAD for the identity, the "
              "header, inspection, tiles) per tile written; read/file: bytes read / file size")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
