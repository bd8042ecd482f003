"""The indexing job: discover -> check -> tile (worker processes) -> encode -> store."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mercantile
import numpy as np
from tqdm import tqdm

from encoder.hashing import file_stat, known_or_file_sha256
from encoder.model import SatelliteEncoder
from indexer.config import Settings
from indexer.dataset import RasterPlan, TileDataset, tile_loader
from indexer.discover import RasterSource, discover
from indexer.errors import InputError
from indexer.raster import inspect_raster
from indexer.tiling import choose_zoom, raster_tiles, tile_gsd_m, tile_range
from indexer.writer import IndexWriter


def source_key(path: str, sha256: str) -> str:
    """Sources are keyed by absolute path + content hash."""
    return hashlib.sha256(f"{path}\n{sha256}".encode()).hexdigest()[:20]


@dataclass
class JobReport:
    rasters_indexed: int = 0  # newly indexed (or completed) in this run
    rasters_unchanged: int = 0  # already fully indexed: nothing to do
    rasters_replaced: int = 0  # same path, new content: old tiles removed
    problems: list[InputError] = field(default_factory=list)
    tiles_written: int = 0
    tiles_nodata: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def tiles_per_s(self) -> float:
        return (self.tiles_written + self.tiles_nodata) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        skipped = len(self.problems)
        why = " (reasons above)" if skipped else ""
        parts = [
            f"rasters: {self.rasters_indexed} indexed, {self.rasters_unchanged} already indexed, "
            f"{skipped} skipped{why}",
            f"tiles: {self.tiles_written} written, {self.tiles_nodata} skipped as nodata",
            f"{self.tiles_per_s:.1f} tiles/s in {self.seconds:.1f} s",
        ]
        if self.rasters_replaced:
            parts.insert(1, f"{self.rasters_replaced} replaced")
        head = "interrupted, committed so far: " if self.interrupted else ""
        return head + " | ".join(parts)


@dataclass
class _Pending:
    """Bookkeeping for one raster while its tiles stream through."""

    key: str
    entry: dict
    remaining: int
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
            plans, tasks, pendings = self._plan(writer, sources, report)
            if self.strict and report.problems:
                return report
            try:
                self._stream(writer, plans, tasks, pendings, report)
            except KeyboardInterrupt:
                report.interrupted = True
            for p in pendings:  # e.g. a resumed source whose tiles were all committed
                if p.remaining == 0 and not p.finished:
                    self._finish(writer, p, report)
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
        tasks: list[tuple[int, int, int]] = []
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
            tiles = raster_tiles(info, zoom)
            done = writer.committed_tiles(key) if old else set()
            todo = [t for t in tiles if (t.z, t.x, t.y) not in done]
            size, mtime = file_stat(src.path)
            entry = {
                "path": src.path, "content_sha256": sha, "size": size, "mtime_ns": mtime,
                "stac_item": src.stac_item, "status": "partial", "zoom": zoom,
                "gsd_m": tile_gsd_m(zoom, info.centre_lat, px), "native_gsd_m": info.native_gsd_m,
                "acquired": info.acquired.isoformat() if info.acquired else None,
                "sensor": info.sensor, "crs": info.crs, "tiles": len(done), "skipped_nodata": 0,
            }
            r = len(plans)
            plans.append(RasterPlan(info, zoom, tile_range(tiles)))
            tasks += [(r, t.x, t.y) for t in todo]
            pendings.append(_Pending(key, entry, remaining=len(todo), written=len(done),
                                     resumed=len(done)))
        return plans, tasks, pendings

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

    def _stream(self, writer: IndexWriter, plans, tasks, pendings: list[_Pending],
                 report: JobReport) -> None:
        if not tasks:
            return
        dataset = TileDataset(plans, tasks, self.encoder.image_size, self.s.tiling, self.s.job)
        bar = tqdm(total=len(tasks), desc="indexing", unit="tile", disable=not self.progress,
                   smoothing=0.1)
        try:
            for batch in tile_loader(dataset, self.s.job):
                keep = []
                for item in batch:
                    p = pendings[item["raster"]]
                    p.remaining -= 1
                    if p.finished:  # failed earlier: the rest of its tiles are ignored
                        continue
                    if item["error"]:
                        p.error = item["error"]
                        self._finish(writer, p, report)
                    elif item["rgb"] is None:
                        p.nodata += 1
                        report.tiles_nodata += 1
                    else:
                        keep.append(item)
                # A source that failed later in this batch loses its earlier tiles too.
                keep = [it for it in keep if pendings[it["raster"]].error is None]
                if keep:
                    self._add(writer, keep, pendings, plans, report)
                for item in batch:
                    p = pendings[item["raster"]]
                    if p.remaining == 0 and not p.finished:
                        self._finish(writer, p, report)
                if writer.pending >= self.s.job.commit_every:
                    writer.commit()
                bar.update(len(batch))
                if self.strict and report.problems:
                    break
        finally:
            bar.close()

    def _add(self, writer: IndexWriter, items: list[dict], pendings: list[_Pending], plans,
             report: JobReport) -> None:
        vecs = self.encoder.encode_images(np.stack([it["rgb"] for it in items]))
        rows = []
        for it in items:
            p = pendings[it["raster"]]
            if p.key not in writer.sources:  # first tile: the source becomes "partial"
                writer.set_source(p.key, dict(p.entry))
            p.written += 1
            rows.append(self._row(it, p, plans[it["raster"]]))
        writer.add(rows, vecs, [it["thumb"] for it in items])
        report.tiles_written += len(items)

    def _row(self, item: dict, p: _Pending, plan: RasterPlan) -> dict:
        b = mercantile.bounds(item["x"], item["y"], item["z"])
        return {
            "z": item["z"], "x": item["x"], "y": item["y"],
            "west": b.west, "south": b.south, "east": b.east, "north": b.north,
            "source": p.entry["path"], "source_key": p.key,
            "acquired": plan.info.acquired, "sensor": plan.info.sensor,
            "gsd_m": p.entry["gsd_m"], "native_gsd_m": p.entry["native_gsd_m"],
            "nodata_fraction": item["nodata_fraction"],
        }
