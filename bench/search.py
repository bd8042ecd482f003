"""Search benchmark: the project's store (IVF-PQ + exact float16 re-rank, through the
engine's own `search_vector` path) against exact search (FAISS Flat, numpy brute force),
measured side by side in one run.

    python bench/search.py                 # 1,000,000 synthetic 512-d vectors
    python bench/search.py --n 100000      # quicker
    python bench/search.py --n 10000000    # 10M: the base is streamed, never held
    python bench/search.py --index DIR     # the real vectors of an index (held-in queries)

Prints: build time and where it goes (generation, rows, commits: IVF training and
re-training, encoding, file writes); the server's open (time, anonymous and file-backed
resident bytes per tile, cold unless --no-cold); recall@10 against exact, single-query
p50/p99, batch queries/s; an nprobe x re-rank-depth sweep; filtered search at ~0.1 % and
~1 % (bbox) and ~30 % (time range) selectivity; an incremental reload (one more commit
picked up by the open engine) against a fresh open. Results also go to OUT/results.json.

The synthetic base is drawn in chunks of GEN_CHUNK vectors, each from its own seed
(`EmbeddingWorld.chunk`), so it is built by streaming (a commit every --commit-every
tiles) and its exact ground truth is one more streaming pass that regenerates it chunk by
chunk. Up to --hold-max tiles the base is also held whole for FAISS Flat / numpy; above,
those are skipped (they need the whole base in memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
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

from exact import TopK, exact_topk  # noqa: E402
from memory import Phases, gib, make_cold, settled, status  # noqa: E402
from store_clock import STEPS, StoreClock  # noqa: E402
from synthetic import AREA, LAYOUTS, EmbeddingWorld, rows_from_columns, tile_columns  # noqa: E402

from encoder.identity import EncoderIdentity  # noqa: E402
from indexer.config import Settings, StoreSettings  # noqa: E402
from indexer.store.tiles import Filters  # noqa: E402
from indexer.store.writer import IndexWriter  # noqa: E402
from search.engine import SearchEngine  # noqa: E402
from search.settings import ServeConfig  # noqa: E402
from tests.helpers import snapshot_sql  # noqa: E402

GEN_CHUNK = 65_536  # vectors per generated chunk: part of the base's definition, keep fixed
SEED_BASE, SEED_QUERIES, SEED_COLS, SEED_NEW = 1, 2, 3, 4
K = 10


def pct(a, q) -> float:
    return float(np.percentile(np.asarray(a) * 1000, q))


def recall(found: list[np.ndarray], truth: np.ndarray, k: int = K) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth,
                                                                            strict=True)]))


def timed_queries(fn, queries) -> tuple[list, list[float]]:
    out, lat = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        lat.append(time.perf_counter() - t0)
    return out, lat


def chunk_count(n: int) -> int:
    return math.ceil(n / GEN_CHUNK)


def base_chunk(world: EmbeddingWorld, n: int, i: int) -> np.ndarray:
    """Chunk i of the synthetic base of n vectors (the same every time it is drawn)."""
    return world.chunk(i, GEN_CHUNK, SEED_BASE, rows=min(GEN_CHUNK, n - i * GEN_CHUNK))


def truth_pass(world: EmbeddingWorld, n: int, queries: np.ndarray, keeps: dict,
               filtered_queries: int, hold: bool, single: int) -> dict:
    """One streaming pass over the regenerated base: exact top-K for every query
    (unfiltered) and for the first `filtered_queries` among each filter's kept ids
    (`keeps`: bool per id). `hold`: also return the base whole. `single`: time that many
    single-query scans (numpy, chunk by chunk) for a brute-force latency at any n."""
    fq = queries[:filtered_queries]
    top = TopK(len(queries), K)
    ftop = {name: TopK(len(fq), K) for name in keeps}
    base = np.empty((n, world.dim), dtype=np.float32) if hold else None
    gen_s = scan_s = filt_s = 0.0
    single_s = np.zeros(single)
    last = time.perf_counter()
    for i in range(chunk_count(n)):
        t0 = time.perf_counter()
        x = base_chunk(world, n, i)
        lo = i * GEN_CHUNK
        ids = np.arange(lo, lo + len(x))
        if base is not None:
            base[lo:lo + len(x)] = x
        t1 = time.perf_counter()
        top.update(queries @ x.T, ids)
        t2 = time.perf_counter()
        for name, keep in keeps.items():
            sel = np.flatnonzero(keep[lo:lo + len(x)])
            if len(sel):
                ftop[name].update(fq @ x[sel].T, ids[sel])
        t3 = time.perf_counter()
        for j in range(single):  # one query at a time, as a brute-force server would
            s0 = time.perf_counter()
            sc = x @ queries[j]
            np.argpartition(sc, len(sc) - K)[len(sc) - K:]
            single_s[j] += time.perf_counter() - s0
        gen_s, scan_s, filt_s = gen_s + t1 - t0, scan_s + t2 - t1, filt_s + t3 - t2
        if time.perf_counter() - last > 60:
            last = time.perf_counter()
            print(f"  truth pass: {lo + len(x):,} / {n:,} ({status()['RssAnon'] / 2**30:.2f} "
                  "GiB anon)", flush=True)
    return {"truth": top.i, "ftruth": {name: t.i for name, t in ftop.items()}, "base": base,
            "gen_s": gen_s, "scan_s": scan_s, "filtered_scan_s": filt_s,
            "single_s": single_s.tolist()}


# --- build -------------------------------------------------------------------------------
def identity_for(args) -> EncoderIdentity:
    ident = EncoderIdentity("synthetic", "c" * 64, "w" * 64, args.dim, 224)
    if args.encoder_config:  # stamp the index as if this encoder had embedded the tiles,
        from encoder.model import SatelliteEncoder  # so satfind-serve can open it
        from indexer.config import load_settings

        ident = SatelliteEncoder(load_settings(args.encoder_config).encoder).identity
        if ident.embed_dim != args.dim:
            raise SystemExit(f"--encoder-config gives {ident.embed_dim}-d, not --dim {args.dim}")
    return ident


def store_settings(args) -> StoreSettings:
    return StoreSettings(ivf_min_vectors=min(50_000, args.n), nlist=args.nlist,
                         pq_m=args.pq_m)


def build_synthetic(args, world: EmbeddingWorld, ident: EncoderIdentity, idx: Path) -> dict:
    """Stream the base into a new index: chunk -> rows -> add -> commit every
    --commit-every tiles. Returns where the time went (the writer's steps timed from
    outside, bench/store_clock.py)."""
    n, every = args.n, args.commit_every
    shutil.rmtree(idx, ignore_errors=True)
    gen_s = add_s = 0.0
    commits, trainings = [], []
    clock = StoreClock()
    t_start = time.perf_counter()
    last = t_start
    with clock.running(), IndexWriter(idx, ident, store_settings(args)) as w:
        pending = 0
        for i in range(chunk_count(n)):
            t0 = time.perf_counter()
            lo = i * GEN_CHUNK
            x = base_chunk(world, n, i)
            cols = tile_columns(len(x), seed=SEED_COLS, chunk=i, first=lo, layout=args.layout)
            gen_s += time.perf_counter() - t0
            s = 0
            while s < len(x):
                e = min(len(x), s + every - pending)
                t0 = time.perf_counter()
                w.add(rows_from_columns(cols, s, e), x[s:e], [b""] * (e - s))
                add_s += time.perf_counter() - t0
                pending += e - s
                s = e
                if pending == every or lo + s == n:
                    before, trained = clock.snapshot(), len(clock.trained_on)
                    t0 = time.perf_counter()
                    w.commit()
                    dt = time.perf_counter() - t0
                    ct = {k: v - before[k] for k, v in clock.snapshot().items()}
                    ct.update(wall_s=dt, ntotal=lo + s)
                    commits.append(ct)
                    if len(clock.trained_on) > trained:
                        info = w.m.index
                        trainings.append({"at": lo + s, "factory": info.factory,
                                          "nlist": info.nlist, "pq_m": info.pq_m,
                                          "trained_on": clock.trained_on[-1],
                                          **{k: ct[k] for k in ("training_s", "train_s",
                                                                "rewrite_s", "wall_s")}})
                        print(f"  commit at {lo + s:,}: trained {info.factory} on "
                              f"{clock.trained_on[-1]:,} vectors: k-means + PQ "
                              f"{ct['train_s']:.1f} s, every code re-encoded "
                              f"{ct['rewrite_s']:.1f} s, training in all "
                              f"{ct['training_s']:.1f} s", flush=True)
                    pending = 0
            if time.perf_counter() - last > 60:
                last = time.perf_counter()
                el = last - t_start
                print(f"  build: {lo + len(x):,} / {n:,} tiles in {el:.0f} s "
                      f"({(lo + len(x)) / el:,.0f} tiles/s), {len(commits)} commits, "
                      f"{status()['RssAnon'] / 2**30:.2f} GiB anon", flush=True)
        t0 = time.perf_counter()
    close_s = time.perf_counter() - t0
    build_s = time.perf_counter() - t_start
    commit_s = sum(c["wall_s"] for c in commits)
    # Does a commit cost what it adds, not the size of the index? Commits without a
    # training, in the first and last tenth of the IVF-PQ era.
    first_ivf = trainings[0]["at"] if trainings else n
    plain = [c for c in commits if c["train_s"] == 0 and c["ntotal"] > first_ivf]
    tenth = max(1, len(plain) // 10)
    growth = ({"first_tenth_mean_s": float(np.mean([c["wall_s"] for c in plain[:tenth]])),
               "last_tenth_mean_s": float(np.mean([c["wall_s"] for c in plain[-tenth:]])),
               "commits": len(plain)} if plain else None)
    return {"build_s": build_s, "gen_s": gen_s, "rows_s": add_s, "commit_s": commit_s,
            "close_s": close_s, "commits": len(commits), "commit_every": every,
            "inside_commits": clock.snapshot(), "trainings": trainings,
            "plain_commit_cost": growth, "per_commit": commits, "layout": args.layout}


def print_build(b: dict, n: int) -> None:
    ins = b["inside_commits"]
    print(f"\nbuild: {n:,} tiles ({b['layout']} layout) in {b['build_s']:.1f} s "
          f"({n / b['build_s']:,.0f} tiles/s), {b['commits']} commits of "
          f"{b['commit_every']:,}")
    rows = [("generating vectors + metadata", b["gen_s"]),
            ("rows -> IndexWriter.add (incl. cell checks)", b["rows_s"]),
            ("commits, all", b["commit_s"])]
    rows += [("  " + what, ins[key]) for key, (_, _, what) in STEPS.items()]
    rows.append(("writer close", b["close_s"]))
    for name, s in rows:
        print(f"  {name:<48} {s:>9.1f} s {100 * s / b['build_s']:>5.1f} %")
    for t in b["trainings"]:
        print(f"  training at {t['at']:>11,}: {t['factory']:<18} on {t['trained_on']:>9,} "
              f"points: k-means + PQ {t['train_s']:.1f} s, re-encode {t['rewrite_s']:.1f} "
              f"s, in all {t['training_s']:.1f} s; commit {t['wall_s']:.1f} s")
    g = b["plain_commit_cost"]
    if g:
        print(f"  commits without training ({g['commits']}): mean "
              f"{g['first_tenth_mean_s'] * 1000:.0f} ms in the first tenth, "
              f"{g['last_tenth_mean_s'] * 1000:.0f} ms in the last")


def sized_box(snap, target: float, n: int) -> Filters:
    """A square box at the centre of the synthetic area, its side bisected (tiles counted
    by DuckDB) until it keeps about `target` of the n tiles (scenes make the count a step
    function of the side: the closest box found)."""
    (w, s, e, nn), best = AREA, None
    cx, cy = (w + e) / 2, (s + nn) / 2
    lo, hi = 0.0, e - w
    for _ in range(16):
        side = (lo + hi) / 2
        f = Filters(bbox=(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        where, params = f.sql()
        kept = snapshot_sql(snap, f"SELECT count(*) AS c FROM tiles WHERE {where}",
                            params)["c"][0].as_py() / n
        if best is None or abs(kept - target) < abs(best[0] - target):
            best = (kept, f)
        if abs(kept / target - 1) < 0.1:
            break
        lo, hi = (side, hi) if kept < target else (lo, side)
    return best[1]


def warm_up(work: Path, ident: EncoderIdentity, stub, args) -> None:
    """Open, query and read rows of a small index of the same kind, so the open measured
    next grows by what its tiles cost, not by the process's first use of Arrow, FAISS or
    numpy (tens of MB, whatever the index)."""
    small = work / "warm-up"
    shutil.rmtree(small, ignore_errors=True)
    m = 2048
    cols = tile_columns(m, seed=SEED_NEW, chunk=1, first=0, layout=args.layout)
    with IndexWriter(small, ident, StoreSettings()) as w:
        w.add(rows_from_columns(cols, 0, m), EmbeddingWorld(dim=args.dim).chunk(1, m, 9),
              [b""] * m)
        w.commit()
    eng = SearchEngine(small, ServeConfig(Settings()), encoder=stub)
    q = eng.snapshot.get_vectors([0])[0]
    for f in (Filters(), Filters(bbox=(0.0, 40.0, 5.0, 45.0)),
              Filters(start=datetime(2019, 1, 1, tzinfo=UTC))):
        ids, _ = eng.search_vector(q, K, f)
        eng.loaded.tiles.rows(ids, ["id", "source", "acquired"])
    del eng
    shutil.rmtree(small, ignore_errors=True)


# --- main --------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--index", help="benchmark the real vectors of this index instead")
    p.add_argument("--nlist", type=int, default=0, help="0 = the store's default")
    p.add_argument("--pq-m", type=int, default=0, help="0 = the store's default (dim/8)")
    p.add_argument("--commit-every", type=int, default=16_384,
                   help="tiles per commit while building")
    p.add_argument("--layout", choices=LAYOUTS, default="scenes",
                   help="scenes: a source's tiles are consecutive ids over one patch at one "
                   "time (what the job writes); random: no id locality (zone maps' worst "
                   "case)")
    p.add_argument("--nprobe", default="8,16,32")
    p.add_argument("--depth", default="100,200,400,800")
    p.add_argument("--filtered-queries", type=int, default=300)
    p.add_argument("--flat-queries", type=int, default=50,
                   help="single queries timed on FAISS Flat / numpy (each scans everything)")
    p.add_argument("--stream-single", type=int, default=5, help="single-query numpy scans "
                   "timed during the streaming truth pass (a brute-force latency at any n)")
    p.add_argument("--hold-max", type=int, default=2_000_000, help="hold the base whole "
                   "(FAISS Flat, numpy in memory) up to this many tiles")
    p.add_argument("--reload-tiles", type=int, default=2048,
                   help="tiles of the extra commit picked up by the open engine (0: skip)")
    p.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True,
                   help="empty the page cache before the engine's open (default: yes)")
    p.add_argument("--out", default="/tmp/satfind-bench-search")
    p.add_argument("--encoder-config", help="stamp the synthetic index with this config's "
                   "encoder identity (for serving it with bench/api_load.py)")
    p.add_argument("--build-only", action="store_true", help="build the index and stop")
    args = p.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    u = os.uname()
    mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    res: dict = {"machine": u.nodename, "uname": " ".join(u), "cpus": os.cpu_count(),
                 "cpu": platform.processor() or u.machine, "mem_total": mem_total,
                 "date": datetime.now(UTC).isoformat(timespec="seconds"),
                 "faiss_threads": faiss.omp_get_max_threads(), "args": vars(args)}
    print(f"{' '.join(u)}; {os.cpu_count()} CPUs, {gib(mem_total)} RAM, FAISS threads "
          f"{faiss.omp_get_max_threads()}; {res['date']}", flush=True)
    phases = Phases()
    world = EmbeddingWorld(dim=args.dim, seed=0)

    # --- the index ----------------------------------------------------------------------
    base = None
    if args.index:
        from indexer.store.snapshot import IndexSnapshot

        snap = IndexSnapshot.open(args.index)
        ids = snap.tiles(["id"])["id"].to_numpy()
        base = np.zeros((snap.next_id, snap.dim), dtype=np.float32)
        base[ids] = snap.get_vectors(ids)
        rng = np.random.default_rng(0)
        queries = base[rng.choice(ids, min(args.queries, len(ids)), replace=False)]
        idx, ident, build = Path(args.index), snap.identity, None
        args.n, args.dim = len(ids), snap.dim
        del snap
    else:
        ident = identity_for(args)
        idx = work / "index"
        queries = world.sample(args.queries, seed=SEED_QUERIES)
        phases.start("build")
        build = build_synthetic(args, world, ident, idx)
        phases.end()
        print_build(build, args.n)
        if args.build_only:
            print(f"built {idx} in {build['build_s']:.1f} s")
            return 0
    n = args.n
    res.update(n=n, dim=args.dim, queries=len(queries))
    if build:
        res["build"] = {k: v for k, v in build.items() if k != "per_commit"}
        (work / "commits.json").write_text(json.dumps(build["per_commit"]))

    # --- the server's open --------------------------------------------------------------
    stub = SimpleNamespace(identity=ident, dim=args.dim, image_size=224)
    warm_up(work, ident, stub, args)  # one-time costs (libraries' first calls) paid first
    how = make_cold(idx) if args.cold else "warm (--no-cold)"
    phases.start("open")
    before = settled()
    t0 = time.perf_counter()
    eng = SearchEngine(idx, ServeConfig(Settings()), encoder=stub)
    open_s = time.perf_counter() - t0
    after = status()
    phases.end()
    snap = eng.snapshot
    info = snap.manifest.index
    factory = info.factory
    phases.start("sizing")  # serialising the index: a transient copy of it
    index_bytes = sum(len(seg.to_bytes()) for seg in snap.segments)
    phases.end()
    anon, filed = after["RssAnon"] - before["RssAnon"], after["RssFile"] - before["RssFile"]
    res["open"] = {"how": how, "open_s": open_s, "rss_anon_bytes_per_tile": anon / n,
                   "rss_file_bytes_per_tile": filed / n, "rss_anon_bytes": anon,
                   "rss_file_bytes": filed, "rss_anon_before": before["RssAnon"],
                   "rss_file_before": before["RssFile"]}
    res["store"] = {"factory": factory, "nlist": info.nlist, "pq_m": info.pq_m,
                    "trained_on": info.trained_on, "trained_at": info.trained_at,
                    "chosen": info.chosen, "parts": len(snap.manifest.parts),
                    "build_s": build["build_s"] if build else float("nan"),
                    "rows_s": build["rows_s"] if build else 0.0,
                    "index_bytes_per_vector": index_bytes / n,
                    "engine_rss_bytes_per_vector": anon / n}
    print(f"\nstore: {factory} (nlist {info.nlist}, PQ m {info.pq_m}; {info.chosen}; "
          f"trained on {info.trained_on} vectors), {len(snap.manifest.parts)} parts")
    print(f"open ({how}): {open_s:.2f} s; RssAnon +{anon / n:.1f} B/tile "
          f"(+{gib(anon)}), RssFile +{filed / n:.1f} B/tile (+{gib(filed)}); vector index "
          f"{index_bytes / n:.1f} B/vector (float16 copies memory-mapped); before the open "
          f"the process held RssAnon {gib(before['RssAnon'])}, RssFile "
          f"{gib(before['RssFile'])}", flush=True)

    # --- exact ground truth ---------------------------------------------------------------
    filters = {
        "bbox ~0.1%": sized_box(snap, 0.001, n),
        "bbox ~1%": sized_box(snap, 0.01, n),
        "time range ~30%": Filters(start=datetime(2018, 1, 1, tzinfo=UTC),
                                   end=datetime(2019, 7, 1, tzinfo=UTC)),
    } if not args.index else {}
    for name, f in filters.items():
        if f.bbox:
            print(f"{name}: bbox {', '.join(f'{v:.4f}' for v in f.bbox)}")
    keeps = {}
    t0 = time.perf_counter()
    for name, f in filters.items():  # the kept ids from DuckDB, independent of the engine
        where, params = f.sql()
        keep = snapshot_sql(snap, f"SELECT id FROM tiles WHERE {where}",
                            params)["id"].to_numpy()
        keeps[name] = np.zeros(snap.next_id, dtype=bool)
        keeps[name][keep] = True
    duck_s = time.perf_counter() - t0
    fq_n = min(args.filtered_queries, len(queries))
    phases.start("truth")
    if base is not None:  # a real index: its base is held
        t0 = time.perf_counter()
        truth = exact_topk(base, queries, K)
        fq = queries[:fq_n]
        ftruth = {name: np.flatnonzero(keep)[exact_topk(base[keep], fq, K)]
                  for name, keep in keeps.items()}
        res["truth"] = {"s": time.perf_counter() - t0, "streamed": False}
    else:
        hold = n <= args.hold_max
        t0 = time.perf_counter()
        tp = truth_pass(world, n, queries, keeps, fq_n, hold, args.stream_single)
        truth_s = time.perf_counter() - t0
        truth, ftruth, base = tp["truth"], tp["ftruth"], tp.pop("base")
        res["truth"] = {"s": truth_s, "streamed": True, "gen_s": tp["gen_s"],
                        "scan_s": tp["scan_s"], "filtered_scan_s": tp["filtered_scan_s"],
                        "duckdb_keep_s": duck_s, "held_base": hold,
                        "stream_numpy_batch_qps": len(queries) / tp["scan_s"],
                        "stream_numpy_single_ms": [s * 1000 for s in tp["single_s"]]}
        single = np.median(tp["single_s"]) * 1000 if tp["single_s"] else float("nan")
        print(f"\nexact truth, one streaming pass: {truth_s:.1f} s (regenerating "
              f"{tp['gen_s']:.1f} s, scoring {len(queries)} queries {tp['scan_s']:.1f} s = "
              f"{len(queries) / tp['scan_s']:.1f} q/s batched, {fq_n} filtered queries x "
              f"{len(keeps)} filters {tp['filtered_scan_s']:.1f} s; DuckDB kept ids "
              f"{duck_s:.1f} s); numpy single-query scan, streamed: {single:.0f} ms median "
              f"over {len(tp['single_s'])}", flush=True)
    phases.end()

    # --- the project's store, through the engine -----------------------------------------
    phases.start("queries")
    default = eng.search_settings
    # First pass: cold page tables for the memory-mapped float16 copies (a fresh server);
    # second pass over the same queries: warm (a server that has been answering a while).
    found, cold = timed_queries(lambda q: eng.search_vector(q, K)[0], queries)
    found, lat = timed_queries(lambda q: eng.search_vector(q, K)[0], queries)
    ours = {"recall@10": recall(found, truth), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "cold_p50_ms": pct(cold, 50), "cold_p99_ms": pct(cold, 99),
            "nprobe": default.nprobe, "rerank_depth": default.rerank_depth}
    t0 = time.perf_counter()
    _, cand = snap.search(queries, max(K, default.rerank_depth), nprobe=default.nprobe)
    for q, row in zip(queries, cand, strict=True):
        SearchEngine._exact(snap, q, row[row >= 0], K)
    ours["batch_qps"] = len(queries) / (time.perf_counter() - t0)
    res["unfiltered"] = {"ours": ours}
    print(f"\nunfiltered, k=10, {len(queries)} queries")
    print(f"{'method':<34} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch q/s':>10}")
    print(f"{'store (IVF-PQ + re-rank, engine)':<34} {ours['recall@10']:>9.4f} "
          f"{ours['p50_ms']:>8.3f} {ours['p99_ms']:>8.3f} {ours['batch_qps']:>10.1f}")

    if base is not None:
        flat = faiss.IndexFlatIP(base.shape[1])
        flat.add(base)
        sub = queries[: args.flat_queries]
        _, flat_lat = timed_queries(lambda q: flat.search(q[None], K)[1][0], sub)
        t0 = time.perf_counter()
        flat.search(queries, K)
        flat_qps = len(queries) / (time.perf_counter() - t0)
        flat.reset()  # free its copy of the vectors
        del flat
        _, np_lat = timed_queries(lambda q: np.argpartition(-(base @ q), K)[:K], sub)
        t0 = time.perf_counter()
        again = exact_topk(base, queries, K)
        np_qps = len(queries) / (time.perf_counter() - t0)
        res["unfiltered"]["faiss_flat"] = {"p50_ms": pct(flat_lat, 50),
                                           "p99_ms": pct(flat_lat, 99), "batch_qps": flat_qps,
                                           "recall@10": 1.0}
        res["unfiltered"]["numpy"] = {"p50_ms": pct(np_lat, 50), "p99_ms": pct(np_lat, 99),
                                      "batch_qps": np_qps, "recall@10": 1.0}
        agree = recall(list(again), truth)
        res["truth"]["in_memory_agrees"] = agree
        for name, r in (("FAISS Flat (exact)", res["unfiltered"]["faiss_flat"]),
                        ("numpy brute force (exact)", res["unfiltered"]["numpy"])):
            print(f"{name:<34} {1.0:>9.4f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                  f"{r['batch_qps']:>10.1f}")
        speedup = pct(flat_lat, 50) / ours["p50_ms"]
        res["unfiltered"]["speedup_vs_flat_p50"] = speedup
        check = (f"; the streamed truth agrees with an in-memory brute force at recall "
                 f"{agree:.4f}" if res["truth"]["streamed"] else "")
        print(f"(Flat/numpy single-query timed on {len(sub)}{check})")
        print(f"store p50 is {speedup:.0f}x faster than FAISS Flat in this run", flush=True)
        base = None
    else:
        single = res["truth"]["stream_numpy_single_ms"]
        print(f"{'numpy brute force, streamed':<34} {1.0:>9.4f} "
              f"{np.median(single) if single else float('nan'):>8.1f} {'':>8} "
              f"{res['truth']['stream_numpy_batch_qps']:>10.1f}")
        print(f"FAISS Flat / in-memory numpy skipped: n = {n:,} > --hold-max "
              f"{args.hold_max:,} (they need the whole base in memory: "
              f"{gib(n * args.dim * 4)} float32); the streamed numpy row times only the "
              "scoring of chunks already generated")
        res["unfiltered"]["faiss_flat"] = {"skipped": f"n > hold_max {args.hold_max}"}
    print(f"first (cold) pass: p50 {ours['cold_p50_ms']:.3f} ms, p99 "
          f"{ours['cold_p99_ms']:.3f} ms", flush=True)

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
                f, lt = timed_queries(lambda q: eng.search_vector(q, K)[0], sq)
                r = {"nprobe": nprobe, "depth": depth, "recall@10": recall(f, st),
                     "p50_ms": pct(lt, 50), "p99_ms": pct(lt, 99)}
                sweep.append(r)
                cells.append(f"{r['recall@10']:.3f} / {r['p50_ms']:.2f}")
            print(f"{nprobe:>6} " + " ".join(f"{c:>16}" for c in cells), flush=True)
        eng.search_settings = default
    res["sweep"] = sweep

    # --- filtered ------------------------------------------------------------------------
    res["filtered"] = {}
    if filters:
        print(f"\nfiltered, k=10, {fq_n} queries")
        print(f"{'filter':<26} {'kept':>8} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for name, f in filters.items():
            found, lat = timed_queries(lambda q, f=f: eng.search_vector(q, K, f)[0],
                                       queries[:fq_n])
            r = {"kept_fraction": float(keeps[name].sum()) / n,
                 "recall@10": recall(found, ftruth[name]), "p50_ms": pct(lat, 50),
                 "p99_ms": pct(lat, 99)}
            res["filtered"][name] = r
            print(f"{name:<26} {r['kept_fraction']:>8.4f} {r['recall@10']:>9.4f} "
                  f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}", flush=True)
    phases.end()
    end = status()
    res["memory_after_queries"] = {"rss_anon": end["RssAnon"], "rss_file": end["RssFile"],
                                   "rss_anon_per_tile": end["RssAnon"] / n,
                                   "rss_file_per_tile": end["RssFile"] / n}
    print(f"\nprocess after queries: RssAnon {gib(end['RssAnon'])} = "
          f"{end['RssAnon'] / n:.1f} B/tile (everything: Python, libraries, engine), "
          f"RssFile {gib(end['RssFile'])} = {end['RssFile'] / n:.1f} B/tile "
          "(float16 pages touched by the queries, libraries)", flush=True)

    # --- incremental reload ---------------------------------------------------------------
    if not args.index and args.reload_tiles:
        res["reload"] = reload(args, world, ident, idx, eng, queries, phases)

    # --- memory by phase ------------------------------------------------------------------
    phases.end()
    res["phases"] = phases.rows
    how_peak = ("VmHWM, reset per phase" if phases.resettable else
                "VmHWM, cumulative: it could not be reset")
    print(f"\npeak resident memory by phase ({how_peak}):")
    for name, r in phases.rows.items():
        print(f"  {name:<10} peak {gib(r['peak_rss']):>10}  at the end: anon "
              f"{gib(r['rss_anon_end'])}, file {gib(r['rss_file_end'])}  ({r['s']:.1f} s)")

    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"\nresults: {work / 'results.json'}")
    return 0


def reload(args, world: EmbeddingWorld, ident: EncoderIdentity, idx: Path,
           eng: SearchEngine, queries: np.ndarray, phases: Phases) -> dict:
    """One more commit of --reload-tiles tiles by a new writer while the engine is open:
    how long the engine's pick-up takes and what it costs, against a fresh open."""
    n, m = args.n, args.reload_tiles
    x = world.chunk(0, m, SEED_NEW)
    cols = tile_columns(m, seed=SEED_NEW, chunk=0, first=n, layout=args.layout)
    phases.start("reload")
    t0 = time.perf_counter()
    with IndexWriter(idx, ident, store_settings(args)) as w:
        t1 = time.perf_counter()
        due = w.training_due()
        w.add(rows_from_columns(cols, 0, m), x, [b""] * m)
        w.commit()
        t2 = time.perf_counter()
    first_id = w.m.next_id - m
    t3 = time.perf_counter()
    before = settled()
    t4 = time.perf_counter()
    loaded = eng.loaded  # the first access after the commit picks it up
    pick_s = time.perf_counter() - t4
    after = status()
    snap = loaded.snap
    probe = list(range(0, m, max(1, m // 16)))
    top1 = [int(eng.search_vector(x[j], 1)[0][0]) for j in probe]
    hits = sum(t == first_id + j for t, j in zip(top1, probe, strict=True))
    _, lat = timed_queries(lambda q: eng.search_vector(q, K)[0], queries[:300])
    before_fresh = settled()["RssAnon"]
    t5 = time.perf_counter()
    eng2 = SearchEngine(idx, ServeConfig(Settings()), encoder=eng.encoder)
    fresh_s = time.perf_counter() - t5
    fresh_anon = status()["RssAnon"] - before_fresh
    same = eng2.snapshot.ntotal == snap.ntotal
    del eng2
    r = {"tiles": m, "writer_open_s": t1 - t0, "add_commit_s": t2 - t1,
         "writer_close_s": t3 - t2, "training_due": due, "pickup_s": pick_s,
         "pickup_rss_anon_bytes": after["RssAnon"] - before["RssAnon"],
         "pickup_rss_file_bytes": after["RssFile"] - before["RssFile"],
         "segments": len(snap.segments), "ntotal": snap.ntotal,
         "new_top1_hits": f"{hits}/{len(probe)}", "p50_ms_after": pct(lat, 50),
         "p99_ms_after": pct(lat, 99), "fresh_open_s": fresh_s,
         "fresh_open_rss_anon_bytes": fresh_anon, "fresh_open_same_ntotal": same}
    phases.end()
    print(f"\nincremental reload: a new writer opened in {r['writer_open_s']:.2f} s, added + "
          f"committed {m:,} tiles in {r['add_commit_s']:.2f} s"
          f"{' (a re-training was due)' if due else ''}; the open engine picked it up in "
          f"{pick_s * 1000:.1f} ms (RssAnon +{r['pickup_rss_anon_bytes'] / 2**20:.1f} MiB, "
          f"{len(snap.segments)} segments, {snap.ntotal:,} tiles); new tiles found top-1 "
          f"{hits}/{len(probe)}; queries after it p50 {r['p50_ms_after']:.3f} ms, p99 "
          f"{r['p99_ms_after']:.3f} ms")
    print(f"a fresh open of the same index (warm): {fresh_s:.2f} s "
          f"({fresh_s / pick_s:.0f}x the pick-up), RssAnon +{gib(fresh_anon)} = "
          f"{fresh_anon / snap.ntotal:.1f} B/tile"
          f"{'' if same else ' (its tile count differs!)'}", flush=True)
    if hits != len(probe):
        print(f"WARNING: only {hits}/{len(probe)} new tiles were their own top-1", flush=True)
    return r


if __name__ == "__main__":
    sys.exit(main())
