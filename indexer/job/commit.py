"""Commit: each batch's tiles go to the store with their rows, and each raster is finished
(or dropped, with its reason) once every one of its tiles went through. Runs on the job's
writer thread (see background.py)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import wait

import numpy as np
import pyarrow as pa

from indexer.errors import InputError
from indexer.job.plan import Pending, local_identity
from indexer.job.read import TileBatch
from indexer.job.report import JobReport
from indexer.store.writer import IndexWriter, tile_rows

# Tiles held at most while their rasters are still being hashed (Pending.identity): a
# tile's vector and thumbnail, ~7 KB at 512-d (115 MB); beyond it the committer waits.
HELD_TILES = 16384


class Committer:
    def __init__(self, writer: IndexWriter, pendings: list[Pending], report: JobReport,
                 max_nodata_fraction: float, problem: Callable[[InputError], None]):
        self.writer, self.pendings, self.report = writer, pendings, report
        self.max_nodata_fraction, self.problem = max_nodata_fraction, problem
        # Batches waiting for a raster's hash, in order (a raster's tiles go to the store
        # in read order: its `through` counts them), and how many tiles they hold.
        self._held: deque[tuple[TileBatch, np.ndarray]] = deque()
        self._held_tiles = 0
        self.hash_wait_s = 0.0  # seconds waited for a raster's hash
        self._abandon = threading.Event()  # the job stops: wait for no more hashes

    def take(self, batch: TileBatch, vectors: np.ndarray) -> None:
        """Everything about one read batch, once its pixels are embedded (`vectors`: one per
        row of batch.rgb): its tiles go to the store (a raster that failed, in this batch or
        before, keeps none), every tile is accounted for, complete rasters are finished. A
        batch with a raster still being hashed (and every batch after it) is held until the
        hash is in, HELD_TILES at most before this waits for it."""
        if self._held or not self._hashed(batch):
            self._held.append((batch, vectors))
            self._held_tiles += len(batch)
        else:
            self._take(batch, vectors)
        self._release(beyond=HELD_TILES)

    def flush(self, wait: bool = True) -> None:
        """The held batches to the store: all of them, their hashes waited for; or
        (wait=False: an interrupted job) those whose hashes are in, in order."""
        self._release(beyond=-1 if wait else float("inf"))

    def abandon(self) -> None:
        """The job is stopping (any thread): a wait for a hash ends now, its batch held."""
        self._abandon.set()

    def _release(self, beyond: float) -> None:
        """Held batches to the store, in order: while the first one's hashes are in, and
        (waiting for them) while more than `beyond` tiles are held."""
        while self._held and (self._held_tiles > beyond or self._hashed(self._held[0][0])):
            batch, vectors = self._held[0]
            if not self._wait_for_hashes(batch):
                return  # abandoned: it stays held (an interrupted job drops it)
            self._held.popleft()
            self._held_tiles -= len(batch)
            self._take(batch, vectors)

    def _hashed(self, batch: TileBatch) -> bool:
        return all(self.pendings[r].identity is None or self.pendings[r].identity.done()
                   for r in np.unique(batch.raster).tolist())

    def _wait_for_hashes(self, batch: TileBatch) -> bool:
        """Wait until the hashes of the batch's rasters are in; False if abandoned first."""
        t = time.perf_counter()
        try:
            for r in np.unique(batch.raster).tolist():
                p = self.pendings[r]
                while p.identity is not None and not p.identity.done():
                    if self._abandon.is_set():
                        return False
                    wait([p.identity], timeout=0.05)
            return True
        finally:
            self.hash_wait_s += time.perf_counter() - t

    def _identify(self, p: Pending) -> None:
        """A raster hashed while it was read: its key and entry from its hash (in by now),
        or the error that drops it."""
        ident = local_identity(p.entry.path, p.identity.result())
        p.identity = None
        if isinstance(ident, str):
            p.error = p.error or ident
            return
        p.key = ident.key
        p.entry = dataclasses.replace(p.entry, content_sha256=ident.sha256, size=ident.size,
                                      mtime_ns=ident.mtime_ns)

    def _take(self, batch: TileBatch, vectors: np.ndarray) -> None:
        present = np.unique(batch.raster)  # (not every raster of the job: per batch)
        for r in present.tolist():
            if self.pendings[r].identity is not None:
                self._identify(self.pendings[r])
        for r, err in batch.errors.items():
            p = self.pendings[r]
            if not p.finished:
                p.error = p.error or err
        failed = np.array([self.pendings[r].finished or self.pendings[r].error is not None
                           for r in present.tolist()], dtype=bool)
        keep = np.flatnonzero((batch.pixel_row >= 0) & ~batch.done
                              & ~failed[np.searchsorted(present, batch.raster)])
        if len(keep):
            self._add(batch, keep, vectors[batch.pixel_row[keep]])
        self._account(batch)

    def _add(self, batch: TileBatch, keep: np.ndarray, vectors: np.ndarray) -> None:
        raster = batch.raster[keep]
        present, first, counts = np.unique(raster, return_index=True, return_counts=True)
        order = np.argsort(first)  # the rasters in the order the batch holds them
        for r, n in zip(present[order].tolist(), counts[order].tolist(), strict=True):
            p = self.pendings[r]
            if p.key not in self.writer.sources:  # first tile: the source becomes "partial"
                self.writer.begin(p.key, p.entry)
            p.written += n
        thumbs = batch.thumbnails()
        self.writer.add(_rows(self.pendings, present, batch, keep), vectors,
                        [thumbs[j] for j in batch.pixel_row[keep].tolist()])
        self.report.tiles_written += len(keep)

    def _account(self, batch: TileBatch) -> None:
        """Every tile of the batch went through: count nodata, finish complete rasters.
        (Only after the batch's tiles were added, so an interrupt before leaves `remaining`
        untouched and nothing is finished early.)"""
        present, first, at = np.unique(batch.raster, return_index=True, return_inverse=True)
        counts = np.bincount(at.reshape(-1), minlength=len(present))
        empty = np.bincount(at.reshape(-1), minlength=len(present),
                            weights=(batch.pixel_row < 0) & ~batch.done).astype(np.int64)
        order = np.argsort(first)  # the rasters in the order the batch holds them
        for r, n, nodata in zip(present[order].tolist(), counts[order].tolist(),
                                empty[order].tolist(), strict=True):
            p = self.pendings[r]
            p.remaining -= n
            if r not in batch.errors and not p.finished:
                p.nodata += nodata
                self.report.tiles_nodata += nodata
        for r in present[order].tolist():
            p = self.pendings[r]
            if not p.finished and (p.error is not None or p.remaining == 0):
                self.finish(p)
            elif not p.finished and p.key in self.writer.sources:
                self.writer.progress(p.key, p.total - p.remaining)

    def finish(self, p: Pending) -> None:
        p.finished = True
        if p.error is not None:
            if p.key:  # ("": a raster whose hash failed has nothing in the store)
                self.writer.remove(p.key)
            self.report.tiles_written -= p.written - p.resumed  # they are gone again
            self.problem(InputError(p.entry.path, p.error))
            return
        if p.written == 0:
            if p.key:
                self.writer.remove(p.key)
            self.problem(InputError(
                p.entry.path, f"no tile has at most {self.max_nodata_fraction:.0%} nodata "
                "(raster too small at this zoom, or mostly empty)"))
            return
        if p.key not in self.writer.sources:  # resumed with every tile committed before
            self.writer.begin(p.key, p.entry)
        self.writer.finish(p.key, tiles=p.written, skipped_nodata=p.nodata)
        self.report.rasters_indexed += 1


def _rows(pendings: list[Pending], present: np.ndarray, batch: TileBatch, keep: np.ndarray
          ) -> pa.Table:
    """The kept tiles' rows, column-wise: a raster's values once per raster, not once per
    tile (the writer thread's Python per tile holds the GIL the encoding thread needs:
    bench/writer_gil.py)."""
    ps = [pendings[r] for r in present.tolist()]
    return tile_rows(
        batch.z[keep], batch.x[keep], batch.y[keep], batch.nodata[keep],
        np.searchsorted(present, batch.raster[keep]),  # present: sorted
        {"source": [p.entry.path for p in ps], "source_key": [p.key for p in ps],
         "acquired": [p.info.acquired for p in ps], "sensor": [p.info.sensor for p in ps],
         "gsd_m": [p.entry.gsd_m for p in ps],
         "native_gsd_m": [p.entry.native_gsd_m for p in ps]})
