"""What a running server spends picking up a commit that removes a source and adds one:
the snapshot and tile table changed by the commit's tombstones and new parts, against both
re-opened / rebuilt whole (what the server did before), and the query cost afterwards.

Builds one index (512-d synthetic embeddings, default store settings) of --n tiles in
sources of --source tiles, then --repeats times commits "remove one source, add one" and
times, from the same older snapshot, the server's pick-up (`IndexSnapshot.refreshed()`:
the first ANN segment kept, the removed ids searched around; `TileTable.changed`) and the
whole way (`IndexSnapshot.open` with the same metadata cache, `TileTable` of every row),
each split into the snapshot and the table's work; then unfiltered top-10 queries on both.

    python bench/reload.py                   # 1M tiles
    python bench/reload.py --n 200000        # a quick look
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

import numpy as np  # noqa: E402

from bench.synthetic import EmbeddingWorld  # noqa: E402
from encoder.identity import EncoderIdentity  # noqa: E402
from indexer.config import StoreSettings  # noqa: E402
from indexer.store.snapshot import IndexSnapshot  # noqa: E402
from indexer.store.tiles import TileTable  # noqa: E402
from indexer.store.writer import IndexWriter  # noqa: E402
from search.engine import Loaded  # noqa: E402
from tests.helpers import mark_complete, tile_rows  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--source", type=int, default=2048, help="tiles per source (= commit)")
    ap.add_argument("--grow", type=int, default=131072, help="tiles per commit while building")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dir", default=None, help="where to build (default: a temp folder)")
    a = ap.parse_args()
    world = EmbeddingWorld(dim=a.dim)
    ident = EncoderIdentity("bench", "c" * 64, "w" * 64, a.dim, 224)
    root = Path(a.dir or tempfile.mkdtemp(prefix="satfind-reload-"))
    d = root / "idx"
    print(f"# bench/reload.py on {os.cpu_count()} cores; index in {d}")
    rows = {"incremental": [], "whole (before)": []}
    split = {"incremental": [], "whole (before)": []}
    query = {"incremental": [], "whole (before)": []}
    found = {}
    try:
        with IndexWriter(d, ident, StoreSettings()) as w:
            n, seed, keys = 0, 0, []

            def add_source() -> None:  # a new source of a.source tiles, ids from n on
                nonlocal n, seed
                seed += 1
                key = f"s{seed}"
                w.add(tile_rows(a.source, key, n), world.sample(a.source, seed),
                      [b"j"] * a.source)
                mark_complete(w, key, a.source)
                keys.append(key)
                n += a.source

            t0 = time.perf_counter()
            while n < a.n:  # sources of a.source tiles, committed a.grow tiles at a time
                for _ in range(max(1, min(a.grow, a.n - n) // a.source)):
                    add_source()
                w.commit()
            print(f"built {n:,} tiles in {time.perf_counter() - t0:.0f} s "
                  f"({w.m.index.factory})", flush=True)
            for r in range(a.repeats):
                older = Loaded(IndexSnapshot.open(d))
                w.remove(keys.pop(r * 7 % len(keys)))  # an old source, spread over the ids
                add_source()
                w.commit()
                for way in (("incremental", "whole (before)") if r % 2 == 0
                            else ("whole (before)", "incremental")):
                    t = time.perf_counter()
                    snap = (older.snap.refreshed() if way == "incremental" else
                            IndexSnapshot.open(d, part_cache=older.snap._part_cache))
                    t_snap = time.perf_counter() - t
                    if way == "incremental":
                        tiles = older.tiles.changed(snap.part_rows(),
                                                    *snap.changes_since(older.snap),
                                                    snap.next_id)
                    else:
                        tiles = TileTable(snap.part_rows(), snap.next_id)
                    total = time.perf_counter() - t
                    rows[way].append(total)
                    split[way].append((t_snap, total - t_snap))
                    assert len(tiles) == len(snap.tiles(["id"])) == snap.ntotal
                    q = world.sample(64, 10_000 + r)
                    snap.search(q[:1], 10)  # warm
                    lat = []
                    for v in q:
                        t = time.perf_counter()
                        snap.search(v, 10)
                        lat.append(time.perf_counter() - t)
                    query[way].append(statistics.median(lat))
                    found[way] = snap.search(q, 10)[1]
                np.testing.assert_array_equal(found["incremental"], found["whole (before)"])
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{a.repeats} commits, each removing a {a.source}-tile source and adding one, "
          f"on {n:,} tiles; ms")
    print("| pick-up | p50 | max | of which snapshot p50 | of which table p50 | "
          "then: query p50 ms (top-10, unfiltered) |")
    print("|---|---|---|---|---|---|")
    for way in rows:
        print(f"| {way} | {statistics.median(rows[way]) * 1e3:.0f} | "
              f"{max(rows[way]) * 1e3:.0f} | "
              f"{statistics.median(s for s, _ in split[way]) * 1e3:.0f} | "
              f"{statistics.median(t for _, t in split[way]) * 1e3:.0f} | "
              f"{statistics.median(query[way]) * 1e3:.2f} |")
    inc, whole = (statistics.median(t for _, t in split[w]) for w in rows)
    pick = statistics.median(rows["whole (before)"]) / statistics.median(rows["incremental"])
    print(f"table work, whole / incremental: {whole / inc:.1f}x; pick-up, whole / "
          f"incremental: {pick:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
