"""What one commit costs as the index grows: the store writes only what a commit adds.

Grows one index (512-d synthetic embeddings, default store settings: Flat, then IVF-PQ
trained at store.ivf_min_vectors and re-trained at 4x growth) to each size in --sizes with
--grow tiles per commit, and at each size times --repeats commits of --commit tiles
(2,048: the job's default commit_every). Side by side at the same size, it times what a
format-1 commit did on top (serialising the whole FAISS index and writing it durably).

    python bench/commit.py                                   # 100k, 1M, 5M
    python bench/commit.py --sizes 20000,100000 --repeats 3  # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic import EmbeddingWorld  # noqa: E402
from encoder.identity import EncoderIdentity  # noqa: E402
from indexer.config import StoreSettings  # noqa: E402
from indexer.store.layout import atomic_write_bytes  # noqa: E402
from indexer.store.writer import IndexWriter  # noqa: E402
from tests.helpers import mark_complete, tile_rows  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000,5000000")
    ap.add_argument("--commit", type=int, default=2048)
    ap.add_argument("--grow", type=int, default=131072, help="tiles per commit while growing")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dir", default=None, help="where to build (default: a temp folder)")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    world = EmbeddingWorld(dim=a.dim)
    ident = EncoderIdentity("bench", "c" * 64, "w" * 64, a.dim, 224)
    root = Path(a.dir or tempfile.mkdtemp(prefix="satfind-commit-"))
    d = root / "idx"
    print(f"# bench/commit.py on {os.cpu_count()} cores; index in {d}")
    print(f"| tiles | commit of {a.commit} p50 ms | max ms | of which ANN encode ms | "
          "format-1 whole-index write ms | growth commits: s per 100k tiles |")
    print("|---|---|---|---|---|---|")
    results, seed, n = {}, 0, 0
    grow_time, grown = 0.0, 0
    try:
        with IndexWriter(d, ident, StoreSettings()) as w:
            for size in sizes:
                grow_time, grown = 0.0, 0
                while n < size:
                    step = min(a.grow, size - n)
                    seed += 1
                    w.add(tile_rows(step, f"g{seed}", n), world.sample(step, seed),
                          [b"j"] * step)
                    mark_complete(w, f"g{seed}", step)
                    t = time.perf_counter()
                    w.commit()
                    grow_time += time.perf_counter() - t
                    grown += step
                    n += step
                times, encodes = [], []
                for _ in range(a.repeats):
                    seed += 1
                    w.add(tile_rows(a.commit, f"c{seed}", n), world.sample(a.commit, seed),
                          [b"j"] * a.commit)
                    mark_complete(w, f"c{seed}", a.commit)
                    t = time.perf_counter()
                    w.commit()
                    times.append(time.perf_counter() - t)
                    n += a.commit
                    t = time.perf_counter()  # what the commit spent encoding, measured again
                    w.index.encode(world.sample(a.commit, seed))
                    encodes.append(time.perf_counter() - t)
                t = time.perf_counter()
                atomic_write_bytes(root / "whole.faiss", w.index.to_bytes())
                whole = time.perf_counter() - t
                (root / "whole.faiss").unlink()
                p50 = statistics.median(times)
                per100k = grow_time / max(grown, 1) * 1e5
                enc = statistics.median(encodes)
                results[size] = (p50, enc)
                print(f"| {n:,} | {p50 * 1e3:.1f} | {max(times) * 1e3:.1f} | {enc * 1e3:.1f} | "
                      f"{whole * 1e3:.0f} | {per100k:.1f} |", flush=True)
            print(f"\nindex: {w.m.index.chosen}; {w.m.index.factory}")
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if len(sizes) > 1:
        (base, base_enc) = results[sizes[0]]
        for s in sizes[1:]:
            p50, enc = results[s]
            print(f"commit p50 at {s:,} / at {sizes[0]:,}: {p50 / base:.2f} (the ANN encode of "
                  f"the same tiles, timed apart: {enc / base_enc:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
