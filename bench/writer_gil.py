"""The job's writer thread against its encoding thread: how long the main thread's small
torch calls take while the writer thread takes batches (Committer.take) and commits.

Every torch call lets go of Python's GIL and takes it back. While another thread runs
Python, taking it back waits for that thread to let go: up to the switch interval (5 ms)
per call. On a GPU the encoding thread makes a few hundred such calls per batch (kernel
launches; device_warp's resampling), so whatever Python the writer thread runs per tile
can hold the encoder back, though the writer itself keeps up. Here the main thread makes
--ops tiny CPU calls at a time (each about as long as a kernel launch), first alone, then
while the writer thread writes --batches batches of 512 tiles as fast as it can (the job's
default commit_every), and the writer's CPU time per tile is counted on its own thread.

    python bench/writer_gil.py                      # this checkout
    python bench/writer_gil.py --switch-ms 5 0.5    # and a shorter switch interval

Copy it into an older checkout to compare (it uses only Committer.take, plan_sources and
IndexWriter, whose signatures it shares with f2e7603).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoder.identity import EncoderIdentity  # noqa: E402
from indexer.config import load_settings  # noqa: E402
from indexer.job.commit import Committer  # noqa: E402
from indexer.job.plan import plan_sources  # noqa: E402
from indexer.job.read import NO_PIXELS, TileBatch  # noqa: E402
from indexer.job.report import JobReport  # noqa: E402
from indexer.rasters.sources import RasterSource  # noqa: E402
from indexer.store.writer import IndexWriter  # noqa: E402
from tests.helpers import OFFLINE_CONFIG, make_raster  # noqa: E402

BATCH = 512
DIM = 512


def batches(n: int, rasters: int, seed: int = 0) -> list[tuple[TileBatch, np.ndarray]]:
    """n batches of BATCH tiles of zoom 15, row by row over a block 64 tiles wide (as the
    readers cut them), each raster's share in turn; JPEG-sized thumbnails; unit vectors."""
    rng = np.random.default_rng(seed)
    out = []
    per = n * BATCH // rasters
    for b in range(n):
        i = np.arange(b * BATCH, (b + 1) * BATCH)
        raster = np.minimum(i // per, rasters - 1)
        k = i - raster * per
        v = rng.normal(size=(BATCH, DIM)).astype(np.float32)
        out.append((TileBatch(
            raster=raster.astype(np.int64), z=np.full(BATCH, 15, dtype=np.int64),
            x=(17000 + k % 64).astype(np.int64), y=(11000 + 100 * raster + k // 64).astype(
                np.int64), nodata=np.zeros(BATCH, dtype=np.float32),
            done=np.zeros(BATCH, dtype=bool), pixel_row=np.arange(BATCH, dtype=np.int64),
            rgb=NO_PIXELS, thumbs=[bytes(rng.integers(0, 255, 4000, dtype=np.uint8))
                                   for _ in range(BATCH)]),
            v / np.linalg.norm(v, axis=1, keepdims=True)))
    return out


def launches(ops: int) -> float:
    """Seconds for `ops` tiny torch calls in this thread."""
    a = torch.zeros(16)
    t = time.perf_counter()
    for _ in range(ops):
        a.add_(1.0)
    return time.perf_counter() - t


def one_run(work: Path, n: int, rasters: int, ops: int, more: int = 0) -> dict[str, float]:
    """The main thread's seconds per call alone and beside the writer thread, and the
    writer's CPU and wall seconds per tile. `more`: rasters of the job beyond the batches'
    (a large archive: the job's other rasters, read before or after)."""
    settings = load_settings(OFFLINE_CONFIG)
    paths = [make_raster(work / f"r{i}.tif", size=64, seed=i) for i in range(rasters)]
    report = JobReport()
    identity = EncoderIdentity("bench", "0" * 64, "0" * 64, DIM, 224)
    with IndexWriter(work / "index", identity, settings.store) as writer:
        _, pendings = plan_sources(writer, [RasterSource(str(p)) for p in paths], settings,
                                   224, report, print)
        todo = batches(n, rasters)
        for r, p in enumerate(pendings):
            p.remaining = p.total = sum(int((b.raster == r).sum()) for b, _ in todo)
        pendings += [dataclasses.replace(pendings[0], key=f"other{i}") for i in range(more)]
        commits = Committer(writer, pendings, report, 1.0, print)
        alone = [launches(ops) for _ in range(50)]
        every = settings.job.commit_every
        spent: dict[str, float] = {}
        running = threading.Event()
        running.set()

        def write() -> None:
            cpu, wall = time.thread_time(), time.perf_counter()
            for batch, vectors in todo:
                commits.take(batch, vectors)
                if writer.pending >= every:
                    writer.commit()
            writer.commit()
            spent["cpu"], spent["wall"] = time.thread_time() - cpu, time.perf_counter() - wall
            running.clear()

        t = threading.Thread(target=write)
        t.start()
        beside = []
        while running.is_set():
            beside.append(launches(ops))
        t.join()
        assert report.tiles_written == n * BATCH, report
    tiles = n * BATCH
    return {"alone": statistics.median(alone) / ops, "beside": statistics.mean(beside) / ops,
            "beside_median": statistics.median(beside) / ops,
            "cpu": spent["cpu"] / tiles, "wall": spent["wall"] / tiles}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=40, help=f"of {BATCH} tiles")
    p.add_argument("--rasters", type=int, default=4)
    p.add_argument("--more-rasters", type=int, default=0, help="the job's rasters beyond "
                   "the batches' (an archive of many files)")
    p.add_argument("--ops", type=int, default=200, help="torch calls per measurement")
    p.add_argument("--switch-ms", type=float, nargs="+", default=[5.0])
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"{a.batches} batches of {BATCH} tiles, {a.rasters} rasters (the job: "
          f"{a.rasters + a.more_rasters}); main thread: "
          f"{a.ops} tiny torch calls per measurement")
    print("| switch interval | run | main thread, alone (us per call) | beside the writer, "
          "mean (median) | writer CPU ms / tile | writer wall ms / tile |")
    print("|---|---|---|---|---|---|")
    for ms in a.switch_ms:
        sys.setswitchinterval(ms / 1000)
        for i in range(a.repeat):
            with tempfile.TemporaryDirectory(prefix="satfind-gil-") as d:
                r = one_run(Path(d), a.batches, a.rasters, a.ops, a.more_rasters)
            print(f"| {ms:g} ms | {i + 1} | {r['alone'] * 1e6:.2f} | {r['beside'] * 1e6:.1f} "
                  f"({r['beside_median'] * 1e6:.1f}) | {r['cpu'] * 1e3:.4f} | "
                  f"{r['wall'] * 1e3:.4f} |", flush=True)
    sys.setswitchinterval(0.005)
    return 0


if __name__ == "__main__":
    sys.exit(main())
