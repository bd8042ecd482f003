"""Reused shared-memory buffers for the pixels reader processes hand the main process.

A tensor that crosses a DataLoader queue lives in shared memory. Made new for every batch
(as torch's default_collate does), its pages are faulted in and zeroed by the kernel in the
reader, one per 4 KiB (37 per 224 px tile), and unmapped again once the main process drops
the batch. Instead each reader writes its batches into a few buffers of its own, made on
first use and reused in turn (on the 2-core VM: 79 -> 39 page faults per tile, the readers'
system time -40 %; BENCHMARKS.md, "The readers' other costs"). The main process gives a
buffer back once it is done with the batch in it (`release`); a semaphore per reader keeps
the reader from writing into a buffer still in use.

Why SLOTS = 3 are enough: a DataLoader reader has at most prefetch_factor (2) batches given
out and not yet taken by the main process, and the main process gives a reader's batch back
before it takes that reader's next one: in use at once are the batch being encoded, one
waiting in the queue and one being written. A reader that still finds none free within
SLOT_WAIT_S (a main process stalled that long) writes into a new buffer, as before: slower,
never stuck.
"""

from __future__ import annotations

import math
import multiprocessing

import torch

SLOTS = 3
SLOT_WAIT_S = 5.0


def new_shared(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor in shared memory (no copy, unlike share_memory_())."""
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class SharedSlots:
    """SLOTS buffers of `tiles` tiles of `px` pixels per reader process. Made in the main
    process before the readers start (their semaphores are inherited); each reader makes its
    own buffers on first use."""

    def __init__(self, readers: int, tiles: int, px: int, slots: int = SLOTS):
        self.shape = (tiles, 3, px, px)
        self.slots = slots
        self._free = [multiprocessing.Semaphore(slots) for _ in range(readers)]
        self._buffers: list[torch.Tensor] | None = None  # in a reader process
        self._next = 0

    def take(self, shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, int] | None:
        """In a reader process: (a tensor of `shape` [tiles, 3, px, px] in this reader's next
        buffer, the reader's id), or None (tiles of another size, more than a buffer holds,
        not in a reader, or no buffer free in time): the caller then makes a new tensor."""
        info = torch.utils.data.get_worker_info()
        if (info is None or info.id >= len(self._free) or shape[1:] != self.shape[1:]
                or shape[0] > self.shape[0]):
            return None
        if not self._free[info.id].acquire(timeout=SLOT_WAIT_S):
            return None
        if self._buffers is None:
            self._buffers = [new_shared(self.shape) for _ in range(self.slots)]
        # The semaphore counts buffers given back, and they come back in the order they
        # were taken: the oldest is free whenever the semaphore lets a reader through.
        buf = self._buffers[self._next % self.slots]
        self._next += 1
        return buf[:shape[0]], info.id

    def release(self, reader: int) -> None:
        """In the main process: reader `reader`'s oldest buffer in use is free again."""
        self._free[reader].release()
