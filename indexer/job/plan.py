"""Plan: which rasters need indexing, at which zoom, and which of their tiles are still to
be read (an interrupted run's committed tiles are not read again)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from indexer.config import Settings
from indexer.errors import InputError
from indexer.job.read import RasterPlan
from indexer.job.report import JobReport
from indexer.rasters.grid import choose_zoom, raster_blocks, tile_gsd_m
from indexer.rasters.hashing import file_stat, known_or_file_sha256
from indexer.rasters.inspect import RasterInfo, inspect_raster
from indexer.rasters.sources import RasterSource
from indexer.store.writer import IndexWriter, SourceEntry


def source_key(path: str, sha256: str) -> str:
    """Sources are keyed by absolute path + content hash."""
    return hashlib.sha256(f"{path}\n{sha256}".encode()).hexdigest()[:20]


@dataclass
class Pending:
    """Bookkeeping for one raster while its tiles stream through."""

    key: str
    entry: SourceEntry
    info: RasterInfo
    remaining: int  # tiles not yet through the job (those committed earlier included)
    written: int = 0
    nodata: int = 0
    error: str | None = None
    finished: bool = False
    resumed: int = 0  # tiles committed by an earlier, interrupted run


def plan_sources(writer: IndexWriter, sources: list[RasterSource], settings: Settings,
                 tile_px: int, report: JobReport, problem: Callable[[InputError], None],
                 progress: Callable = iter) -> tuple[list[RasterPlan], list[Pending]]:
    """Read plans (blocks of tiles) and per-raster bookkeeping for the sources that are new,
    changed or partly indexed; unchanged ones are counted, changed ones replace their old
    tiles, bad ones go to `problem`."""
    by_path: dict[str, list[str]] = {}
    for key, e in writer.sources.items():
        by_path.setdefault(e.path, []).append(key)
    known = {(e.path, e.size, e.mtime_ns): e.content_sha256 for e in writer.sources.values()}
    plans: list[RasterPlan] = []
    pendings: list[Pending] = []
    for src in progress(sources):
        try:
            sha = known_or_file_sha256(src.path, known)
        except OSError as e:
            problem(InputError(src.path, f"cannot read file ({e.strerror})"))
            continue
        key = source_key(src.path, sha)
        old = writer.sources.get(key)
        if old and old.complete:
            report.rasters_unchanged += 1
            continue
        try:
            info = inspect_raster(src, settings.discovery, settings.tiling)
        except InputError as e:
            problem(e)
            continue
        for stale in by_path.get(src.path, []):
            if stale != key:  # same path, new content: the old tiles go
                writer.remove(stale)
                report.rasters_replaced += 1
        zoom = choose_zoom(info.native_gsd_m, info.centre_lat, tile_px, settings.tiling)
        blocks = raster_blocks(info, zoom)
        count = sum(b.count for b in blocks)
        limit = settings.job.max_tiles_per_raster
        if count > limit:
            problem(InputError(src.path, f"would give {count:,} tiles at zoom {zoom} (more "
                               f"than job.max_tiles_per_raster = {limit:,}): a runaway size, "
                               "or raise the limit"))
            continue
        done = set()
        if old:
            done = {(x, y) for z, x, y in writer.committed_tiles(key) if z == zoom}
        size, mtime = file_stat(src.path)
        entry = SourceEntry(
            path=src.path, content_sha256=sha, size=size, mtime_ns=mtime,
            stac_item=src.stac_item, zoom=zoom, gsd_m=tile_gsd_m(zoom, info.centre_lat, tile_px),
            native_gsd_m=info.native_gsd_m,
            acquired=info.acquired.isoformat() if info.acquired else None, sensor=info.sensor,
            crs=info.crs, tiles=len(done))
        r = len(pendings)
        for block in blocks:
            mine = frozenset(t for t in done if block.x0 <= t[0] <= block.x1
                             and block.y0 <= t[1] <= block.y1)
            plans.append(RasterPlan(info, block, r, mine))
        pendings.append(Pending(key, entry, info, remaining=count, written=len(done),
                                resumed=len(done)))
    return plans, pendings


def plan_line(pendings: list[Pending]) -> str | None:
    """One log line saying what the run will do."""
    if not pendings:
        return None
    biggest = max(pendings, key=lambda p: p.remaining)
    total = sum(p.remaining for p in pendings)
    return (f"plan: {len(pendings)} raster(s) to index, {total:,} tiles (largest: "
            f"{Path(biggest.entry.path).name}, {biggest.remaining:,} tiles at zoom "
            f"{biggest.entry.zoom})")
