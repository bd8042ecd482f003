"""The plan's identity step for local rasters: content hashes of N files one at a time
against HASH_THREADS at a time, same files, same run (they sit in the page cache after the
first pass; a cold disk is slower, and gains from parallel reads depend on it).

    python bench/plan.py                       # 8 files of 256 MB
    python bench/plan.py --files 16 --mb 64 --threads 1 2 4 8
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--out", default="/tmp/satfind-bench-plan")
    args = p.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
