"""Search benchmark: the project's store (IVF-PQ + exact float16 re-rank, through the
engine's own `search_vector` path) against exact search (FAISS Flat, numpy brute force),
measured side by side in one run.

    python bench/search.py                 # 1,000,000 synthetic 512-d vectors
    python bench/search.py --n 100000      # quicker
    python bench/search.py --index DIR     # the real vectors of an index (held-in queries)

Prints: build time, resident bytes per vector, recall@10 against exact, single-query
p50/p99, batch queries/s; an nprobe x re-rank-depth sweep; filtered search at ~1 % (bbox)
and ~30 % (time range) selectivity. Results also go to OUT/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from synthetic import EmbeddingWorld, rows_from_columns, tile_columns  # noqa: E402

from encoder.identity import EncoderIdentity  # noqa: E402
from indexer.config import Settings, StoreSettings  # noqa: E402
from indexer.store.tiles import Filters  # noqa: E402
from indexer.store.writer import IndexWriter  # noqa: E402
from search.engine import SearchEngine  # noqa: E402
from search.settings import ServeConfig  # noqa: E402
from tests.helpers import snapshot_sql  # noqa: E402


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def pct(a, q) -> float:
    return float(np.percentile(np.asarray(a) * 1000, q))


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000):
    """Brute force top-k by inner product, chunked over the base (float32 BLAS)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for s in range(0, len(base), chunk):
        sc = queries @ base[s:s + chunk].T
        top = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + s], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    return best_i


def recall(found: list[np.ndarray], truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth,
                                                                            strict=True)]))


def timed_queries(fn, queries) -> tuple[list, list[float]]:
    out, lat = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        lat.append(time.perf_counter() - t0)
    return out, lat


def build_synthetic(args, work: Path):
    world = EmbeddingWorld(dim=args.dim, seed=0)
    t0 = time.perf_counter()
    base = world.sample(args.n, seed=1)
    queries = world.sample(args.queries, seed=2)
    print(f"generated {args.n} x {args.dim} vectors in {time.perf_counter() - t0:.1f} s",
          flush=True)
    cols = tile_columns(args.n, seed=3)
    ident = EncoderIdentity("synthetic", "c" * 64, "w" * 64, args.dim, 224)
    if args.encoder_config:  # stamp the index as if this encoder had embedded the tiles,
        from encoder.model import SatelliteEncoder  # so satfind-serve can open it
        from indexer.config import load_settings

        ident = SatelliteEncoder(load_settings(args.encoder_config).encoder).identity
        if ident.embed_dim != args.dim:
            raise SystemExit(f"--encoder-config gives {ident.embed_dim}-d, not --dim {args.dim}")
    store = StoreSettings(ivf_min_vectors=min(50_000, args.n), nlist=args.nlist,
                          pq_m=args.pq_m)
    idx = work / "index"
    shutil.rmtree(idx, ignore_errors=True)
    t0 = time.perf_counter()
    with IndexWriter(idx, ident, store) as w:
        step = 250_000
        for s in range(0, args.n, step):
            e = min(args.n, s + step)
            w.add(rows_from_columns(cols, s, e), base[s:e], [b""] * (e - s))
        t_rows = time.perf_counter() - t0
        w.commit()  # one commit: trains IVF-PQ on this data, adds everything, writes files
    build_s = time.perf_counter() - t0
    return base, queries, idx, ident, build_s, t_rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--index", help="benchmark the real vectors of this index instead")
    p.add_argument("--nlist", type=int, default=0, help="0 = the store's default")
    p.add_argument("--pq-m", type=int, default=0, help="0 = the store's default (dim/8)")
    p.add_argument("--nprobe", default="8,16,32")
    p.add_argument("--depth", default="100,200,400,800")
    p.add_argument("--flat-queries", type=int, default=50,
                   help="single queries timed on FAISS Flat / numpy (each scans everything)")
    p.add_argument("--out", default="/tmp/satfind-bench-search")
    p.add_argument("--encoder-config", help="stamp the synthetic index with this config's "
                   "encoder identity (for serving it with bench/api_load.py)")
    p.add_argument("--build-only", action="store_true", help="build the index and stop")
    args = p.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": os.uname().nodename, "cpus": os.cpu_count(),
                 "date": datetime.now(UTC).isoformat(timespec="seconds"),
                 "faiss_threads": faiss.omp_get_max_threads()}

    if args.index:
        from indexer.store.snapshot import IndexSnapshot

        snap = IndexSnapshot.open(args.index)
        ids = snap.tiles(["id"])["id"].to_numpy()
        base = np.zeros((snap.next_id, snap.dim), dtype=np.float32)
        base[ids] = snap.get_vectors(ids)
        rng = np.random.default_rng(0)
        queries = base[rng.choice(ids, min(args.queries, len(ids)), replace=False)]
        idx, ident, build_s, t_rows = Path(args.index), snap.identity, float("nan"), 0.0
        args.n = len(ids)
    else:
        base, queries, idx, ident, build_s, t_rows = build_synthetic(args, work)
        if args.build_only:
            print(f"built {idx} in {build_s:.1f} s")
            return 0
    res.update(n=args.n, dim=int(base.shape[1]), queries=len(queries))

    # --- the project's store, through the engine -----------------------------------------
    before = rss_anon()
    stub = SimpleNamespace(identity=ident, dim=int(base.shape[1]), image_size=224)
    eng = SearchEngine(idx, ServeConfig(Settings()), encoder=stub)
    engine_rss = rss_anon() - before
    snap = eng.snapshot
    factory = snap.manifest.index.factory
    index_bytes = sum(len(seg.to_bytes()) for seg in snap.segments)
    res["store"] = {"factory": factory, "build_s": build_s, "rows_s": t_rows,
                    "index_bytes_per_vector": index_bytes / args.n,
                    "engine_rss_bytes_per_vector": engine_rss / args.n}
    print(f"store: {factory}, build {build_s:.1f} s (rows {t_rows:.1f} s); vector "
          f"index {index_bytes / args.n:.1f} B/vector resident; whole engine incl. metadata "
          f"table {engine_rss / args.n:.1f} B/vector (float16 copies memory-mapped)", flush=True)

    truth = exact_topk(base, queries, 10)
    k = 10
    default = eng.search_settings
    # First pass: cold page tables for the memory-mapped float16 copies (a fresh server);
    # second pass over the same queries: warm (a server that has been answering a while).
    found, cold = timed_queries(lambda q: eng.search_vector(q, k)[0], queries)
    found, lat = timed_queries(lambda q: eng.search_vector(q, k)[0], queries)
    ours = {"recall@10": recall(found, truth), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "cold_p50_ms": pct(cold, 50), "cold_p99_ms": pct(cold, 99),
            "nprobe": default.nprobe, "rerank_depth": default.rerank_depth}
    t0 = time.perf_counter()
    _, cand = snap.search(queries, max(k, default.rerank_depth), nprobe=default.nprobe)
    for q, row in zip(queries, cand, strict=True):
        SearchEngine._exact(snap, q, row[row >= 0], k)
    ours["batch_qps"] = len(queries) / (time.perf_counter() - t0)

    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    sub = queries[: args.flat_queries]
    _, flat_lat = timed_queries(lambda q: flat.search(q[None], k)[1][0], sub)
    t0 = time.perf_counter()
    flat.search(queries, k)
    flat_qps = len(queries) / (time.perf_counter() - t0)
    _, np_lat = timed_queries(lambda q: np.argpartition(-(base @ q), k)[:k], sub)
    t0 = time.perf_counter()
    exact_topk(base, queries, k)
    np_qps = len(queries) / (time.perf_counter() - t0)
    flat.reset()  # free its copy of the vectors
    res["unfiltered"] = {
        "ours": ours,
        "faiss_flat": {"p50_ms": pct(flat_lat, 50), "p99_ms": pct(flat_lat, 99),
                       "batch_qps": flat_qps, "recall@10": 1.0},
        "numpy": {"p50_ms": pct(np_lat, 50), "p99_ms": pct(np_lat, 99), "batch_qps": np_qps,
                  "recall@10": 1.0},
    }
    speedup = pct(flat_lat, 50) / ours["p50_ms"]
    print(f"\nunfiltered, k=10, {len(queries)} queries (Flat/numpy single-query timed on "
          f"{len(sub)})")
    print(f"{'method':<34} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch q/s':>10}")
    print(f"{'store (IVF-PQ + re-rank, engine)':<34} {ours['recall@10']:>9.4f} "
          f"{ours['p50_ms']:>8.3f} {ours['p99_ms']:>8.3f} {ours['batch_qps']:>10.1f}")
    for name, r in (("FAISS Flat (exact)", res["unfiltered"]["faiss_flat"]),
                    ("numpy brute force (exact)", res["unfiltered"]["numpy"])):
        print(f"{name:<34} {1.0:>9.4f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
              f"{r['batch_qps']:>10.1f}")
    print(f"store p50 is {speedup:.0f}x faster than FAISS Flat in this run (first, cold pass: "
          f"p50 {ours['cold_p50_ms']:.3f} ms, p99 {ours['cold_p99_ms']:.3f} ms)", flush=True)
    res["unfiltered"]["speedup_vs_flat_p50"] = speedup

    # --- sweep ---------------------------------------------------------------------------
    sweep = []
    sq, st = queries[:300], truth[:300]
    if factory != "Flat":
        print(f"\nsweep on {len(sq)} queries: recall@10 / p50 ms")
        depths = [int(d) for d in args.depth.split(",")]
        print(f"{'nprobe':>6} " + " ".join(f"{'depth ' + str(d):>16}" for d in depths))
        for nprobe in [int(x) for x in args.nprobe.split(",")]:
            cells = []
            for depth in depths:
                eng.search_settings = dataclasses.replace(default, nprobe=nprobe,
                                                          rerank_depth=depth)
                f, lt = timed_queries(lambda q: eng.search_vector(q, k)[0], sq)
                r = {"nprobe": nprobe, "depth": depth, "recall@10": recall(f, st),
                     "p50_ms": pct(lt, 50), "p99_ms": pct(lt, 99)}
                sweep.append(r)
                cells.append(f"{r['recall@10']:.3f} / {r['p50_ms']:.2f}")
            print(f"{nprobe:>6} " + " ".join(f"{c:>16}" for c in cells), flush=True)
        eng.search_settings = default
    res["sweep"] = sweep

    # --- filtered ------------------------------------------------------------------------
    res["filtered"] = {}
    if not args.index:
        print("\nfiltered, k=10")
        print(f"{'filter':<26} {'kept':>8} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8}")
        filters = {
            "bbox ~0.1%": Filters(bbox=(0.0, 40.0, 0.3, 40.3)),
            "bbox ~1%": Filters(bbox=(0.0, 40.0, 1.0, 41.0)),
            "time range ~30%": Filters(start=datetime(2018, 1, 1, tzinfo=UTC),
                                       end=datetime(2019, 7, 1, tzinfo=UTC)),
        }
        for name, f in filters.items():
            where, params = f.sql()
            keep = snapshot_sql(snap, f"SELECT id FROM tiles WHERE {where}",
                                params)["id"].to_numpy()
            fq = queries[:300]
            ft = keep[exact_topk(base[keep], fq, k)]
            found, lat = timed_queries(lambda q, f=f: eng.search_vector(q, k, f)[0], fq)
            r = {"kept_fraction": len(keep) / args.n, "recall@10": recall(found, ft),
                 "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
            res["filtered"][name] = r
            print(f"{name:<26} {r['kept_fraction']:>8.3f} {r['recall@10']:>9.4f} "
                  f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}", flush=True)

    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"\nresults: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
