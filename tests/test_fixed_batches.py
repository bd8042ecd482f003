"""indexer/job/fixed_batches.py: the readers' batches of varying size encoded in chunks of
one size (the runner on CUDA), each batch handed on in order with its own rows' vectors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.job.fixed_batches import FixedBatches


class _Encoder:
    """Queues chunks (recorded); a tile's 'vector' is its pixels' first value and the
    chunk's number, so rows that went astray show."""

    def __init__(self):
        self.events: list[tuple[str, int, int]] = []

    def start(self, pixels: torch.Tensor):
        if len(pixels) == 0:  # as SatelliteEncoder: nothing is queued
            return lambda: np.zeros((0, 2), np.float32)
        i = sum(1 for e in self.events if e[0] == "start")
        self.events.append(("start", i, len(pixels)))
        ids = pixels.reshape(len(pixels), -1)[:, 0].double().numpy()
        vectors = np.stack([ids, np.full(len(ids), float(i))], axis=1).astype(np.float32)

        def wait():
            self.events.append(("wait", i, len(pixels)))
            return vectors

        return wait


def _batches(sizes: list[int], first: int = 0) -> list[SimpleNamespace]:
    """Batches of `sizes` tiles whose pixels hold their global row number (mod 256)."""
    out, row = [], first
    for n in sizes:
        ids = torch.arange(row, row + n) % 256
        out.append(SimpleNamespace(rgb=ids.to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2)
                                   .contiguous(), n=n, first=row))
        row += n
    return out


def _run(sizes: list[int], size: int, ahead: int = 1):
    enc = _Encoder()
    fixed = FixedBatches(enc.start, size, ahead)
    batches, got = _batches(sizes), []
    for b in batches:
        got.extend(fixed.add(b))
    got.extend(fixed.finish())
    return batches, got, enc.events


def test_chunks_are_one_size_and_each_batch_gets_its_own_rows():
    batches, got, events = _run([5, 0, 7, 3, 9, 2], size=8)
    assert [e[2] for e in events if e[0] == "start"] == [8, 8, 8, 2]  # 26 tiles
    assert [b for b, _ in got] == batches  # every batch, in order, the empty one too
    for b, v in got:
        assert v.shape == (b.n, 2) and v.dtype == np.float32
        np.testing.assert_array_equal(v[:, 0], np.arange(b.first, b.first + b.n) % 256)
    # the 7-tile batch (rows 5-11) spans chunks 0 and 1
    np.testing.assert_array_equal(got[2][1][:, 1], [0, 0, 0, 1, 1, 1, 1])


def test_the_next_chunk_is_queued_before_the_last_one_is_waited_for():
    *_, events = _run([8, 8, 8, 3], size=8)
    assert events == [("start", 0, 8), ("start", 1, 8), ("wait", 0, 8), ("start", 2, 8),
                      ("wait", 1, 8), ("start", 3, 3), ("wait", 2, 8), ("wait", 3, 3)]
    *_, events = _run([8, 8], size=8, ahead=0)
    assert events == [("start", 0, 8), ("wait", 0, 8), ("start", 1, 8), ("wait", 1, 8)]


def test_a_batch_is_handed_on_once_its_last_chunk_is_back_and_not_before():
    enc = _Encoder()
    fixed = FixedBatches(enc.start, 8, ahead=1)
    a, b, c = _batches([6, 6, 12])
    assert fixed.add(a) == []  # 6 tiles buffered: nothing queued
    assert fixed.add(b) == []  # chunk 0 (a + 2 of b) queued, not waited for
    out = fixed.add(c)  # chunks 1 and 2 queued: chunk 0 and 1 waited for
    assert [x for x, _ in out] == [a, b]
    assert [x for x, _ in fixed.finish()] == [c]


def test_pixels_in_pageable_memory_are_copied_while_they_wait():
    """A batch's pixels may be a view of a reader's reused buffer, refilled once the next
    batch is asked for: the rows that wait for a full chunk must not change with it."""
    enc = _Encoder()
    fixed = FixedBatches(enc.start, 8)
    (a,) = _batches([5])
    fixed.add(a)
    a.rgb.fill_(200)  # the reader writes its next batch into the buffer
    ((_, v),) = fixed.finish()
    np.testing.assert_array_equal(v[:, 0], np.arange(5))


def test_without_a_size_each_batch_is_a_chunk_as_it_comes():
    batches, got, events = _run([5, 0, 7, 3], size=None)
    assert [e[2] for e in events if e[0] == "start"] == [5, 7, 3]
    assert [b for b, _ in got] == batches


def test_nothing_left_and_bad_sizes():
    assert FixedBatches(_Encoder().start, 4).finish() == []
    with pytest.raises(ValueError):
        FixedBatches(_Encoder().start, 0)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 20), max_size=12), size=st.integers(1, 16),
       ahead=st.integers(0, 3))
def test_any_batch_sizes(sizes, size, ahead):
    batches, got, events = _run(sizes, size, ahead)
    assert [b for b, _ in got] == batches
    for b, v in got:
        np.testing.assert_array_equal(v[:, 0], np.arange(b.first, b.first + b.n) % 256)
    starts = [e[2] for e in events if e[0] == "start"]
    assert sum(starts) == sum(sizes) and all(n == size for n in starts[:-1])
    assert 0 < (starts[-1] if starts else size) <= size
    queued = 0  # never more than `ahead` chunks queued while one is waited for
    for kind, *_ in events:
        queued += 1 if kind == "start" else -1
        assert queued <= ahead + 1
