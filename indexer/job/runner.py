"""Runners: where tiles are read and embedded. The job only sees `embedded()`: every tile of
the plans, in plan order, as (TileBatch, vectors) pairs. `LocalRunner` reads in DataLoader
worker processes on this machine and embeds in the calling thread; `indexer.job.ray_runner`
does both on a Ray cluster."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator

import torch

from indexer.config import JobSettings, RemoteSettings, TilingSettings
from indexer.critical import deferred_interrupts
from indexer.errors import JobError
from indexer.job.device_warp import encoder_device_type, on_device, resample_deferred
from indexer.job.fixed_batches import FixedBatches
from indexer.job.read import NO_PIXELS, RasterPlan, TileBatch, TileDataset, read_tiles, tile_loader
from indexer.job.reader_watch import ReaderWatch
from indexer.job.slots import SLOTS, SharedSlots
from indexer.job.thumbnails import device_thumbnails

# Chunks queued on the GPU while the oldest one's vectors are waited for (FixedBatches).
AHEAD = 1
# False: each batch goes to the GPU as the readers made it (the code before; benchmarks).
FIXED_BATCHES = True


class LocalRunner:
    def __init__(self, tiling: TilingSettings, job: JobSettings, tile_px: int,
                 pin_memory: bool = False, remote: RemoteSettings | None = None,
                 warp_device: torch.device | None = None):
        """`pin_memory`: batches arrive in page-locked memory (for non-blocking copies to a
        GPU); `remote`: GDAL settings and retries for remote rasters; `warp_device`: the
        readers leave the tiles that are one plain piece of the fast warp to this device
        (job.warp_on), and batches come with their pixels there."""
        if job.batch_size < 1 or job.workers < 0:
            raise ValueError("LocalRunner: job.batch_size 0 and job.workers -1 mean 'by "
                             "device': resolve them with JobSettings.for_device first")
        self.tiling, self.job, self.tile_px = tiling, job, tile_px
        self.pin_memory, self.remote, self.warp_device = pin_memory, remote, warp_device

    def batches(self, plans: list[RasterPlan],
                stages: defaultdict[str, float] | None = None) -> Iterator[TileBatch]:
        """Every tile of the plans, in plan order, in batches of at most job.batch_size
        tiles (each reader call reads job.read_batch of them, split here). A reader process
        that dies surfaces as torch's RuntimeError: see `worker_death`."""
        thumbs = None
        if self._thumbnails_on_device():
            thumbs = (self.job.thumbnail_size, self.job.thumbnail_quality)
        dataset = TileDataset(plans, self.tile_px, self.tiling, self.job, self.remote,
                              defer=self.warp_device is not None,
                              device_thumbs=thumbs is not None)
        if len(dataset) == 0:
            return
        # Each reader's pixels travel in a few buffers of its own, reused (slots.py).
        slots = (SharedSlots(self.job.workers, read_tiles(self.job), self.tile_px)
                 if self.job.workers else None)
        # Starting the reader processes forks: a second Ctrl-C (or torch's SIGCHLD handler)
        # raising inside the fork handlers would be printed and lost ("Exception ignored in
        # _releaseLock"), so it waits until the workers are up.
        t = time.perf_counter()
        with deferred_interrupts():
            it = iter(tile_loader(dataset, self.job, self.pin_memory, slots))
        if stages is not None:  # forking the readers: part of the first tiles' wait
            stages["start the readers (in first tiles)"] = time.perf_counter() - t
        # A reader killed mid-hand-over ends the main thread's read even if its SIGCHLD goes
        # unheard (reader_watch.py). With pinned memory torch's pin thread does the reading,
        # and the main thread's own waits time out and check the readers.
        watch = ReaderWatch(it) if self.job.workers and not self.pin_memory else None
        try:
            yield from self._split(it, slots, thumbs, stages)
        except (RuntimeError, EOFError, OSError) as e:
            if watch is None or watch.death is None:
                raise
            raise RuntimeError(watch.death) from e  # how the reader died, as torch says it
        finally:
            if watch is not None:
                watch.stop()

    def _split(self, it, slots: SharedSlots | None, thumbs: tuple[int, int] | None,
               stages: defaultdict[str, float] | None) -> Iterator[TileBatch]:
        """The reads of `it` resampled where deferred and split into batches of at most
        job.batch_size tiles, their readers' buffers handed back once free."""
        for read in it:
            reused = slots is not None and read.slot >= 0
            if reused and read.rgb.is_pinned():
                slots.release(read.slot)  # the pin thread copied its pixels to page-locked
                reused = False  # memory (CUDA): the buffer is free already
            if read.deferred is not None:
                t = time.perf_counter()
                read = resample_deferred(read, self.warp_device, thumbs)
                if stages is not None:  # on CUDA: queueing it (the GPU's time is the encoder's)
                    stages["warp on the device"] += time.perf_counter() - t
                if reused:  # its pixels are on the device now, or copied there
                    slots.release(read.slot)
                    reused = False
            parts = read.split(self.job.batch_size)
            yield from parts
            if reused:
                # The reader writes its next batches into this buffer: no batch handed out
                # keeps a view of it (their pixels were encoded by now).
                for part in parts:
                    part.rgb = NO_PIXELS
                slots.release(read.slot)

    def _thumbnails_on_device(self) -> bool:
        """Whether the deferred tiles' thumbnails are made on the warp's device
        (job.thumbnails_on: "auto" = where that is a GPU; on a CPU grid_sample costs more
        than the readers' OpenCV), where thumbnails.device_thumbnails allows."""
        return (self.warp_device is not None
                and on_device(self.job.thumbnails_on, self.warp_device)
                and device_thumbnails(self.tile_px, self.job.thumbnail_size))

    def embedded(self, plans: list[RasterPlan], encoder, stages: defaultdict[str, float]
                 ) -> Iterator[tuple[TileBatch, object]]:
        """(batch, vectors) for every batch of `batches()`, embedded by `encoder` in this
        thread; the time waiting for tiles, reading and encoding added to `stages`. On CUDA
        the tiles go to the GPU in chunks of exactly job.batch_size (FixedBatches: one
        shape, one plan of the GPU's libraries), chunk i+1 queued before chunk i's vectors
        are waited for, so the GPU is not idle meanwhile; a stop between batches drops the
        ones in flight (not committed: the next run reads them again). Batches come
        without their pixels (`rgb` empty): only the vectors are needed from here on."""
        cuda = encoder_device_type(encoder) == "cuda"
        later = getattr(encoder, "encode_images_later", None) if cuda else None
        fixed = None if later is None else FixedBatches(
            later, self.job.batch_size if FIXED_BATCHES else None, AHEAD)
        t, warped = time.perf_counter(), 0.0
        for batch in self.batches(plans, stages):
            # (the device's warp is timed apart, inside batches())
            now = stages.get("warp on the device", 0.0)
            waited = time.perf_counter() - t - (now - warped)
            stages["wait for tiles"] += waited
            if "first tiles (in wait for tiles)" not in stages:  # the readers' start
                stages["first tiles (in wait for tiles)"] = waited
            warped = now
            stages["read (worker seconds)"] += batch.read_s
            t = time.perf_counter()
            if fixed is None:
                out = [(batch, encoder.encode_images(batch.rgb))]
            else:
                out = fixed.add(batch)
            stages["encode"] += time.perf_counter() - t
            yield from _without_pixels(out)
            t = time.perf_counter()
        if fixed is not None:
            out = fixed.finish()
            stages["encode"] += time.perf_counter() - t
            yield from _without_pixels(out)


def _without_pixels(done: list[tuple[TileBatch, object]]
                    ) -> Iterator[tuple[TileBatch, object]]:
    """Embedded batches handed on without their pixels (encoded by now, their copy to the
    GPU done): the writer's queue would otherwise hold each batch's page-locked pixels
    (77 MB per 512 tiles of 224 px) until the batch is committed."""
    for batch, vectors in done:
        batch.rgb = NO_PIXELS
        yield batch, vectors


# How long a lost hand-over waits for the reader's death to be seen (reader_death).
DEATH_WAIT_S = 2.0


def reader_death(e: BaseException) -> JobError | None:
    """The JobError for a reader process's death however the main thread heard of it:
    torch's RuntimeError (`worker_death`), or, when the reader died in the middle of handing
    a batch over, the data queue's EOFError or ConnectionError; torch's own check of its
    readers then says whether one died (waiting at most DEATH_WAIT_S for the dead process to
    be seen, and taking its SIGCHLD handler's report meanwhile). None: not a reader's death."""
    if isinstance(e, RuntimeError):
        return worker_death(e)
    if not isinstance(e, (EOFError, ConnectionError)):
        return None
    check = getattr(torch._C, "_error_if_any_worker_fails", None)
    deadline = time.monotonic() + DEATH_WAIT_S
    try:
        while check is not None and time.monotonic() < deadline:
            check()
            time.sleep(0.02)
    except RuntimeError as err:
        return worker_death(err)
    return None


def worker_death(e: RuntimeError) -> JobError | None:
    """The JobError for torch's report of a dead reader process (killed, out of memory),
    which its SIGCHLD handler raises wherever the main thread happens to be (inside
    `batches()` or not): the job converts whatever RuntimeError its batch loop raises."""
    text = str(e)
    if "DataLoader worker" not in text:
        return None
    msg = text.splitlines()[0].strip().rstrip(".")
    # /dev/shm full: torch's allocation says so in the reader's traceback; a page it had no
    # room for at first touch kills the reader with SIGBUS.
    if "Bus error" in msg or ("shared memory" in text and "No space left on device" in text):
        return JobError(f"a tile-reading worker process died ({msg}): shared memory "
                        f"(/dev/shm) is too small for the readers' pixels ({SLOTS} batches of "
                        "job.read_batch tiles per reader): give it more (docker run "
                        "--shm-size), or lower job.read_batch or job.workers")
    return JobError(f"a tile-reading worker process died ({msg}; out of memory? try fewer "
                    "job.workers)")
