"""The plan before the first tile. Its identity step for local rasters: content hashes of N
files one at a time against HASH_THREADS at a time, same files, same run (they sit in the
page cache after the first pass; a cold disk is slower, and gains from parallel reads depend
on it). With --urls: its inspection of N remote COGs (plan.inspected), served by Debian's
nginx on 127.0.0.1 behind a proxy that holds each answer --delay-ms (a network's round
trip), with remote.stat_workers 1 and more at once, alternated.

    python bench/plan.py                       # 8 files of 256 MB
    python bench/plan.py --files 16 --mb 64 --threads 1 2 4 8
    python bench/plan.py --urls 48 --delay-ms 50 --threads 1 8 16
    python bench/plan.py --local 48 --threads 1 2 4    # local rasters' inspection

With --local: plan.inspected over N local rasters (hard links to one file, in the page
cache after the first pass) of each of two kinds, an 8,000 px DEFLATE COG with overviews and
a 5 m raster in strips of whole rows without overviews, per plan.LOCAL_INSPECT_THREADS,
alternated.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.config import RemoteSettings, StoreSettings  # noqa: E402
from indexer.job import plan  # noqa: E402
from indexer.rasters.sources import RasterSource  # noqa: E402
from indexer.store.writer import IndexWriter  # noqa: E402
from tests.test_store import IDENT  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--mb", type=int, default=256)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeat", type=int, default=3, help="passes per setting; best kept")
    p.add_argument("--urls", type=int, default=0, help="inspect this many remote COGs "
                   "instead (the shared NAIP scene as a COG under as many names)")
    p.add_argument("--delay-ms", type=float, default=50.0, help="with --urls: each answer "
                   "held this long")
    p.add_argument("--local", type=int, default=0, help="inspect this many local rasters of "
                   "each kind instead")
    p.add_argument("--out", default="/tmp/satfind-bench-plan")
    args = p.parse_args()
    if args.urls:
        return inspect_urls(args)
    if args.local:
        return inspect_local(args)
    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    block = os.urandom(1 << 20)
    paths = []
    for i in range(args.files):
        path = work / f"r{i}.tif"
        with open(path, "wb") as f:
            for _ in range(args.mb):
                f.write(block)
        paths.append(str(path))
    sources = [RasterSource(s) for s in paths]
    total_gb = args.files * args.mb / 1024
    print(f"{args.files} files of {args.mb} MB ({total_gb:.1f} GB), {os.cpu_count()} CPUs")
    with IndexWriter(work / "idx", IDENT, StoreSettings()) as w:
        plan.identify(w, sources, RemoteSettings(), print)  # warm the page cache
        base = None
        for n in args.threads:
            plan.HASH_THREADS = n
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                plan.identify(w, sources, RemoteSettings(), print)
                best = min(best, time.perf_counter() - t0)
            base = base or best
            print(f"HASH_THREADS {n}: {best:.2f} s, {total_gb / best:.2f} GB/s, "
                  f"{base / best:.2f}x one thread")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def timed_inspection(sources: list[RasterSource], settings) -> float:
    """Seconds plan.inspected takes over `sources`; every one must inspect (no problem)."""
    t0 = time.perf_counter()
    got = list(plan.inspected(sources, settings))
    took = time.perf_counter() - t0
    assert not [g for g in got if not hasattr(g, "width")], got
    return took


def inspect_local(args) -> int:
    """plan.inspected over --local local rasters of each kind, per LOCAL_INSPECT_THREADS."""
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling

    from indexer.config import load_settings
    from tests.helpers import OFFLINE_CONFIG, make_raster

    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = np.random.default_rng(0)
    kinds = {}
    n = 8000
    data = rng.integers(0, 64, (3, n, n), dtype=np.uint8) + np.uint8(96)  # compresses ~2x
    cog = make_raster(work / "cog.tif", size=n, res=0.5, data=data, tiled=True,
                      blockxsize=512, blockysize=512, compress="deflate")
    with rasterio.open(cog, "r+") as ds:
        ds.build_overviews([2, 4, 8, 16, 32], Resampling.average)
    kinds["8,000 px DEFLATE COG"] = cog
    kinds["5 m raster in strips"] = make_raster(work / "strips.tif", size=6000,
                                                data=data[:, :6000, :6000])
    settings = load_settings(OFFLINE_CONFIG)
    print(f"{args.local} local rasters of each kind; {os.cpu_count()} CPUs")
    for kind, path in kinds.items():
        sources = []
        for i in range(args.local):
            link = work / f"{path.stem}-{i}.tif"
            link.hardlink_to(path)
            sources.append(RasterSource(str(link)))
        list(plan.inspected(sources[:2], settings))  # the page cache
        base = None
        for rnd in range(1, args.repeat + 1):
            for t in args.threads:
                plan.LOCAL_INSPECT_THREADS = t
                took = timed_inspection(sources, settings)
                base = base or took
                print(f"{kind}, round {rnd}, {t} thread(s): {took:.2f} s, "
                      f"{took / len(sources) * 1e3:.1f} ms a raster, {base / took:.2f}x the "
                      "first", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def inspect_urls(args) -> int:
    """plan.inspected over --urls COG URLs, --delay-ms a request, per remote.stat_workers."""
    from indexer.config import load_settings
    from indexer.rasters import vsi
    from tests.helpers import OFFLINE_CONFIG
    from tests.servers import FaultProxy, Nginx, make_cogs

    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    root = make_cogs(work / "www")  # (needs ../shared/data)
    names = [f"scene-{i}.tif" for i in range(args.urls)]
    for n in names:
        (root / n).hardlink_to(root / "naip_2009_cog.tif")
    settings = load_settings(OFFLINE_CONFIG)
    delay = args.delay_ms / 1000
    print(f"{args.urls} COG URLs, each answer held {args.delay_ms:.0f} ms; {os.cpu_count()} "
          "CPUs")
    with Nginx(root, work / "nginx") as web, \
            FaultProxy(web.port, lambda method, path, rng: ("delay", delay)) as proxy:
        sources = [RasterSource(f"{proxy.url}/{n}") for n in names]
        base = None
        for rnd in range(1, args.repeat + 1):
            for n in args.threads:
                settings = dataclasses.replace(settings, remote=dataclasses.replace(
                    settings.remote, stat_workers=n))
                vsi.before_fork()  # nothing cached from the pass before
                asked = len(proxy.seen)
                took = timed_inspection(sources, settings)
                base = base or took
                print(f"round {rnd}, stat_workers {n}: {took:.2f} s, "
                      f"{took / args.urls * 1e3:.0f} ms a raster, "
                      f"{(len(proxy.seen) - asked) / args.urls:.1f} requests a raster, "
                      f"{base / took:.2f}x the first", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
