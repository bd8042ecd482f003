"""Beyond top-k, server side, on a synthetic index laid out as a square of z16 tiles:

- whole-region scoring (GET /search/scores, columnar JSON) of areas holding 10k / 100k /
  1M tiles: the engine alone and the whole HTTP answer, p50 / p95,
- /map tiles: cold (rendered from thumbnails) and from the in-memory cache, p50,
- the label-set classifier: training (5-fold spatially blocked CV + final fit) on 1,000
  labels and ranking all tiles.

    python bench/regions.py                  # 1M tiles (about 1 GB of float16 copies)
    python bench/regions.py --side 400       # 160k tiles, quicker
    python bench/regions.py --work /tmp/rb --reuse   # keep / reuse the built index

Queries are by tile id (the query vector is a stored one), so no model runs; the index is
stamped with the random-weight ViT-B-16 identity so the engine opens it.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import mercantile
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic import EmbeddingWorld  # noqa: E402
from encoder.model import SatelliteEncoder  # noqa: E402
from indexer.config import StoreSettings, load_settings  # noqa: E402
from indexer.store.writer import IndexWriter  # noqa: E402
from search.engine import SearchEngine  # noqa: E402
from search.settings import ApiSettings, ServeConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
X0, Y0, Z = 14000, 23000, 16


def build(idx: Path, side: int, dim: int, ident) -> None:
    world = EmbeddingWorld(dim=dim, seed=0)
    n = side * side
    vecs = world.sample(n, seed=1)
    jpeg = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(1, 255, (128, 128, 3), np.uint8)).save(jpeg, format="JPEG")
    thumb = jpeg.getvalue()
    when = datetime(2020, 6, 1, tzinfo=UTC)
    with IndexWriter(idx, ident, StoreSettings(ivf_min_vectors=min(50_000, n))) as w:
        step = 100_000
        for s in range(0, n, step):
            rows = []
            for i in range(s, min(n, s + step)):
                x, y = X0 + i % side, Y0 + i // side
                b = mercantile.bounds(x, y, Z)
                rows.append({"z": Z, "x": x, "y": y, "west": b.west, "south": b.south,
                             "east": b.east, "north": b.north, "source": "/a/s.tif",
                             "source_key": "k", "acquired": when, "sensor": "synthetic",
                             "gsd_m": 2.4, "native_gsd_m": 2.4, "nodata_fraction": 0.0})
            w.add(rows, vecs[s:s + len(rows)], [thumb] * len(rows))
        w.commit()


def bbox_for(side_tiles: int) -> str:
    a = mercantile.bounds(X0, Y0, Z)
    b = mercantile.bounds(X0 + side_tiles - 1, Y0 + side_tiles - 1, Z)
    eps = 1e-7
    return f"{a.west + eps},{b.south + eps},{b.east - eps},{a.north - eps}"


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=1000, help="tiles per side (N = side^2)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--work", default="", help="folder for the index (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="use the index already in --work")
    args = ap.parse_args()
    from fastapi.testclient import TestClient

    from search import classifier
    from search.http.app import create_app
    from search.query import Query

    enc = SatelliteEncoder(load_settings(ROOT / "bench" / "vit-b-16.toml").encoder)
    work = Path(args.work or tempfile.mkdtemp(prefix="satfind-regions-"))
    idx = work / "idx"
    n = args.side ** 2
    if not (args.reuse and (idx / "manifest.json").is_file()):
        shutil.rmtree(idx, ignore_errors=True)
        t0 = time.perf_counter()
        build(idx, args.side, enc.dim, enc.identity)
        print(f"built {n} tiles in {time.perf_counter() - t0:.0f} s at {idx}", flush=True)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.get_num_threads()} "
          f"threads; {n} tiles", flush=True)
    cfg = ServeConfig(load_settings(ROOT / "bench" / "vit-b-16.toml"),
                      api=ApiSettings(max_score_tiles=max(n, 1)))
    eng = SearchEngine(idx, cfg, encoder=enc)
    client = TestClient(create_app(eng))
    print(f"{'region scoring':<34} {'tiles':>8} {'engine p50':>11} {'HTTP p50':>9} "
          f"{'HTTP p95':>9}")
    for side in sorted({min(100, args.side), min(316, args.side), args.side}):
        bbox = bbox_for(side)
        from search.http.params import make_filters, parse_bbox

        q = Query(tile_id=0, filters=make_filters(parse_bbox(bbox), None, None, [], []))
        count = len(eng.region_scores(q, n)[1].ids)
        eng_ms = timed(lambda q=q: eng.region_scores(q, n), args.repeat)
        http_ms = timed(lambda b=bbox: client.get("/search/scores",
                                                  params={"tile": 0, "bbox": b}), args.repeat)
        print(f"{'  GET /search/scores (json)':<34} {count:>8} {statistics.median(eng_ms):9.1f}"
              f"ms {statistics.median(http_ms):7.1f}ms {np.percentile(http_ms, 95):7.1f}ms",
              flush=True)
    # map tiles: a zoom-15 tile holds 2x2 index tiles; zoom 12 holds 16x16 (from children)
    for zoom in (15, 12):
        f = 2 ** (Z - zoom)
        cold, warm = [], []
        for i in range(args.repeat):
            x, y = X0 // f + i, Y0 // f
            url = f"/map/{zoom}/{x}/{y}.png"
            cold += timed(lambda u=url: client.get(u), 1)
            warm += timed(lambda u=url: client.get(u), 3)
        print(f"  GET /map/{zoom}/x/y.png: cold p50 {statistics.median(cold):.1f} ms, cached "
              f"p50 {statistics.median(warm):.1f} ms ({f * f} index tiles each)", flush=True)
    # classifier: 1,000 labels (positives near one vector), then rank all tiles
    from search.regions import score_ids

    rng = np.random.default_rng(3)
    snap = eng.loaded.snap
    sim = score_ids(snap, snap.get_vectors([0])[0], eng.loaded.tiles.live_ids())
    order = np.argsort(-sim)
    pos, neg = order[:500], rng.choice(order[n // 2:], 500, replace=False)
    ids = np.r_[pos, neg]
    y = np.r_[np.ones(500), np.zeros(500)]
    z, xs, ys = (np.full(len(ids), Z), X0 + ids % args.side, Y0 + ids // args.side)
    t0 = time.perf_counter()
    w, b, report = classifier.train(snap.get_vectors(ids), y, classifier.blocks(z, xs, ys))
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    score_ids(eng.loaded.snap, w, eng.loaded.tiles.live_ids())
    t_rank = time.perf_counter() - t0
    print(f"  classifier, 1000 labels: train + 5-fold CV {t_train * 1000:.0f} ms (CV AUC "
          f"{report.auc:.3f}); ranking {n} tiles {t_rank * 1000:.0f} ms")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
