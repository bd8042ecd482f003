"""Tile reading as a torch Dataset, so DataLoader worker processes read, warp, scale and
JPEG-encode tiles while the main process encodes the previous batch."""

from __future__ import annotations

import bisect
import ctypes
import io
import os
import signal
import sys
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from rasterio.errors import RasterioError
from torch.utils.data import DataLoader, Dataset

from indexer.config import JobSettings, TilingSettings
from indexer.logs import captured
from indexer.rasters.grid import TileBlock, block_window, tile_window
from indexer.rasters.inspect import RasterInfo
from indexer.rasters.reader import RasterReader

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RasterPlan:
    """One block of one raster's tiles to read. `source` is the raster's index in the job;
    tiles in `done` were committed by an earlier, interrupted run and are not read again."""

    info: RasterInfo
    block: TileBlock
    source: int
    done: frozenset[tuple[int, int]] = frozenset()


def jpeg_thumbnail(rgb: np.ndarray, size: int, quality: int) -> bytes:
    """uint8 [3, H, W] -> JPEG bytes, `size` pixels wide."""
    img = Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)))
    if img.width != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class TileDataset(Dataset):
    """Item i: the i-th tile of the plans, in order, computed (never listed): memory does not
    grow with the number of tiles."""

    def __init__(self, plans: list[RasterPlan], tile_px: int, tiling: TilingSettings,
                 job: JobSettings):
        self.plans, self.px = plans, tile_px
        self.tiling, self.job = tiling, job
        self._starts = np.cumsum([0] + [p.block.count for p in plans]).tolist()
        self._reader: RasterReader | None = None  # made in the process that reads

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> dict:
        r = bisect.bisect_right(self._starts, i) - 1
        plan = self.plans[r]
        x, y = plan.block.tile(i - self._starts[r])
        z = plan.block.zoom
        item = {"raster": plan.source, "x": x, "y": y, "z": z, "rgb": None,
                "nodata_fraction": 1.0, "thumb": None, "error": None, "warnings": [],
                "done": (x, y) in plan.done}
        if item["done"]:
            return item
        try:
            with captured() as item["warnings"]:
                if self._reader is None:
                    self._reader = RasterReader(self.tiling)
                read = self._reader.read(plan.info, tile_window(z, x, y, self.px,
                                                                plan.block.src_shift),
                                         grid=block_window(plan.block, self.px))
        except (RasterioError, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            item["error"] = f"cannot read tile {z}/{x}/{y} (truncated or corrupt file?): {msg}"
            return item
        item["nodata_fraction"] = read.nodata_fraction
        if read.nodata_fraction <= self.tiling.max_nodata_fraction:
            item["rgb"] = read.rgb
            item["thumb"] = jpeg_thumbnail(read.rgb, self.job.thumbnail_size,
                                           self.job.thumbnail_quality)
        return item


def collate(items: list[dict]) -> list[dict]:
    return items


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the job process dies (even by SIGKILL), so
    a killed job never leaves orphaned readers behind."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


def worker_init(_: int) -> None:
    """DataLoader worker start: die with the parent, one torch thread."""
    _die_with_parent()
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
    torch.set_num_threads(1)


def tile_loader(dataset: TileDataset, job: JobSettings) -> DataLoader:
    return DataLoader(
        dataset, batch_size=job.batch_size, shuffle=False, num_workers=job.workers,
        collate_fn=collate, worker_init_fn=worker_init if job.workers else None,
        prefetch_factor=4 if job.workers else None, persistent_workers=False,
    )
