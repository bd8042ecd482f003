"""Helpers shared by the tests and the benchmarks (bench/ imports these, never conftest):
paths, synthetic GeoTIFFs, store rows, and SQL over a snapshot as an independent oracle."""

from __future__ import annotations

import errno
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import mercantile
import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_CONFIG = ROOT / "tests" / "offline.toml"
SHARED_DATA = ROOT.parent / "shared" / "data"
SHARED_GEOTIFF = SHARED_DATA / "geotiff"


def make_raster(path: Path, *, lon: float = 11.88, lat: float = 43.46, crs: str = "EPSG:32632",
                size: int = 256, res: float = 5.0, bands: int = 3, dtype: str = "uint8",
                nodata: float | None = None, data: np.ndarray | None = None,
                tags: dict | None = None, seed: int = 0, **creation) -> Path:
    """A GeoTIFF of `size` x `size` pixels of `res` CRS units, centred on lon/lat."""
    if crs.upper() == "NONE":
        crs_obj = None
        transform = None
    else:
        xs, ys = warp_transform("EPSG:4326", crs, [lon], [lat])
        transform = from_origin(xs[0] - size * res / 2, ys[0] + size * res / 2, res, res)
        crs_obj = crs
    if data is None:
        rng = np.random.default_rng(seed)
        hi = 255 if dtype == "uint8" else 4000
        data = rng.integers(1, hi, size=(bands, size, size)).astype(dtype)
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": data.dtype.name}
    if crs_obj is not None:
        profile.update(crs=crs_obj, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    profile.update(creation)  # GDAL creation options, e.g. blockysize=1
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
    return path


def patterned_raster(path: Path, size: int, nodata: float | None = None) -> Path:
    """A 5 m UTM raster (tiled 256 px) of smooth patterns plus noise, with a nodata corner
    when `nodata` is given: what bench/read.py and bench/warp.py read."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / 64.0
    data = np.stack([110 + 60 * np.sin(xx + 0.5 * yy), 120 + 50 * np.cos(0.7 * yy),
                     100 + 40 * np.sin(0.3 * xx * yy / size)])
    data = (data + rng.normal(0, 12, data.shape)).clip(1, 255).astype(np.uint8)
    if nodata is not None:
        data[:, : size // 8, : size // 3] = nodata  # a nodata corner
    return make_raster(path, size=size, res=5.0, crs="EPSG:32632", data=data, nodata=nodata,
                       tiled=True, blockxsize=256, blockysize=256)


def job_strips(info, tiling, px: int) -> list:
    """Every strip of the raster's tiles as the indexing job reads it (up to STRIP_TILES
    tiles of one row, through its block's grid): [(grid, strip window)]."""
    from indexer.job.read import STRIP_TILES
    from indexer.rasters.grid import block_window, choose_zoom, raster_blocks, strip_window

    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, tiling)
    out = []
    for block in raster_blocks(info, zoom):
        grid = block_window(block, px)
        for y in range(block.y0, block.y1 + 1):
            for x0 in range(block.x0, block.x1 + 1, STRIP_TILES):
                out.append((grid, strip_window(block, px, x0, y,
                                               min(STRIP_TILES, block.x1 - x0 + 1))))
    return out


def read_difference(pairs) -> tuple[np.ndarray, float]:
    """How two reads of the same windows differ: pairs of ((rgb, valid), (rgb, valid)) ->
    (absolute differences of the pixels both call valid, share of pixels whose validity
    differs)."""
    diffs, differ, total = [], 0, 0
    for (a, va), (b, vb) in pairs:
        both = va & vb
        diffs.append(np.abs(a.astype(np.int16) - b.astype(np.int16))[:, both].ravel())
        differ += int((va != vb).sum())
        total += va.size
    return np.concatenate(diffs), differ / total


def strip_cuts(info, tiling, px: int):
    """Tiles cut from strips, as the job reads them: for the first, middle and last tile
    row of the raster's block, a strip of up to STRIP_TILES read in one call through the
    block's grid, then each tile as (tile window, grid, rgb, valid, i, n) with its pixels
    cut from the strip (i of n in the strip)."""
    from indexer.job.read import STRIP_TILES
    from indexer.rasters.grid import (
        block_window,
        choose_zoom,
        raster_blocks,
        strip_window,
        tile_window,
    )
    from indexer.rasters.reader import RasterReader

    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, tiling)
    (block,) = raster_blocks(info, zoom)
    grid = block_window(block, px)
    reader = RasterReader(tiling)
    try:
        for y in sorted({block.y0, (block.y0 + block.y1) // 2, block.y1}):
            n = min(STRIP_TILES, block.width)
            strip = strip_window(block, px, block.x0, y, n)
            assert strip.width == n * px and strip.offset_in(grid) is not None
            rgb, valid = reader.read_masked(info, strip, grid)
            assert rgb.shape == (3, px, n * px) and valid.shape == (px, n * px)
            for i in range(n):
                yield (tile_window(zoom, block.x0 + i, y, px, block.src_shift), grid,
                       rgb[:, :, i * px:(i + 1) * px], valid[:, i * px:(i + 1) * px], i, n)
    finally:
        reader.close()


def tile_rows(n: int, key: str, start: int = 0) -> list[dict]:
    """n tile rows of source `key` at zoom 12 (for writing to a store directly)."""
    out = []
    for i in range(start, start + n):
        t = mercantile.Tile(i % 1000, i // 1000, 12)
        b = mercantile.bounds(t)
        out.append({"z": 12, "x": t.x, "y": t.y, "west": b.west, "south": b.south,
                    "east": b.east, "north": b.north, "source": f"/data/{key}.tif",
                    "source_key": key, "acquired": datetime(2020, 1, 1, tzinfo=UTC),
                    "sensor": "test", "gsd_m": 5.0, "native_gsd_m": 5.0,
                    "nodata_fraction": 0.0})
    return out


def mark_complete(writer, key: str, tiles: int = 0) -> None:
    """Record source `key` (/data/KEY.tif) as completely indexed."""
    from indexer.store.writer import SourceEntry

    writer.begin(key, SourceEntry(path=f"/data/{key}.tif", content_sha256="", size=0,
                                  mtime_ns=0))
    writer.finish(key, tiles=tiles, skipped_nodata=0)


def snapshot_sql(snap, query: str, params: list | None = None):
    """DuckDB SQL over a snapshot's Parquet parts as a `tiles` view (an oracle for the
    engine's own columnar filters)."""
    import duckdb

    con = duckdb.connect()
    if snap.tile_parts:
        con.read_parquet([str(p) for p in snap.tile_parts]).create_view("tiles")
    else:
        con.register("tiles", snap.tiles())
    return con.sql(query, params=params).to_arrow_table()


def wait_until(predicate, timeout_s: float, what: str, every_s: float = 0.25):
    """predicate()'s first truthy value, polled every `every_s` (an exception counts as not
    yet: a page re-rendering under a browser test); bounded in count and in time, then
    TimeoutError naming `what`."""
    import time

    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / every_s) + 2):
        try:
            value = predicate()
        except Exception:  # noqa: BLE001
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")


def busy_cuda_stream(seconds: float = 1.0) -> None:
    """Queue about `seconds` of work on the current CUDA stream (torch.cuda._sleep: the
    GPU's clock cycles): a stand-in for the job's encoder batches, which work on a stream of
    its own must not wait behind."""
    import torch

    khz = getattr(torch.cuda.get_device_properties(0), "clock_rate", 1_800_000)
    torch.cuda._sleep(int(khz * 1e3 * seconds))


def shared_raster_tiles(px: int, finer: int = 0, limit: int = 0) -> np.ndarray:
    """uint8 [N, 3, px, px]: the tiles the job reads from every raster in
    ../shared/data/geotiff (empty when absent), at the zoom it chooses and `finer` zooms
    finer (more, smaller-footprint tiles of the same rasters); tiles with no data left out."""
    import dataclasses

    from indexer.config import load_settings
    from indexer.job.read import RasterPlan
    from indexer.job.runner import LocalRunner
    from indexer.rasters.grid import choose_zoom, raster_blocks
    from indexer.rasters.inspect import inspect_raster
    from indexer.rasters.sources import RasterSource

    s = load_settings(OFFLINE_CONFIG)
    job = dataclasses.replace(s.job, workers=0, batch_size=64)
    out = []
    for path in sorted(SHARED_GEOTIFF.glob("*.tif")):
        info = inspect_raster(RasterSource(str(path)), s.discovery, s.tiling)
        zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, s.tiling)
        for z in range(zoom, zoom + finer + 1):
            plans = [RasterPlan(info, b, 0) for b in raster_blocks(info, z)]
            for batch in LocalRunner(s.tiling, job, px).batches(plans):
                out.extend(t for t in batch.rgb.numpy() if t.any())
            if limit and len(out) >= limit:
                return np.stack(out[:limit])
    return np.stack(out) if out else np.zeros((0, 3, px, px), np.uint8)


def rasters_sharing_batches(d: Path, sizes: tuple[int, ...]) -> Path:
    """d/archive: one raster per size (random pixels, its top-left ninth nodata), side by
    side: small enough that their tiles share batches of a few tiles. Returns the folder."""
    for i, size in enumerate(sizes):
        data = np.random.default_rng(i).integers(1, 255, (3, size, size)).astype(np.uint8)
        data[:, : size // 3, : size // 3] = 0  # nodata tiles too
        make_raster(d / "archive" / f"r{i}.tif", size=size, lon=11.88 + i * 0.05, data=data)
    return d / "archive"


def slow_hashes(monkeypatch, hold: dict[str, threading.Event] | None = None,
                 delay: float = 0.0, fail: str = ""):
    """The plan's hashing, each file's hash held back `delay` seconds or until its event
    (`hold`, by file name) is set, or failing for the file named `fail`; a stopped hashing
    thread gives up as the real one does. Returns the names hashed, in order."""
    from indexer.job import plan

    real = plan.known_or_file_sha256
    hashed: list[str] = []

    def slow(path, known, stop=None):
        name = path.rsplit("/", 1)[-1]
        hashed.append(name)
        gate = (hold or {}).get(name)
        end = time.monotonic() + delay
        while (gate is not None and not gate.is_set()) or time.monotonic() < end:
            if stop is not None and stop.is_set():
                raise InterruptedError(errno.EINTR, "hashing stopped", path)
            time.sleep(0.005)
        if name == fail:
            raise OSError(errno.EIO, "Input/output error", path)
        return real(path, known, stop)

    monkeypatch.setattr(plan, "known_or_file_sha256", slow)
    return hashed


class InterruptingEncoder:
    """The real encoder, but Ctrl-C arrives during its `n`-th encode_images call."""

    def __init__(self, real, n: int):
        self.real, self.n, self.calls = real, n, 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def encode_images(self, images):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.real.encode_images(images)
