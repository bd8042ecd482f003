"""The ANN's re-training in a job's writer: when it comes, and what the last commit waits.

Runs the job's writer alone (background training, commits of --commit tiles, 512-d
synthetic embeddings, default store settings) over --tiles tiles arriving at --rate tiles/s
(the stream of a job whose encoder makes that many: the writer sleeps until each commit's
tiles are due), with the run's size given to the writer up front (`plan`: the job's
`IndexWriter.expect`) and without (`growth`: re-trained at 4x the last training only),
alternated. Prints each training (the index size it started at, the size it was made for),
the last commit's wait for a training, and the run's wall time against the stream's.
`--kmeans cpu` (or cuda): the IVF's k-means and lists by job.kmeans_on's DeviceKMeans.

    python bench/training_plan.py --tiles 230000 --rate 3000 --rounds 2
    python bench/training_plan.py --tiles 980000 --rate 6000 --plan yes --kmeans faiss cpu
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic import EmbeddingWorld  # noqa: E402
from encoder.identity import EncoderIdentity  # noqa: E402
from indexer.config import StoreSettings  # noqa: E402
from indexer.store.writer import IndexWriter  # noqa: E402
from tests.helpers import mark_complete, tile_rows  # noqa: E402


def run(d: Path, plan: bool, kmeans: str, a, world: EmbeddingWorld,
        ident: EncoderIdentity) -> dict:
    trainings: list[tuple[int, int]] = []
    km = None
    if kmeans != "faiss":
        import torch

        from indexer.job.device_kmeans import DeviceKMeans
        km = DeviceKMeans(torch.device(kmeans))
    t0 = time.perf_counter()
    with IndexWriter(d, ident, StoreSettings(), background_training=True, kmeans=km) as w:
        if plan:
            w.expect(a.tiles)
        n = 0
        while n < a.tiles:
            step = min(a.commit, a.tiles - n)
            due = t0 + (n + step) / a.rate  # when the stream has made these tiles
            if (ahead := due - time.perf_counter()) > 0:
                time.sleep(ahead)
            w.add(tile_rows(step, f"s{n}", n), world.sample(step, n), [b"j"] * step)
            mark_complete(w, f"s{n}", step)
            w.commit()
            n += step
            t = w._trainer  # noqa: SLF001 - what the bench reports
            if t is not None and (not trainings or trainings[-1][2] is not t):
                trainings.append((w.index.ntotal, t.n, t))
        stream = time.perf_counter() - t0
        t = time.perf_counter()
        w.commit(wait_for_training=True)
        last = time.perf_counter() - t
        info = w.m.index
    return {"trainings": [(at, target) for at, target, _ in trainings], "last": last,
            "stream": stream, "wall": time.perf_counter() - t0, "training_s": w.training_s,
            "final": f"{info.factory}, trained for {info.trained_at} on {info.trained_on}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=230_000)
    ap.add_argument("--rate", type=float, default=3000.0, help="tiles/s the stream makes")
    ap.add_argument("--commit", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--plan", choices=("no", "yes"), nargs="+", default=["no", "yes"],
                    help="the run's size given to the writer (IndexWriter.expect)")
    ap.add_argument("--kmeans", nargs="+", default=["faiss"],
                    help="faiss, or a torch device (cpu, cuda): job.kmeans_on's DeviceKMeans")
    a = ap.parse_args()
    world = EmbeddingWorld(dim=a.dim)
    ident = EncoderIdentity("bench", "c" * 64, "w" * 64, a.dim, 224)
    root = Path(tempfile.mkdtemp(prefix="satfind-training-plan-"))
    print(f"# bench/training_plan.py on {os.cpu_count()} cores: {a.tiles:,} tiles at "
          f"{a.rate:,.0f} tiles/s, commits of {a.commit}")
    print("| round | writer | trainings (started at -> made for) | stream s | last commit s "
          "| wall s | wall / stream | training s (its thread) | final ANN |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for r in range(1, a.rounds + 1):
            for plan, kmeans in [(p == "yes", k) for p in a.plan for k in a.kmeans]:
                d = root / f"idx-{r}-{plan}-{kmeans}"
                x = run(d, plan, kmeans, a, world, ident)
                shutil.rmtree(d, ignore_errors=True)
                tr = ", ".join(f"{at:,} -> {t:,}" for at, t in x["trainings"])
                how = f"{'plan (expect)' if plan else 'growth only'}, k-means {kmeans}"
                print(f"| {r} | {how} | {tr} | "
                      f"{x['stream']:.1f} | {x['last']:.2f} | {x['wall']:.1f} | "
                      f"{x['wall'] / x['stream']:.2f} | {x['training_s']:.1f} | {x['final']} |",
                      flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
