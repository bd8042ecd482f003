"""Commit: each batch's tiles go to the store with their rows, and each raster is finished
(or dropped, with its reason) once every one of its tiles went through."""

from __future__ import annotations

from collections.abc import Callable

import mercantile
import numpy as np

from indexer.errors import InputError
from indexer.job.plan import Pending
from indexer.job.report import JobReport
from indexer.store.writer import IndexWriter


class Committer:
    def __init__(self, writer: IndexWriter, pendings: list[Pending], report: JobReport,
                 max_nodata_fraction: float, problem: Callable[[InputError], None]):
        self.writer, self.pendings, self.report = writer, pendings, report
        self.max_nodata_fraction, self.problem = max_nodata_fraction, problem

    def to_embed(self, batch: list[dict]) -> list[dict]:
        """The items of a batch whose tiles go into the index (a raster that failed, in this
        batch or before, keeps none)."""
        keep = []
        for item in batch:
            p = self.pendings[item["raster"]]
            if p.finished:  # failed earlier: the rest of its tiles are ignored
                continue
            if item["error"]:
                p.error = p.error or item["error"]
            elif item["rgb"] is not None and not item["done"]:
                keep.append(item)
        return [it for it in keep if self.pendings[it["raster"]].error is None]

    def add(self, items: list[dict], vectors: np.ndarray) -> None:
        rows = []
        for it in items:
            p = self.pendings[it["raster"]]
            if p.key not in self.writer.sources:  # first tile: the source becomes "partial"
                self.writer.begin(p.key, p.entry)
            p.written += 1
            rows.append(_row(it, p))
        self.writer.add(rows, vectors, [it["thumb"] for it in items])
        self.report.tiles_written += len(items)

    def account(self, batch: list[dict]) -> None:
        """Every tile of the batch went through: count nodata, finish complete rasters.
        (Called only after the batch's tiles were added, so an interrupt in the encoder
        leaves `remaining` untouched and nothing is finished early.)"""
        for item in batch:
            p = self.pendings[item["raster"]]
            p.remaining -= 1
            if item["rgb"] is None and not (item["error"] or item["done"] or p.finished):
                p.nodata += 1
                self.report.tiles_nodata += 1
        for r in dict.fromkeys(item["raster"] for item in batch):
            p = self.pendings[r]
            if not p.finished and (p.error is not None or p.remaining == 0):
                self.finish(p)

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


def _row(item: dict, p: Pending) -> dict:
    b = mercantile.bounds(item["x"], item["y"], item["z"])
    return {
        "z": item["z"], "x": item["x"], "y": item["y"],
        "west": b.west, "south": b.south, "east": b.east, "north": b.north,
        "source": p.entry.path, "source_key": p.key,
        "acquired": p.info.acquired, "sensor": p.info.sensor,
        "gsd_m": p.entry.gsd_m, "native_gsd_m": p.entry.native_gsd_m,
        "nodata_fraction": item["nodata_fraction"],
    }
