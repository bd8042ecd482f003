"""Commit: each batch's tiles go to the store with their rows, and each raster is finished
(or dropped, with its reason) once every one of its tiles went through. Runs on the job's
writer thread (see background.py)."""

from __future__ import annotations

from collections.abc import Callable

import mercantile
import numpy as np

from indexer.errors import InputError
from indexer.job.plan import Pending
from indexer.job.read import TileBatch
from indexer.job.report import JobReport
from indexer.store.writer import IndexWriter


class Committer:
    def __init__(self, writer: IndexWriter, pendings: list[Pending], report: JobReport,
                 max_nodata_fraction: float, problem: Callable[[InputError], None]):
        self.writer, self.pendings, self.report = writer, pendings, report
        self.max_nodata_fraction, self.problem = max_nodata_fraction, problem

    def take(self, batch: TileBatch, vectors: np.ndarray) -> None:
        """Everything about one read batch, once its pixels are embedded (`vectors`: one per
        row of batch.rgb): its tiles go to the store (a raster that failed, in this batch or
        before, keeps none), every tile is accounted for, complete rasters are finished."""
        for r, err in batch.errors.items():
            p = self.pendings[r]
            if not p.finished:
                p.error = p.error or err
        failed = np.array([p.finished or p.error is not None for p in self.pendings])
        keep = np.flatnonzero((batch.pixel_row >= 0) & ~batch.done & ~failed[batch.raster])
        if len(keep):
            self._add(batch, keep, vectors[batch.pixel_row[keep]])
        self._account(batch)

    def _add(self, batch: TileBatch, keep: np.ndarray, vectors: np.ndarray) -> None:
        rows = []
        for i in keep.tolist():
            p = self.pendings[int(batch.raster[i])]
            if p.key not in self.writer.sources:  # first tile: the source becomes "partial"
                self.writer.begin(p.key, p.entry)
            p.written += 1
            rows.append(_row(p, int(batch.z[i]), int(batch.x[i]), int(batch.y[i]),
                             float(batch.nodata[i])))
        self.writer.add(rows, vectors, [batch.thumbs[batch.pixel_row[i]] for i in keep])
        self.report.tiles_written += len(keep)

    def _account(self, batch: TileBatch) -> None:
        """Every tile of the batch went through: count nodata, finish complete rasters.
        (Only after the batch's tiles were added, so an interrupt before leaves `remaining`
        untouched and nothing is finished early.)"""
        for i in range(len(batch)):
            r = int(batch.raster[i])
            p = self.pendings[r]
            p.remaining -= 1
            if (batch.pixel_row[i] < 0 and not batch.done[i] and r not in batch.errors
                    and not p.finished):
                p.nodata += 1
                self.report.tiles_nodata += 1
        for r in dict.fromkeys(batch.raster.tolist()):
            p = self.pendings[r]
            if not p.finished and (p.error is not None or p.remaining == 0):
                self.finish(p)
            elif not p.finished and p.key in self.writer.sources:
                self.writer.progress(p.key, p.total - p.remaining)

    def finish(self, p: Pending) -> None:
        p.finished = True
        if p.error is not None:
            self.writer.remove(p.key)
            self.report.tiles_written -= p.written - p.resumed  # they are gone again
            self.problem(InputError(p.entry.path, p.error))
            return
        if p.written == 0:
            self.writer.remove(p.key)
            self.problem(InputError(
                p.entry.path, f"no tile has at most {self.max_nodata_fraction:.0%} nodata "
                "(raster too small at this zoom, or mostly empty)"))
            return
        if p.key not in self.writer.sources:  # resumed with every tile committed before
            self.writer.begin(p.key, p.entry)
        self.writer.finish(p.key, tiles=p.written, skipped_nodata=p.nodata)
        self.report.rasters_indexed += 1


def _row(p: Pending, z: int, x: int, y: int, nodata_fraction: float) -> dict:
    b = mercantile.bounds(x, y, z)
    return {
        "z": z, "x": x, "y": y,
        "west": b.west, "south": b.south, "east": b.east, "north": b.north,
        "source": p.entry.path, "source_key": p.key,
        "acquired": p.info.acquired, "sensor": p.info.sensor,
        "gsd_m": p.entry.gsd_m, "native_gsd_m": p.entry.native_gsd_m,
        "nodata_fraction": nodata_fraction,
    }
