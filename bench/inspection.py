"""A compressed raster stored in blocks, without overviews (a tiled GeoTIFF as many archives
ship them): what the job's inspection of it costs before the first tile, and what the whole
job reads, from local disk and over loopback HTTP (Debian's nginx on 127.0.0.1), with the
inspection reading a sample of its blocks (inspect.sampled_blocks, now) or every block
(the decimated read, before), and with the tiles read in column bands of several widths
or whole rows (--bands N ... 0).

    python bench/inspection.py --tiles 3000 --rounds 2                  # both, alternated
    python bench/inspection.py --inspect sample --bands 16 32 64 0 --where http --workers 6

The raster: ../shared/data's 5 m NAIP scene mirrored to size (`--pixels real`, as
bench/readers.py) or uniform noise, stored as bench/index.py's `--layout` (deflate: 512 px
blocks, DEFLATE, predictor 2). No model (`--model null`): the read path's ceiling. Bytes
fetched over HTTP come from nginx's access log.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import indexer.job.plan as plan  # noqa: E402
import indexer.rasters.inspect as inspect_module  # noqa: E402
from bench.index import LAYOUTS, NullEncoder  # noqa: E402
from bench.readers import raster  # noqa: E402
from bench.timeline import _replace  # noqa: E402
from indexer.config import load_settings  # noqa: E402
from indexer.job.pipeline import IndexJob  # noqa: E402
from indexer.rasters import vsi  # noqa: E402
from indexer.rasters.inspect import inspect_raster  # noqa: E402
from indexer.rasters.sources import RasterSource  # noqa: E402
from tests.helpers import OFFLINE_CONFIG  # noqa: E402
from tests.servers import Nginx, nginx_binary  # noqa: E402


def variant(inspect: str, bands: int) -> list:
    """The module constants of a variant replaced; returns the undo callables."""
    undo = [_replace(plan, "BAND_TILES", bands)]
    if inspect == "decimated":
        undo.append(_replace(inspect_module, "sampled_blocks", lambda src: None))
    return undo


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=int, default=3000, help="about this many tiles")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pixels", choices=("noise", "real"), default="real")
    p.add_argument("--layout", choices=sorted(set(LAYOUTS) - {"strips"}), default="deflate")
    p.add_argument("--inspect", choices=("sample", "decimated"), nargs="+",
                   default=["sample", "decimated"])
    p.add_argument("--bands", type=int, nargs="+", default=[plan.BAND_TILES],
                   help="plan.BAND_TILES: column bands this many tiles wide (0: whole rows)")
    p.add_argument("--where", choices=("local", "http"), nargs="+", default=["local", "http"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="/tmp/satfind-bench-inspection")
    args = p.parse_args()
    if "http" in args.where and nginx_binary() is None:
        p.error("nginx is not installed (apt-get install nginx), or use --where local")
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    path = raster(work, args.pixels, args.tiles, True, args.layout)
    www = work / "www"
    shutil.rmtree(www, ignore_errors=True)
    www.mkdir()
    (www / path.name).hardlink_to(path)
    base = load_settings(OFFLINE_CONFIG)
    settings = dataclasses.replace(
        base, tiling=dataclasses.replace(base.tiling, warp="fast"),
        job=dataclasses.replace(base.job, workers=args.workers),
        store=dataclasses.replace(base.store, ivf_min_vectors=10**9))
    size = path.stat().st_size
    print(f"{path.name}: {size / 1e6:.1f} MB, {args.layout}, no overviews; {args.workers} "
          f"readers, null encoder")
    enc = NullEncoder()
    rows = []
    web = Nginx(www, work / "nginx").__enter__() if "http" in args.where else None
    try:
        places = [(w, str(path) if w == "local" else f"{web.url}/{path.name}")
                  for w in args.where]
        for rnd in range(1, args.rounds + 1):
            for (where, url), insp, bands in itertools.product(places, args.inspect,
                                                               args.bands):
                undo = variant(insp, bands)
                try:
                    if where == "http":
                        web.clear_log()
                    t = time.perf_counter()
                    inspect_raster(RasterSource(url), settings.discovery, settings.tiling,
                                   settings.remote)
                    alone = time.perf_counter() - t
                    inspected = (sum(r["bytes"] for r in web.log()) if where == "http"
                                 else None)
                    if where == "http":
                        vsi.before_fork()  # the job starts with GDAL's HTTP cache empty
                        web.clear_log()
                    idx = work / "idx"
                    shutil.rmtree(idx, ignore_errors=True)
                    t = time.perf_counter()
                    rep = IndexJob(idx, settings, enc, progress=False,
                                   log=lambda _: None).run([url])
                    wall = time.perf_counter() - t
                    fetched = sum(r["bytes"] for r in web.log()) if where == "http" else None
                finally:
                    for put_back in reversed(undo):
                        put_back()
                assert not rep.problems, rep.problems
                row = (rnd, where, insp, bands, alone, inspected, rep.stages["plan (main thread)"],
                       wall, rep.tiles_written / wall, fetched)
                rows.append(row)
                print(f"round {rnd}, {where}, inspect {insp}, bands {bands}: inspection "
                      f"{alone:.2f} s, job {wall:.2f} s ({row[-2]:,.0f} tiles/s)", flush=True)
    finally:
        if web is not None:
            web.__exit__(None, None, None)
    print("\n| round | where | inspection | bands | inspection alone s | its MB over HTTP "
          "| job's plan s | job wall s | tiles/s | job's MB over HTTP (x file) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rnd, where, insp, bands, alone, inspected, plan_s, wall, rate, fetched in rows:
        mb = "-" if inspected is None else f"{inspected / 1e6:.1f}"
        job_mb = "-" if fetched is None else f"{fetched / 1e6:.1f} ({fetched / size:.2f})"
        print(f"| {rnd} | {where} | {insp} | {bands} | {alone:.2f} | {mb} | {plan_s:.2f} | "
              f"{wall:.2f} | {rate:,.0f} | {job_mb} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
