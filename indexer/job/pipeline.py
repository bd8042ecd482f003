"""The indexing job: discover -> check -> tile (worker processes) -> encode -> store."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mercantile
import numpy as np
from tqdm import tqdm

from encoder.model import SatelliteEncoder
from indexer import logs
from indexer.config import Settings
from indexer.critical import deferred_interrupts, stop_between_steps
from indexer.errors import InputError, JobError
from indexer.job.read import RasterPlan, TileDataset, tile_loader
from indexer.job.report import JobReport
from indexer.rasters.discovery import discover
from indexer.rasters.grid import choose_zoom, raster_blocks, tile_gsd_m
from indexer.rasters.hashing import file_stat, known_or_file_sha256
from indexer.rasters.inspect import RasterInfo, inspect_raster
from indexer.rasters.sources import RasterSource
from indexer.store.writer import IndexWriter


def source_key(path: str, sha256: str) -> str:
    """Sources are keyed by absolute path + content hash."""
    return hashlib.sha256(f"{path}\n{sha256}".encode()).hexdigest()[:20]


@dataclass
class _Pending:
    """Bookkeeping for one raster while its tiles stream through."""

    key: str
    entry: dict
    info: RasterInfo
    remaining: int  # tiles not yet through _stream (those committed earlier included)
    written: int = 0
    nodata: int = 0
    error: str | None = None
    finished: bool = False
    resumed: int = 0  # tiles committed by an earlier, interrupted run


class IndexJob:
    def __init__(self, index_dir: str | Path, settings: Settings, encoder: SatelliteEncoder,
                 strict: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None):
        self.index_dir = Path(index_dir)
        self.s = settings
        self.encoder = encoder
        self.strict = strict
        self.progress = progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr))

    def _problem(self, report: JobReport, err: InputError) -> None:
        report.problems.append(err)
        self.log(f"skipped {err}")

    def run(self, archives: list[str]) -> JobReport:
        report = JobReport()
        t0 = time.perf_counter()
        sources, problems = discover(archives, self.s.discovery)
        for p in problems:
            self._problem(report, p)
        if self.strict and report.problems:
            return report
        with IndexWriter(self.index_dir, self.encoder.identity, self.s.store) as writer:
            plans, pendings = self._plan(writer, sources, report)
            if self.strict and report.problems:
                return report
            for p in pendings:  # e.g. a resumed source whose tiles were all committed
                if p.remaining == 0:
                    self._finish(writer, p, report)
            try:
                self._stream(writer, plans, pendings, report)
            except RuntimeError as e:
                # torch reports a dead reader process (killed, out of memory) from its
                # SIGCHLD handler, wherever the main thread happens to be.
                if "DataLoader worker" not in str(e):
                    raise
                writer.commit()  # keep what was read before the failure
                msg = str(e).splitlines()[0].strip().rstrip(".")
                raise JobError(f"a tile-reading worker process died ({msg}; out of memory? "
                               "try fewer job.workers)") from None
            except KeyboardInterrupt:
                # Nothing is finished here: a source is complete only once every one of its
                # tiles went through _stream; the rest stay "partial" and resume next run.
                report.interrupted = True
            writer.commit()
        report.seconds = time.perf_counter() - t0
        return report

    def _plan(self, writer: IndexWriter, sources: list[RasterSource], report: JobReport):
        by_path: dict[str, list[str]] = {}
        for key, e in writer.sources.items():
            by_path.setdefault(e["path"], []).append(key)
        known = {(e["path"], e["size"], e["mtime_ns"]): e["content_sha256"]
                 for e in writer.sources.values()}
        plans: list[RasterPlan] = []
        pendings: list[_Pending] = []
        px = self.encoder.image_size
        it = tqdm(sources, desc="checking rasters", unit="raster", disable=not self.progress,
                  leave=False)
        for src in it:
            try:
                sha = known_or_file_sha256(src.path, known)
            except OSError as e:
                self._problem(report, InputError(src.path, f"cannot read file ({e.strerror})"))
                continue
            key = source_key(src.path, sha)
            old = writer.sources.get(key)
            if old and old.get("status") == "complete":
                report.rasters_unchanged += 1
                continue
            try:
                info = inspect_raster(src, self.s.discovery, self.s.tiling)
            except InputError as e:
                self._problem(report, e)
                continue
            for stale in by_path.get(src.path, []):
                if stale != key:  # same path, new content: the old tiles go
                    writer.remove_source(stale)
                    report.rasters_replaced += 1
            zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, self.s.tiling)
            blocks = raster_blocks(info, zoom)
            count = sum(b.count for b in blocks)
            limit = self.s.job.max_tiles_per_raster
            if count > limit:
                self._problem(report, InputError(
                    src.path, f"would give {count:,} tiles at zoom {zoom} (more than "
                    f"job.max_tiles_per_raster = {limit:,}): a runaway size, or raise the limit"))
                continue
            done = set()
            if old:
                done = {(x, y) for z, x, y in writer.committed_tiles(key) if z == zoom}
            size, mtime = file_stat(src.path)
            entry = {
                "path": src.path, "content_sha256": sha, "size": size, "mtime_ns": mtime,
                "stac_item": src.stac_item, "status": "partial", "zoom": zoom,
                "gsd_m": tile_gsd_m(zoom, info.centre_lat, px), "native_gsd_m": info.native_gsd_m,
                "acquired": info.acquired.isoformat() if info.acquired else None,
                "sensor": info.sensor, "crs": info.crs, "tiles": len(done), "skipped_nodata": 0,
            }
            r = len(pendings)
            for block in blocks:
                mine = frozenset(t for t in done if block.x0 <= t[0] <= block.x1
                                 and block.y0 <= t[1] <= block.y1)
                plans.append(RasterPlan(info, block, r, mine))
            pendings.append(_Pending(key, entry, info, remaining=count, written=len(done),
                                     resumed=len(done)))
        if pendings:
            biggest = max(pendings, key=lambda p: p.remaining)
            total = sum(p.remaining for p in pendings)
            self.log(f"plan: {len(pendings)} raster(s) to index, {total:,} tiles (largest: "
                     f"{Path(biggest.entry['path']).name}, {biggest.remaining:,} tiles at zoom "
                     f"{biggest.entry['zoom']})")
        return plans, pendings

    def _finish(self, writer: IndexWriter, p: _Pending, report: JobReport) -> None:
        p.finished = True
        if p.error is not None:
            writer.remove_source(p.key)
            report.tiles_written -= p.written - p.resumed  # they are gone again
            self._problem(report, InputError(p.entry["path"], p.error))
            return
        if p.written == 0:
            writer.remove_source(p.key)
            self._problem(report, InputError(
                p.entry["path"], f"no tile has at most {self.s.tiling.max_nodata_fraction:.0%} "
                "nodata (raster too small at this zoom, or mostly empty)"))
            return
        p.entry.update(status="complete", tiles=p.written, skipped_nodata=p.nodata)
        writer.set_source(p.key, dict(p.entry))
        report.rasters_indexed += 1

    def _stream(self, writer: IndexWriter, plans: list[RasterPlan], pendings: list[_Pending],
                 report: JobReport) -> None:
        plans = [pl for pl in plans if not pendings[pl.source].finished]
        dataset = TileDataset(plans, self.encoder.image_size, self.s.tiling, self.s.job)
        if len(dataset) == 0:
            return
        bar = tqdm(total=len(dataset), desc="indexing", unit="tile", disable=not self.progress,
                   smoothing=0.1)
        with stop_between_steps() as stop:
            self._batches(writer, dataset, pendings, report, bar, stop)

    def _batches(self, writer: IndexWriter, dataset: TileDataset, pendings: list[_Pending],
                 report: JobReport, bar, stop) -> None:
        try:
            # Starting the reader processes forks: a second Ctrl-C (or torch's SIGCHLD handler)
            # raising inside the fork handlers would be printed and lost ("Exception ignored
            # in _releaseLock"), so it waits until the workers are up.
            with deferred_interrupts():
                batches = iter(tile_loader(dataset, self.s.job))
            for batch in batches:
                keep = []
                for item in batch:
                    for w in item["warnings"]:
                        logs.note(w)
                    p = pendings[item["raster"]]
                    if p.finished:  # failed earlier: the rest of its tiles are ignored
                        continue
                    if item["error"]:
                        p.error = p.error or item["error"]
                    elif item["rgb"] is not None and not item["done"]:
                        keep.append(item)
                # A source that failed in this batch loses its earlier tiles too.
                keep = [it for it in keep if pendings[it["raster"]].error is None]
                if keep:
                    self._add(writer, keep, pendings, report)
                # Only now is every tile of the batch accounted for (an interrupt in the
                # encoder above leaves `remaining` untouched, so nothing is finished early).
                for item in batch:
                    p = pendings[item["raster"]]
                    p.remaining -= 1
                    if item["rgb"] is None and not (item["error"] or item["done"] or p.finished):
                        p.nodata += 1
                        report.tiles_nodata += 1
                for r in dict.fromkeys(item["raster"] for item in batch):
                    p = pendings[r]
                    if not p.finished and (p.error is not None or p.remaining == 0):
                        self._finish(writer, p, report)
                if writer.pending >= self.s.job.commit_every:
                    writer.commit()
                bar.update(len(batch))
                if self.strict and report.problems:
                    break
                stop.check()  # Ctrl-C / SIGTERM: stop here, between two batches
        finally:
            bar.close()

    def _add(self, writer: IndexWriter, items: list[dict], pendings: list[_Pending],
             report: JobReport) -> None:
        vecs = self.encoder.encode_images(np.stack([it["rgb"] for it in items]))
        rows = []
        for it in items:
            p = pendings[it["raster"]]
            if p.key not in writer.sources:  # first tile: the source becomes "partial"
                writer.set_source(p.key, dict(p.entry))
            p.written += 1
            rows.append(self._row(it, p))
        writer.add(rows, vecs, [it["thumb"] for it in items])
        report.tiles_written += len(items)

    def _row(self, item: dict, p: _Pending) -> dict:
        b = mercantile.bounds(item["x"], item["y"], item["z"])
        return {
            "z": item["z"], "x": item["x"], "y": item["y"],
            "west": b.west, "south": b.south, "east": b.east, "north": b.north,
            "source": p.entry["path"], "source_key": p.key,
            "acquired": p.info.acquired, "sensor": p.info.sensor,
            "gsd_m": p.entry["gsd_m"], "native_gsd_m": p.entry["native_gsd_m"],
            "nodata_fraction": item["nodata_fraction"],
        }
