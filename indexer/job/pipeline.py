"""The indexing job: plan -> read (runner's worker processes) -> embed (this thread) ->
commit (the writer thread), the three overlapping; with progress, a stop between batches on
Ctrl-C / SIGTERM, and a report with the time each stage took."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from encoder.model import SatelliteEncoder
from indexer import logs
from indexer.config import Settings, TileRecipe, TilingSettings
from indexer.critical import stop_between_steps
from indexer.errors import InputError, JobError
from indexer.job.background import BackgroundWriter
from indexer.job.commit import Committer
from indexer.job.device_kmeans import DeviceKMeans
from indexer.job.device_warp import encoder_device, encoder_device_type, on_device
from indexer.job.plan import Hasher, Pending, known_hashes, plan_line, plan_sources
from indexer.job.read import RasterPlan, TileBatch
from indexer.job.report import JobReport
from indexer.job.runner import LocalRunner, reader_death, worker_death
from indexer.rasters.discovery import discover
from indexer.rasters.stac_api import StacSearch
from indexer.store.writer import IndexWriter, recorded_recipe, warm_up

# Embedded batches queued for the writer thread. A commit that adopts the IVF-PQ trained in
# the background (store/training.py) holds the writer ~0.5-0.9 s (H200 job, --timeline):
# room for that many batches of the GPU's (~47 ms each at 512 tiles) keeps the encoder
# going meanwhile. A queued batch is its vectors and thumbnails, ~3.5 MB at 512 tiles.
WRITER_DEPTH = 24


def _tiling_for(index_dir: Path, tiling: TilingSettings) -> TilingSettings:
    """`tiling` with warp "auto" decided: an existing index keeps its own warp
    (TilingSettings.for_index), a new one gets fast."""
    if tiling.warp != "auto":
        return tiling
    exists, recipe = recorded_recipe(index_dir)
    return tiling.for_index(recipe) if exists else tiling.with_warp()


def warp_device(settings: Settings, encoder) -> torch.device | None:
    """Where the readers leave the fast warp's plain tiles (job.warp_on): the encoder's
    device where that is a GPU ("auto") or always ("device"); None: the readers warp all."""
    device = encoder_device(encoder)
    if settings.tiling.resolved_warp() != "fast" or device is None:
        return None
    return device if on_device(settings.job.warp_on, device) else None


def coarse_kmeans(settings: Settings, encoder) -> DeviceKMeans | None:
    """Where the IVF's k-means and the vectors' lists are computed (job.kmeans_on): on the
    encoder's device (a GPU for "auto"), or None: by FAISS on the CPU cores."""
    device = encoder_device(encoder)
    if device is None or not on_device(settings.job.kmeans_on, device):
        return None
    return DeviceKMeans(device)


def hash_while_reading(settings: Settings, encoder, strict: bool) -> bool:
    """Whether new rasters are hashed while their tiles are read (job.hash_while_reading):
    "auto" where the encoder is a GPU; never with --strict (a file that cannot be hashed
    stops the run before its first tile)."""
    on = settings.job.hash_while_reading
    gpu = encoder_device_type(encoder) == "cuda"
    return not strict and (on == "yes" or (on == "auto" and gpu))


class IndexJob:
    def __init__(self, index_dir: str | Path, settings: Settings, encoder: SatelliteEncoder,
                 strict: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None):
        self.index_dir = Path(index_dir)
        settings = dataclasses.replace(settings, tiling=_tiling_for(self.index_dir,
                                                                    settings.tiling))
        self.s = settings
        self.encoder = encoder
        self.strict = strict
        self.progress = progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.recipe = TileRecipe.from_tiling(settings.tiling, encoder.image_size,
                                            encoder.spec.preset)
        # job.batch_size 0 resolves by this machine's device, or on Ray by the actors'.
        j = settings.job
        if j.runner == "ray":
            from indexer.job.ray_runner import RayOptions, RayRunner

            self.job = j
            self.runner = RayRunner(settings.tiling, j, encoder.image_size, encoder.spec,
                                    encoder.identity,
                                    RayOptions(j.ray_address, j.actors, j.gpus_per_actor),
                                    remote=settings.remote)
        else:
            device = encoder_device_type(encoder)
            self.job = j.for_device(device)
            self.runner = LocalRunner(settings.tiling, self.job, encoder.image_size,
                                      pin_memory=device == "cuda", remote=settings.remote,
                                      warp_device=warp_device(settings, encoder))

    def run(self, archives: list[str], search: StacSearch | None = None) -> JobReport:
        """Index the ARCHIVE arguments (paths, URLs, STAC files) and the items of a STAC API
        `search`."""
        try:
            return self._run(archives, search)
        except RuntimeError as e:
            # torch's SIGCHLD handler reports a dead reader wherever the main thread is: here
            # when that was after the stream (closing the hasher, the writer).
            died = worker_death(e)
            if died is None:
                raise
            raise died from None

    def _run(self, archives: list[str], search: StacSearch | None) -> JobReport:
        report = JobReport()
        t0 = time.perf_counter()
        threading.Thread(target=warm_up, name="satfind-warm-up", daemon=True).start()

        def problem(err: InputError) -> None:
            report.problems.append(err)
            self.log(f"skipped {err}")

        sources, problems = discover(archives, self.s.discovery, search)
        for p in problems:
            problem(p)
        if self.strict and report.problems:
            return report
        # The ANN's training runs on a thread of its own: the encoder never waits for it.
        with IndexWriter(self.index_dir, self.encoder.identity, self.s.store,
                         recipe=self.recipe, background_training=True,
                         kmeans=coarse_kmeans(self.s, self.encoder)) as writer, \
                Hasher(known_hashes(writer)) as hasher:
            plans, pendings = plan_sources(
                writer, sources, self.s, self.encoder.image_size, report, problem,
                progress=lambda xs, desc, total: tqdm(xs, desc=desc, total=total,
                                                      unit="raster", leave=False,
                                                      disable=not self.progress),
                warn=self.log, hasher=hasher,
                later=hash_while_reading(self.s, self.encoder, self.strict))
            # Discovery, opening and hashing the rasters, planning: once per run, whatever
            # its size (benchmarks keep it apart from the per-tile costs).
            report.stages["plan (main thread)"] = time.perf_counter() - t0
            if line := plan_line(pendings):
                self.log(line)
            # The ANN's training plans for the size the run ends at (its last re-training
            # then comes early enough to end with the stream, not after it).
            writer.expect(sum(p.remaining for p in pendings))
            if self.strict and report.problems:
                return report
            commits = Committer(writer, pendings, report, self.s.tiling.max_nodata_fraction,
                                problem)
            for p in pendings:  # e.g. a resumed source whose tiles were all committed
                if p.remaining == 0:
                    commits.finish(p)
            try:
                try:
                    self._stream(writer, plans, pendings, commits, report)
                except (RuntimeError, EOFError, ConnectionError) as e:
                    died = reader_death(e)
                    if died is None:
                        raise
                    raise died from None
            except JobError:
                writer.commit()  # keep what was read before the failure
                raise
            except KeyboardInterrupt:
                # Nothing is finished here: a source is complete only once every one of its
                # tiles went through; the rest stay "partial" and resume next run. Tiles
                # still held for a raster's hash are kept if it is in, else read again.
                report.interrupted = True
                commits.flush(wait=False)
            report.stages["wait for hashes (writer thread)"] = commits.hash_wait_s
            t = time.perf_counter()
            # A finished run's index ends trained (an interrupted one's trains next run).
            writer.commit(wait_for_training=not report.interrupted)
            report.stages["last commit"] = time.perf_counter() - t
            report.stages["IVF-PQ training (its own thread)"] = writer.training_s
        report.seconds = time.perf_counter() - t0
        return report

    def _stream(self, writer: IndexWriter, plans: list[RasterPlan], pendings: list[Pending],
                commits: Committer, report: JobReport) -> None:
        plans = [pl for pl in plans if not pendings[pl.source].finished]
        total = sum(p.block.count for p in plans)
        if total == 0:
            return
        bar = tqdm(total=total, desc="indexing", unit="tile", disable=not self.progress,
                   smoothing=0.1)
        every = self.job.commit_every

        def commit() -> None:
            t = time.perf_counter()
            writer.commit()
            report.stages["commit"] += time.perf_counter() - t

        def write(batch: TileBatch | None, vectors) -> None:
            if batch is None:  # the end: batches held for a raster's hash, waited for
                commits.flush()
            else:
                commits.take(batch, vectors)
            if writer.pending >= every:
                commit()

        out = BackgroundWriter(write, depth=WRITER_DEPTH)
        stages = report.stages
        try:
            with stop_between_steps() as stop:
                for batch, vectors in self.runner.embedded(plans, self.encoder, stages):
                    for w in batch.warnings:
                        logs.note(w)
                    out.put(batch, vectors)
                    bar.update(len(batch))
                    if nodes := getattr(self.runner, "nodes", None):  # Ray: the cluster's part
                        bar.set_postfix_str(f"{len(nodes)} nodes", refresh=False)
                    if self.strict:
                        out.drain()  # --strict stops at the first bad input, not 2 later
                        if report.problems:
                            break
                    stop.check()  # Ctrl-C / SIGTERM: stop here, between two batches
            out.put(None, None)
        except BaseException:
            commits.abandon()  # a writer waiting for a raster's hash stops waiting
            raise
        finally:
            try:
                out.close()  # everything encoded is written before the job's last commit
            finally:
                stages["write + commit (writer thread)"] += out.busy_s
                stages["writer thread's CPU (in write + commit)"] += out.cpu_s
                stages["wait for the writer"] += out.wait_s
                bar.close()
