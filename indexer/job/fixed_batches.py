"""Encoder batches of one size across the readers' batches (the runner on CUDA).

A reader's batch keeps only the tiles that have pixels, so its size varies from call to
call (481 to 498 of 512 on the bench's raster): every new size costs the GPU's libraries a
new plan at its first call (cuDNN's attention, cuBLAS), paid again in each fresh process,
with the GPU idle meanwhile. Here the tiles of consecutive batches are encoded in chunks
of exactly `size` (the job's last chunk: what is left), and each batch is handed on, in
order, with its own rows' vectors once every chunk holding them is done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from indexer.job.read import TileBatch

Start = Callable[[torch.Tensor], Callable[[], np.ndarray]]


@dataclass(eq=False)
class _Entry:
    batch: TileBatch
    rows: int  # tiles with pixels (len(batch.rgb))
    missing: int  # of those, rows whose vectors have not come back yet
    vectors: np.ndarray | None = None


class FixedBatches:
    def __init__(self, start: Start, size: int | None, ahead: int = 1):
        """`start(pixels)` queues a uint8 batch on the encoder and returns a function that
        waits for its vectors (SatelliteEncoder.encode_images_later); `ahead`: chunks left
        queued while the oldest one's vectors are waited for; `size` None: each batch is a
        chunk of its own, as it comes (the runner before; benchmarks)."""
        if (size is not None and size < 1) or ahead < 0:
            raise ValueError(f"FixedBatches: size {size} and ahead {ahead}")
        self.start, self.size, self.ahead = start, size, ahead
        self._entries: deque[_Entry] = deque()  # every batch not handed on yet, in order
        self._buffer: deque[list] = deque()  # [entry, pixels, rows started]: not all queued
        self._buffered = 0
        self._flight: deque[tuple[Callable[[], np.ndarray], list]] = deque()

    def add(self, batch: TileBatch) -> list[tuple[TileBatch, np.ndarray]]:
        """Take one batch; returns the batches whose vectors are all in now, in order."""
        rows = len(batch.rgb)
        entry = _Entry(batch, rows, rows)
        self._entries.append(entry)
        if rows == 0:
            entry.vectors = self.start(batch.rgb)()  # (0, dim): nothing is queued
        else:
            pixels = batch.rgb
            if pixels.device.type == "cpu" and not pixels.is_pinned():
                # May be a view of a reader's reused buffer, which the reader fills again
                # once the next batch is asked for: these rows can wait longer than that.
                pixels = pixels.clone()
            self._buffer.append([entry, pixels, 0])
            self._buffered += rows
        if self.size is None:
            if self._buffered:
                self._queue(self._buffered)
        else:
            while self._buffered >= self.size:
                self._queue(self.size)
        return self._handed_on()

    def finish(self) -> list[tuple[TileBatch, np.ndarray]]:
        """The end: what is left queued as one last chunk; every batch still held, in
        order."""
        if self._buffered:
            self._queue(self._buffered)
        while self._flight:
            self._collect()
        out = self._handed_on()
        assert not self._entries, "FixedBatches: a batch without all its vectors at the end"
        return out

    def _queue(self, n: int) -> None:
        pieces, segments = [], []
        while n:
            item = self._buffer[0]
            entry, pixels, done = item
            take = min(n, entry.rows - done)
            pieces.append(pixels[done:done + take])
            segments.append((entry, done, take))
            n -= take
            self._buffered -= take
            if done + take == entry.rows:
                self._buffer.popleft()
            else:
                item[2] = done + take
        self._flight.append((self.start(_joined(pieces)), segments))
        while len(self._flight) > self.ahead:
            self._collect()

    def _collect(self) -> None:
        wait, segments = self._flight.popleft()
        vectors, at = wait(), 0
        for entry, row, n in segments:
            if entry.vectors is None:
                entry.vectors = np.empty((entry.rows, vectors.shape[1]), vectors.dtype)
            entry.vectors[row:row + n] = vectors[at:at + n]
            entry.missing -= n
            at += n

    def _handed_on(self) -> list[tuple[TileBatch, np.ndarray]]:
        out = []
        while self._entries and self._entries[0].missing == 0:
            entry = self._entries.popleft()
            out.append((entry.batch, entry.vectors))
        return out


def _joined(pieces: list[torch.Tensor]) -> torch.Tensor:
    """One tensor of the pieces' rows: on the GPU where any piece is there (page-locked
    host pieces copied to it without waiting), else in page-locked memory where the pieces
    are (the encoder's copy to the GPU does not wait for it either)."""
    if len(pieces) == 1:
        return pieces[0]
    device = next((p.device for p in pieces if p.device.type != "cpu"), None)
    if device is not None:
        return torch.cat([p.to(device, non_blocking=True) for p in pieces])
    shape = (sum(len(p) for p in pieces), *pieces[0].shape[1:])
    pinned = all(p.is_pinned() for p in pieces)
    out = torch.empty(shape, dtype=pieces[0].dtype, pin_memory=pinned)
    return torch.cat(pieces, out=out)
