"""Tile reading as a torch Dataset, so DataLoader worker processes read, warp, scale and
JPEG-encode tiles while the main process encodes the previous batch: a strip of tiles per
read, a batch of strips per worker call, the pixels handed over in shared memory."""

from __future__ import annotations

import bisect
import ctypes
import functools
import os
import signal
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
from rasterio.env import set_gdal_config
from rasterio.errors import RasterioError
from torch.utils.data import DataLoader, Dataset, Sampler

from indexer.config import JobSettings, RemoteSettings, TilingSettings
from indexer.job.slots import SharedSlots, new_shared
from indexer.job.thumbnails import jpeg_crop_thumbnail, jpeg_thumbnail
from indexer.logs import captured
from indexer.rasters import vsi
from indexer.rasters.grid import TileBlock, block_window, strip_window, tile_runs
from indexer.rasters.inspect import RasterInfo
from indexer.rasters.reader import RasterReader
from indexer.rasters.remote import describe, is_remote

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RasterPlan:
    """One block of one raster's tiles to read. `source` is the raster's index in the job;
    tiles in `done` were committed by an earlier, interrupted run and are not read again."""

    info: RasterInfo
    block: TileBlock
    source: int
    done: frozenset[tuple[int, int]] = frozenset()


NO_PIXELS = torch.zeros((0, 3, 1, 1), dtype=torch.uint8)  # a batch without tiles to embed
STRIP_TILES = 16  # tiles of one row read as one window and cut in numpy


@dataclass
class LaterThumbs:
    """JPEG thumbnails still being made (device_warp.resample_deferred): item pick[i] of
    the list `future` gives is the thumbnail of the batch's pixel row rows[i]."""

    future: Future
    pick: np.ndarray  # int64 [L]
    rows: np.ndarray  # int64 [L]


@dataclass
class TileBatch:
    """Tiles read by a worker process, as arrays. The pixels are one uint8 tensor (rows =
    tiles with pixels), which reaches the main process through shared memory, not pickled;
    the rest is a few bytes per tile."""

    raster: np.ndarray  # int64 [T]: the raster's index in the job
    z: np.ndarray  # int64 [T]
    x: np.ndarray  # int64 [T]
    y: np.ndarray  # int64 [T]
    nodata: np.ndarray  # float32 [T]: nodata fraction (1 for tiles not read)
    done: np.ndarray  # bool [T]: committed by an earlier run, not read again
    pixel_row: np.ndarray  # int64 [T]: the tile's row in `rgb` and `thumbs`, -1 for none
    rgb: torch.Tensor  # uint8 [K, 3, px, px]
    # [K] JPEG thumbnails; None where the encoder's device makes it (TileDataset(
    # device_thumbs=True)), until `thumbnails()` gets it from `later_thumbs`.
    thumbs: list[bytes | None]
    errors: dict[int, str] = field(default_factory=dict)  # raster -> why it cannot be read
    warnings: list[str] = field(default_factory=list)
    read_s: float = 0.0  # worker seconds spent on this batch
    # The reader process whose reused buffer holds `rgb` (-1: a buffer of its own): the
    # runner hands it back (SharedSlots.release) once done with the pixels.
    slot: int = -1
    # Tiles left to the encoder's device (TileDataset(defer=True)): `deferred` [K] marks the
    # kept tiles (in order) that are still source pixels, `crops` [D, 3, C, C] (each from its
    # top left corner), `maps` [D, 2, 3] (tile pixel -> crop pixel) and `scales`
    # (the uint8 scaling of their rasters, as the readers scale tiles); `rgb` then
    # holds the K - D others. device_warp.resample_deferred makes them tiles. None: all in rgb.
    deferred: np.ndarray | None = None
    crops: torch.Tensor | None = None  # uint8; uint16 pixels as int16 (torch's own uint16
    # type has few operations, on CUDA fewer): device_warp reads them back
    maps: np.ndarray | None = None
    scales: np.ndarray | None = None  # [D, 2, 3]: values mapped to 0 and to 255, per band
    later_thumbs: LaterThumbs | None = None

    def __len__(self) -> int:
        return len(self.raster)

    def thumbnails(self) -> list[bytes]:
        """`thumbs`, those still being made waited for (and raised from, if that failed)."""
        if self.later_thumbs is not None:
            later, self.later_thumbs = self.later_thumbs, None
            jpegs = later.future.result()
            for p, r in zip(later.pick.tolist(), later.rows.tolist(), strict=True):
                self.thumbs[r] = jpegs[p]
        return self.thumbs

    def split(self, n: int) -> list[TileBatch]:
        """Consecutive batches of at most n tiles (their pixels are views of this batch's);
        a raster's error, the warnings and the read time go with the first part."""
        if self.deferred is not None:
            raise ValueError("TileBatch.split: resample the deferred tiles first")
        if len(self) <= n:
            return [self]
        out, told = [], set()
        for a in range(0, len(self), n):
            b = min(a + n, len(self))
            rows = self.pixel_row[a:b]
            held = rows[rows >= 0]
            p0 = int(held[0]) if len(held) else 0
            p1 = int(held[-1]) + 1 if len(held) else 0
            here = set(self.raster[a:b].tolist())
            errors = {r: e for r, e in self.errors.items() if r in here and r not in told}
            told |= errors.keys()
            later = self.later_thumbs
            if later is not None:
                mine = (later.rows >= p0) & (later.rows < p1)
                later = LaterThumbs(later.future, later.pick[mine], later.rows[mine] - p0)
            out.append(TileBatch(
                raster=self.raster[a:b], z=self.z[a:b], x=self.x[a:b], y=self.y[a:b],
                nodata=self.nodata[a:b], done=self.done[a:b],
                pixel_row=np.where(rows >= 0, rows - p0, -1), rgb=self.rgb[p0:p1],
                thumbs=self.thumbs[p0:p1], errors=errors,
                warnings=self.warnings if a == 0 else [],
                read_s=self.read_s if a == 0 else 0.0, later_thumbs=later))
        return out

    def pin_memory(self) -> TileBatch:
        """DataLoader(pin_memory=True) calls this: page-locked pixels copy to a GPU
        asynchronously."""
        self.rgb = self.rgb.pin_memory()
        if self.crops is not None:
            self.crops = self.crops.pin_memory()
        return self


class TileDataset(Dataset):
    """Item i: the i-th strip of up to STRIP_TILES tiles (one tile row of one plan's block),
    in plan order, computed (never listed): memory does not grow with the number of tiles.
    A strip is read as one window; `collate` makes a TileBatch of several."""

    def __init__(self, plans: list[RasterPlan], tile_px: int, tiling: TilingSettings,
                 job: JobSettings, remote: RemoteSettings | None = None, defer: bool = False,
                 device_thumbs: bool = False):
        """`defer`: tiles that are one plain piece of the fast warp are not resampled here:
        their source pixels travel instead (TileBatch.crops), for the encoder's device;
        `device_thumbs`: nor are their thumbnails made here (their `thumbs` are None:
        resample_deferred makes them, thumbnails.device_thumbnails says where it can)."""
        self.plans, self.px = plans, tile_px
        self.tiling, self.job, self.remote, self.defer = tiling, job, remote, defer
        self.device_thumbs = defer and device_thumbs
        self.strip = max(1, min(STRIP_TILES, job.batch_size or STRIP_TILES))
        self._per_row = [-(-p.block.width // self.strip) for p in plans]
        counts = [n * (p.block.y1 - p.block.y0 + 1) for n, p in zip(self._per_row, plans,
                                                                    strict=True)]
        self._starts = np.cumsum([0] + counts).tolist()
        self._reader: RasterReader | None = None  # made in the process that reads

    def __len__(self) -> int:
        return self._starts[-1]

    def tiles(self, i: int) -> int:
        """How many tiles strip i holds (without reading it)."""
        return self._where(i)[3]

    def _where(self, i: int) -> tuple[int, int, int, int]:
        r = bisect.bisect_right(self._starts, i) - 1
        block = self.plans[r].block
        row, part = divmod(i - self._starts[r], self._per_row[r])
        x0 = block.x0 + part * self.strip
        return r, x0, block.y0 + row, min(self.strip, block.x1 - x0 + 1)

    def __getitem__(self, i: int) -> dict:
        t0 = time.perf_counter()
        r, x0, y, n = self._where(i)
        plan = self.plans[r]
        xs = np.arange(x0, x0 + n)
        done = np.array([(x, y) in plan.done for x in xs.tolist()], dtype=bool)
        out = {"raster": plan.source, "z": plan.block.zoom, "x": xs, "y": y, "done": done,
               "nodata": np.ones(n, dtype=np.float32), "rgb": None, "has": np.zeros(n, bool),
               "deferred": {}, "thumbs": [], "error": None, "warnings": []}
        if done.all():
            out["read_s"] = time.perf_counter() - t0
            return out
        try:
            with captured() as out["warnings"]:
                if self._reader is None:
                    self._reader = RasterReader(self.tiling, remote=self.remote)
                window = strip_window(plan.block, self.px, x0, y, n)
                grid = block_window(plan.block, self.px)
                if self.defer:
                    rgb, valid, deferred = self._reader.read_deferring(plan.info, window,
                                                                       grid, self.px)
                    out["deferred"] = {d.tile: d for d in deferred}
                    out["scale"] = (plan.info.scale_lo, plan.info.scale_hi)
                else:
                    rgb, valid = self._reader.read_masked(plan.info, window, grid=grid)
        except (RasterioError, OSError) as e:
            z = plan.block.zoom
            if is_remote(plan.info.path):
                out["error"] = f"cannot read tile {z}/{x0}/{y}: {describe(e)}"
            else:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                out["error"] = (f"cannot read tile {z}/{x0}/{y} (truncated or corrupt file?): "
                                f"{msg}")
            out["read_s"] = time.perf_counter() - t0
            return out
        px = self.px
        if valid.all():  # the usual strip: nothing to count
            out["nodata"] = np.zeros(n, dtype=np.float32)
        else:
            out["nodata"] = 1.0 - valid.reshape(px, n, px).mean(axis=(0, 2), dtype=np.float32)
        out["has"] = ~done & (out["nodata"] <= self.tiling.max_nodata_fraction)
        # The strip's tiles as views (no copy): collate copies the kept ones, once, into
        # the batch's tensor; the thumbnails read them where they are.
        out["rgb"] = rgb.reshape(3, px, n, px).transpose(2, 0, 1, 3)  # [n, 3, px, px]
        size, quality, later = self.job.thumbnail_size, self.job.thumbnail_quality, out["deferred"]
        out["thumbs"] = [(None if self.device_thumbs else
                          jpeg_crop_thumbnail(later[i].crop, later[i].matrix, px, size, quality,
                                              out["scale"]))
                         if i in later else jpeg_thumbnail(out["rgb"][i], size, quality)
                         for i in np.flatnonzero(out["has"]).tolist()]
        out["read_s"] = time.perf_counter() - t0
        return out


def collate(strips: list[dict], slots: SharedSlots | None = None) -> TileBatch:
    """Strips -> one TileBatch (in the worker process: its pixels are copied once, into the
    tensor that travels through shared memory: the reader's next reused buffer in `slots`
    when there is one free)."""
    t0 = time.perf_counter()
    counts = [len(s["x"]) for s in strips]
    has = np.concatenate([s["has"] for s in strips])
    pixel_row = np.full(len(has), -1, dtype=np.int64)
    kept = int(has.sum())
    pixel_row[has] = np.arange(kept)
    slot = -1
    # Kept tiles whose source pixels travel instead (TileDataset(defer=True)), in order,
    # with their raster's scaling.
    later, scales, flags = [], [], []
    for s in strips:
        mine = s.get("deferred") or {}
        kept_here = np.flatnonzero(s["has"]).tolist()
        flags.append(np.array([i in mine for i in kept_here], dtype=bool))
        for i in kept_here if mine else ():
            if i in mine:
                later.append(mine[i])
                scales.append(s["scale"])
    parts = [(s["rgb"], _without(s["has"], s["deferred"]) if s.get("deferred") else s["has"])
             for s in strips if s["rgb"] is not None and s["has"].any()]
    parts = [(tiles, keep) for tiles, keep in parts if keep.any()]
    rgb, crops = NO_PIXELS, None
    if parts or later:
        px = _px(strips)
        side = max((max(d.crop.shape[1:]) for d in later), default=0)
        # One type for the batch's crops: uint16 if any raster's is (uint8 ones widened).
        wide = any(d.crop.dtype != np.uint8 for d in later)
        room = kept * 3 * px * px  # a batch's tiles: the crops fit beside the others when
        rows = kept - len(later)  # they are no larger than tiles (upsampled, or at par)
        a0 = -(-rows * 3 * px * px // 8) * 8  # the crops start 8-byte aligned
        need = a0 + len(later) * 3 * side * side * (2 if wide else 1)
        if slots is not None and need <= room and (got := slots.take((kept, 3, px, px))):
            flat, slot = got[0].view(-1), got[1]
        else:
            flat = _shared_or_not(need)
        rgb = flat[:rows * 3 * px * px].view(rows, 3, px, px)
        if later:
            crops = flat[a0:need]
            crops = (crops.view(torch.int16) if wide else crops).view(len(later), 3, side,
                                                                       side)
            c = crops.numpy().view(np.uint16) if wide else crops.numpy()
            for i, d in enumerate(later):  # each from its top left corner
                c[i, :, :d.crop.shape[1], :d.crop.shape[2]] = d.crop
        out, a = rgb.numpy(), 0
        for tiles, keep in parts:
            # Runs of kept tiles copied by slice: a strided block copy (np.compress on these
            # strip views gathers row by row, 7x slower with every tile kept: bench/copies.py).
            for i0, i1 in tile_runs(keep):
                out[a:a + i1 - i0] = tiles[i0:i1]
                a += i1 - i0
    errors: dict[int, str] = {}
    for s in strips:
        if s["error"] and s["raster"] not in errors:
            errors[s["raster"]] = s["error"]
    return TileBatch(
        raster=np.repeat([s["raster"] for s in strips], counts).astype(np.int64),
        z=np.repeat([s["z"] for s in strips], counts).astype(np.int64),
        x=np.concatenate([s["x"] for s in strips]).astype(np.int64),
        y=np.repeat([s["y"] for s in strips], counts).astype(np.int64),
        nodata=np.concatenate([s["nodata"] for s in strips]).astype(np.float32),
        done=np.concatenate([s["done"] for s in strips]),
        pixel_row=pixel_row, rgb=rgb,
        thumbs=[t for s in strips for t in s["thumbs"]],
        errors=errors, warnings=[w for s in strips for w in s["warnings"]],
        read_s=sum(s["read_s"] for s in strips) + time.perf_counter() - t0, slot=slot,
        deferred=np.concatenate(flags) if later else None, crops=crops,
        maps=(np.stack([d.matrix for d in later]).astype(np.float32) if later else None),
        scales=np.asarray(scales, dtype=np.float32) if later else None,
    )


def _without(has: np.ndarray, deferred: dict) -> np.ndarray:
    """The kept tiles of a strip that were resampled in the reader."""
    keep = has.copy()
    keep[list(deferred)] = False
    return keep


def _px(strips: list[dict]) -> int:
    """The tile side of the strips that were read."""
    return next(s["rgb"].shape[-1] for s in strips if s["rgb"] is not None)


def _shared_or_not(n: int) -> torch.Tensor:
    """n bytes: in a DataLoader worker straight into shared memory (as torch's own
    default_collate does), or the queue would copy the tensor there once more."""
    if torch.utils.data.get_worker_info() is not None:
        return new_shared((n,))
    return torch.empty(n, dtype=torch.uint8)


def read_tiles(job: JobSettings) -> int:
    """At most this many tiles per reader call."""
    return max(job.batch_size, job.read_batch)


# The readers' first calls are smaller, doubling each round up to job.read_batch (1/16,
# 1/8, 1/4, 1/2 of it): the first tiles reach the encoder after a 32-tile call, not a
# 512-tile one (~0.4 s of an idle GPU at the start of every job), and each round is read
# while the encoder works through the one before.
RAMP_ROUNDS = 4


class StripBatches(Sampler):
    """Strips grouped so that a batch holds at most `batch_size` tiles (at least one strip),
    yielded lazily. `readers`: the groups go to that many reader processes in turn, each
    reader's first RAMP_ROUNDS groups smaller (see RAMP_ROUNDS); 0: all full."""

    def __init__(self, dataset: TileDataset, batch_size: int, readers: int = 0):
        self.dataset, self.batch_size, self.readers = dataset, batch_size, readers

    def _limit(self, k: int) -> int:
        """At most this many tiles in group k."""
        if not self.readers:
            return self.batch_size
        return max(1, self.batch_size >> max(0, RAMP_ROUNDS - k // self.readers))

    def __iter__(self):
        group, tiles, k = [], 0, 0
        for i in range(len(self.dataset)):
            n = self.dataset.tiles(i)
            if group and tiles + n > self._limit(k):
                yield group
                group, tiles, k = [], 0, k + 1
            group.append(i)
            tiles += n
        if group:
            yield group


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the job process dies (even by SIGKILL), so
    a killed job never leaves orphaned readers behind."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


def worker_init(_: int, cache_mb: int = 0) -> None:
    """DataLoader worker start: die with the parent, one torch thread, and GDAL's block
    cache capped at `cache_mb` MB (0: GDAL's default)."""
    _die_with_parent()
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
    torch.set_num_threads(1)
    if cache_mb:
        reader_cache(cache_mb)


def reader_cache(cache_mb: int) -> None:
    """Cap this process's GDAL block cache (GDAL's default, 5 % of the machine's memory per
    process, is 75 % of it for 15 readers; and a reader that reads each block about once
    only pays page faults to fill it: job.reader_cache_mb)."""
    set_gdal_config("GDAL_CACHEMAX", cache_mb << 20)


def tile_loader(dataset: TileDataset, job: JobSettings, pin_memory: bool = False,
                slots: SharedSlots | None = None) -> DataLoader:
    """Reader processes (job.workers) reading the dataset in calls of job.read_batch tiles;
    with `slots` (made for job.workers readers), their pixels travel in reused buffers."""
    if job.workers and any(is_remote(p.info.path) for p in dataset.plans):
        vsi.before_fork()
    return DataLoader(
        dataset, batch_sampler=StripBatches(dataset, read_tiles(job), readers=job.workers),
        num_workers=job.workers,
        collate_fn=functools.partial(collate, slots=slots),
        worker_init_fn=(functools.partial(worker_init, cache_mb=job.reader_cache_mb)
                        if job.workers else None),
        prefetch_factor=2 if job.workers else None, persistent_workers=False,
        pin_memory=pin_memory,
    )
