"""Plan: which rasters need indexing, at which zoom, and which of their tiles are still to
be read (an interrupted run's committed tiles are not read again)."""

from __future__ import annotations

import bisect
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from indexer.config import RemoteSettings, Settings
from indexer.errors import InputError
from indexer.job.read import RasterPlan
from indexer.job.report import JobReport
from indexer.rasters.grid import (
    TileBlock,
    choose_zoom,
    column_bands,
    raster_blocks,
    tile_gsd_m,
)
from indexer.rasters.hashing import file_stat, known_or_file_sha256
from indexer.rasters.inspect import RasterInfo, inspect_raster
from indexer.rasters.remote import identities, is_remote, public
from indexer.rasters.sources import RasterSource
from indexer.store.writer import IndexWriter, SourceEntry


def source_key(path: str, sha256: str) -> str:
    """Sources are keyed by absolute path + content hash (remote: public URL + item id and
    remote version)."""
    return hashlib.sha256(f"{path}\n{sha256}".encode()).hexdigest()[:20]


@dataclass
class Pending:
    """Bookkeeping for one raster while its tiles stream through."""

    key: str
    entry: SourceEntry
    info: RasterInfo
    remaining: int  # tiles not yet through the job (those committed earlier included)
    total: int = 0  # tiles of the raster at its zoom
    written: int = 0
    nodata: int = 0
    error: str | None = None
    finished: bool = False
    resumed: int = 0  # tiles committed by an earlier, interrupted run
    # A raster at a path new to the index, hashed while its tiles are read (the job's
    # hash_while_reading): (content hash, size, mtime) or the OSError, to come. Until then
    # `key` is "" and the entry has no hash; the committer holds the raster's tiles for it.
    identity: Future | None = None


@dataclass(frozen=True)
class Identity:
    """Which version of a raster a source is. Local: path, size, mtime and content hash;
    remote: the URL without its query, the STAC item id and the remote version (file:checksum,
    ETag, or Last-Modified), from one HEAD request at most, never a download."""

    key: str
    name: str  # the path or public URL stored with the tiles
    sha256: str = ""  # local content hash
    size: int = 0
    mtime_ns: int = 0
    version: str = ""  # remote version
    later: Future | None = None  # a local hash still being computed (key "" until then)


# Local files hashed at once: hashlib and file reads release the GIL, so a few threads
# hash a few files in parallel (bench/plan.py; one thread: 1.4 GB/s on the 2-core VM): 4,
# or half the cores up to 8 on a machine of more than 8 cores (e.g. a GPU machine's).
HASH_THREADS = min(8, max(4, (os.cpu_count() or 1) // 2))

# Remote rasters are inspected remote.stat_workers at once (inspected()): each waits on ~3
# requests in turn (its header, its directory, a small overview), and with 50 ms a request
# 8 at once check 48 COGs 6.3-6.6x as fast as one (bench/plan.py --urls). Each thread sets
# its own GDAL options (rasterio's Env is per thread).
INSPECT_AHEAD = 4
# Local ones LOCAL_INSPECT_THREADS at once: a small COG's check is mostly Python under the
# GIL (~6 ms: 2 threads gained ~15 % on 2 cores), but a larger raster's is mostly GDAL
# decoding with the GIL let go (an 8,000 px DEFLATE COG 33 ms, a 6,000 px raster in strips
# 11 ms: 2 threads 1.5-1.7x as fast on 2 cores, 4 no better there; bench/plan.py --local).
# Half the cores, 2 to 8; the threads end with the plan, before the readers are forked from
# this process.
LOCAL_INSPECT_THREADS = min(8, max(2, (os.cpu_count() or 1) // 2))

# The column bands of a raster stored in blocks, in tiles (grid.column_bands): two reader
# strips wide, so a 512-tile read batch is ~32 x 16 tiles instead of a slab of whole rows.
BAND_TILES = 32


def _no_progress(items, **_):
    return items


class Hasher:
    """Content hashes of local files, HASH_THREADS at a time, on threads that live as long
    as the job (files hashed while their tiles are read are waited for at commit time).
    `close()` stops them at their next chunk."""

    def __init__(self, known: dict):
        self.known = known  # (path, size, mtime) -> the hash recorded for it
        self.stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, path: str) -> Future:
        """The future (content hash, size, mtime) of a local file, or its OSError."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=HASH_THREADS,
                                            thread_name_prefix="satfind-hash")
        return self._pool.submit(self._one, path)

    def _one(self, path: str) -> tuple[str, int, int] | OSError:
        try:
            sha = known_or_file_sha256(path, self.known, self.stop)
            return (sha, *file_stat(path))
        except OSError as e:
            return e

    def close(self) -> None:
        self.stop.set()  # (set once all is done too: nothing is left to stop then)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Hasher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _local_identities(paths: list[str], hasher: Hasher, progress: Callable
                      ) -> dict[str, tuple[str, int, int] | OSError]:
    """(content hash, size, mtime) of each local file (the hash recorded for an unchanged
    path, size and mtime taken as it is), or why not, waited for under a progress bar."""
    futures = {hasher.submit(p): p for p in dict.fromkeys(paths)}
    if not futures:
        return {}
    return {futures[f]: f.result() for f in progress(as_completed(futures),
                                                      desc="hashing rasters",
                                                      total=len(futures))}


def known_hashes(writer: IndexWriter) -> dict[tuple[str, int, int], str]:
    """(path, size, mtime) -> content hash, as the index recorded them."""
    return {(e.path, e.size, e.mtime_ns): e.content_sha256 for e in writer.sources.values()}


def identify(writer: IndexWriter, sources: list[RasterSource], remote: RemoteSettings,
             problem: Callable[[InputError], None], progress: Callable = _no_progress,
             hasher: Hasher | None = None, later: bool = False
             ) -> list[tuple[RasterSource, Identity]]:
    """Each source's identity (remote ones asked for concurrently, local files hashed
    HASH_THREADS at a time by `hasher`, or by one of its own); unreadable ones go to
    `problem`. `later`: local files at paths the index has no source at are not waited for
    (their Identity.later; they can have no tiles in the index, whatever their content).
    `progress(items, desc=, total=)` wraps the hashing waited for (e.g. in a bar)."""
    if hasher is None:
        with Hasher(known_hashes(writer)) as own:
            return identify(writer, sources, remote, problem, progress, own, later=False)
    far = [s for s in sources if is_remote(s.path)]
    answers = dict(zip([s.path for s in far],
                       identities([(s.path, s.checksum, s.size) for s in far], remote),
                       strict=True))
    indexed = {e.path for e in writer.sources.values()} if later else None
    local = [s.path for s in sources if not is_remote(s.path)]
    near = _local_identities([p for p in local if indexed is None or p in indexed], hasher,
                             progress)
    coming = {p: hasher.submit(p) for p in dict.fromkeys(local) if p not in near}
    out = []
    for src in sources:
        if is_remote(src.path):
            got = answers[src.path]
            if isinstance(got, InputError):
                problem(got)
                continue
            name = public(src.path)
            ident = Identity(source_key(name, f"{src.item_id or ''}\n{got.version}"), name,
                             size=got.size, version=got.version)
        elif src.path in coming:
            ident = Identity("", src.path, later=coming[src.path])
        else:
            ident = local_identity(src.path, near[src.path])
            if isinstance(ident, str):
                problem(InputError(src.path, ident))
                continue
        out.append((src, ident))
    return out


def local_identity(path: str, hashed: tuple[str, int, int] | OSError) -> Identity | str:
    """A local file's identity from what the Hasher gave (its hash, size and mtime), or
    why it has none."""
    if isinstance(hashed, OSError):
        return f"cannot read file ({hashed.strerror or hashed})"
    sha, size, mtime = hashed
    return Identity(source_key(path, sha), path, sha, size, mtime)


def plan_sources(writer: IndexWriter, sources: list[RasterSource], settings: Settings,
                 tile_px: int, report: JobReport, problem: Callable[[InputError], None],
                 progress: Callable = _no_progress,
                 warn: Callable[[str], None] = lambda _: None,
                 hasher: Hasher | None = None, later: bool = False
                 ) -> tuple[list[RasterPlan], list[Pending]]:
    """Read plans (blocks of tiles) and per-raster bookkeeping for the sources that are new,
    changed or partly indexed; unchanged ones are counted, changed ones replace their old
    tiles, bad ones go to `problem`. `progress(items, desc=, total=)` wraps the hashing and
    the checking of the rasters. `hasher` and `later`: see `identify` (a Pending of a file
    hashed later has its `identity` to wait for)."""
    by_path: dict[str, list[str]] = {}
    for key, e in writer.sources.items():
        by_path.setdefault(e.path, []).append(key)
    plans: list[RasterPlan] = []
    pendings: list[Pending] = []
    todo = []
    for src, ident in identify(writer, sources, settings.remote, problem, progress, hasher,
                               later):
        old = writer.sources.get(ident.key)
        if old and old.complete:
            report.rasters_unchanged += 1
        else:
            todo.append((src, ident, old))
    inspections = inspected([src for src, _, _ in todo], settings)
    for (src, ident, old), info in progress(zip(todo, inspections, strict=True),
                                            desc="checking rasters", total=len(todo)):
        if isinstance(info, InputError):
            problem(info)
            continue
        key = ident.key
        for stale in by_path.get(ident.name, []):
            if stale != key:  # same path, new content: the old tiles go
                writer.remove(stale)
                report.rasters_replaced += 1
        zoom = choose_zoom(info.native_gsd_m, info.centre_lat, tile_px, settings.tiling)
        # A resumed raster is read in the order its `through` counts (an index from before
        # the bands: whole rows); a new one in column bands where it is stored in blocks.
        resumed = old is not None and old.zoom == zoom and old.through > 0
        band = old.band if resumed else new_band(info)
        blocks = column_bands(raster_blocks(info, zoom), band)
        count = sum(b.count for b in blocks)
        limit = settings.job.max_tiles_per_raster
        if count > limit:
            problem(InputError(ident.name, f"would give {count:,} tiles at zoom {zoom} (more "
                               f"than job.max_tiles_per_raster = {limit:,}): a runaway size, "
                               "or raise the limit"))
            continue
        gsd = tile_gsd_m(zoom, info.centre_lat, tile_px)
        if line := _overview_warning(src, ident, info, gsd, zoom):
            warn(line)
        committed: set[tuple[int, int]] = set()
        done: set[tuple[int, int]] = set()
        if old:
            committed = {(x, y) for z, x, y in writer.committed_tiles(key) if z == zoom}
            done = committed | (first_tiles(blocks, old.through) if resumed else set())
        entry = SourceEntry(
            path=ident.name, content_sha256=ident.sha256, size=ident.size,
            mtime_ns=ident.mtime_ns, stac_item=src.stac_item, zoom=zoom, gsd_m=gsd,
            native_gsd_m=info.native_gsd_m,
            acquired=info.acquired.isoformat() if info.acquired else None, sensor=info.sensor,
            crs=info.crs, tiles=len(committed), item_id=src.item_id,
            remote_version=ident.version, through=old.through if resumed else 0, band=band)
        r = len(pendings)
        for block, mine in zip(blocks, by_block(done, blocks), strict=True):
            plans.append(RasterPlan(info, block, r, mine))
        pendings.append(Pending(key, entry, info, remaining=count, total=count,
                                written=len(committed), nodata=len(done - committed),
                                resumed=len(committed), identity=ident.later))
    return plans, pendings


def inspected(sources: list[RasterSource], settings: Settings
              ) -> Iterator[RasterInfo | InputError]:
    """inspect_raster of each source, in order (its InputError where it fails):
    remote.stat_workers at once where some are remote, else LOCAL_INSPECT_THREADS (at most
    INSPECT_AHEAD x that many ahead of the caller); in this thread where that is 1. The
    threads are gone once the iteration has ended."""
    if not sources:
        return
    threads = (settings.remote.stat_workers if any(is_remote(s.path) for s in sources)
               else LOCAL_INSPECT_THREADS)

    stop = threading.Event()

    def one(src: RasterSource) -> RasterInfo | InputError:
        try:
            return inspect_raster(src, settings.discovery, settings.tiling, settings.remote,
                                  stop)
        except InputError as e:
            return e

    if threads == 1:
        yield from map(one, sources)
        return
    ahead: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="satfind-inspect") as pool:
        try:
            for src in sources:
                ahead.append(pool.submit(one, src))
                if len(ahead) >= INSPECT_AHEAD * threads:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:  # stopped early (Ctrl-C, an error): only the running attempts are waited
            stop.set()  # for, not their retries (Ctrl-C reaches the main thread only)
            for f in ahead:
                f.cancel()


def new_band(info: RasterInfo) -> int:
    """The column bands a raster new to the index is read in (grid.column_bands): BAND_TILES
    where it is stored in blocks, 0 (whole rows) where in strips of whole rows, which a band
    would read once per band."""
    return BAND_TILES if info.tiled else 0


def by_block(tiles: set[tuple[int, int]], blocks: list[TileBlock]) -> list[frozenset]:
    """`tiles` (x, y) split by the block that holds each (the blocks' columns are disjoint:
    bands, antimeridian spans); one pass, however many bands."""
    order = sorted(range(len(blocks)), key=lambda i: blocks[i].x0)
    starts = [blocks[i].x0 for i in order]
    out: list[set] = [set() for _ in blocks]
    for x, y in tiles:
        k = bisect.bisect_right(starts, x) - 1
        if k >= 0:
            b = blocks[order[k]]
            if x <= b.x1 and b.y0 <= y <= b.y1:
                out[order[k]].add((x, y))
    return [frozenset(s) for s in out]


def first_tiles(blocks: list[TileBlock], n: int) -> set[tuple[int, int]]:
    """The first n tiles (x, y) in the order the job reads them: block by block (each a
    column band where the plan cut them), row by row, left to right."""
    out: set[tuple[int, int]] = set()
    for b in blocks:
        if n <= 0:
            break
        for y in range(b.y0, b.y1 + 1):
            row = min(n, b.x1 - b.x0 + 1)
            out.update((x, y) for x in range(b.x0, b.x0 + row))
            n -= row
            if n <= 0:
                break
    return out


def _overview_warning(src: RasterSource, ident: Identity, info: RasterInfo, tile_gsd_m: float,
                      zoom: int) -> str | None:
    """A remote raster without internal overviews whose tiles are at least 2x coarser than
    its pixels: every full-resolution pixel crosses the network."""
    coarser = tile_gsd_m / info.native_gsd_m
    if not is_remote(src.path) or info.overviews or coarser < 2:
        return None
    size = f"about {ident.size / 1e6:,.1f} MB" if ident.size else "the whole file"
    return (f"warning: {ident.name}: no internal overviews, and its tiles (zoom {zoom}) are "
            f"{coarser:.1f}x coarser than its pixels: every pixel is read, {size} over the "
            "network (a COG with overviews reads a fraction: gdal_translate -of COG)")


def plan_line(pendings: list[Pending]) -> str | None:
    """One log line saying what the run will do."""
    if not pendings:
        return None
    biggest = max(pendings, key=lambda p: p.remaining)
    total = sum(p.remaining for p in pendings)
    return (f"plan: {len(pendings)} raster(s) to index, {total:,} tiles (largest: "
            f"{Path(biggest.entry.path).name}, {biggest.remaining:,} tiles at zoom "
            f"{biggest.entry.zoom})")
