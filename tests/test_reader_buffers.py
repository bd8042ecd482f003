"""How reader processes hand their tiles over (issue 12): pixels in shared-memory buffers of
each reader, reused once the runner hands them back; the thumbnail; GDAL's block cache per
reader; the valid-pixel rule's integer path."""

from __future__ import annotations

import dataclasses
import functools
import io
import time

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from rasterio.env import get_gdal_config, set_gdal_config
from torch.utils.data import DataLoader, Dataset

from indexer.config import DiscoverySettings, TilingSettings
from indexer.job import slots as slots_mod
from indexer.job.read import RasterPlan, collate, reader_cache, worker_init
from indexer.job.runner import LocalRunner, worker_death
from indexer.job.slots import SLOTS, SharedSlots
from indexer.job.thumbnails import jpeg_thumbnail, thumbnail_bands
from indexer.rasters.grid import choose_zoom, raster_blocks
from indexer.rasters.inspect import inspect_raster
from indexer.rasters.scaling import valid_mask
from indexer.rasters.sources import RasterSource
from tests.helpers import make_raster


def _runner_batches(settings, job, plans, px, delay: float = 0.0, pinned: bool = False):
    """(tile keys, pixels, thumbnails) of every batch, the pixels copied `delay` s after
    they arrive (the readers meanwhile read on); and the batches, as kept past the loop."""
    out, kept = [], []
    for b in LocalRunner(settings.tiling, job, px, pin_memory=pinned).batches(plans):
        time.sleep(delay)
        keys = list(zip(b.x.tolist(), b.y.tolist(), b.pixel_row.tolist(), strict=True))
        out.append((keys, b.rgb.clone(), list(b.thumbs)))
        kept.append(b)
    return out, kept


@pytest.mark.parametrize(("buffers", "pinned"), [
    (1, False), (SLOTS, False),
    pytest.param(1, True, marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                   reason="needs a CUDA device"))])
def test_reused_buffers_carry_the_tiles_the_main_process_reads(tmp_path, settings, encoder,
                                                               monkeypatch, buffers, pinned):
    """Two readers writing into 1 (every batch waits for the last one to be handed back)
    or SLOTS buffers each, over many more reads than buffers, the main process slow to
    take its copy: every batch holds the pixels and thumbnails that reading in the main
    process gives; every reused buffer is handed back; a batch kept after the runner moved
    past it has no pixels (not pixels the reader has written over since). Pinned (CUDA):
    the buffer is handed back as soon as the batch arrives, its pixels a page-locked copy
    that batches keep."""
    px = encoder.image_size
    path = make_raster(tmp_path / "a.tif", size=900, seed=7, nodata=0)
    info = inspect_raster(RasterSource(str(path)), DiscoverySettings(), settings.tiling)
    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, settings.tiling)
    plans = [RasterPlan(info, b, 0) for b in raster_blocks(info, zoom)]
    job = dataclasses.replace(settings.job, workers=0, batch_size=8, read_batch=8)
    want, _ = _runner_batches(settings, job, plans, px)

    released = []

    class Counting(SharedSlots):
        def __init__(self, readers: int, tiles: int, px: int):
            super().__init__(readers, tiles, px, slots=buffers)

        def release(self, reader: int) -> None:
            released.append(reader)
            super().release(reader)

    monkeypatch.setattr("indexer.job.runner.SharedSlots", Counting)
    got, kept = _runner_batches(settings, dataclasses.replace(job, workers=2), plans, px,
                                delay=0.02, pinned=pinned)

    reads_with_pixels = sum(1 for _, rgb, _ in want if len(rgb))
    assert reads_with_pixels > 2 * 2 * SLOTS  # each reader went round its buffers twice
    assert len(released) == reads_with_pixels and set(released) == {0, 1}
    assert [k for k, _, _ in got] == [k for k, _, _ in want]
    for (_, rgb_got, th_got), (_, rgb_want, th_want) in zip(got, want, strict=True):
        assert torch.equal(rgb_got, rgb_want)
        assert th_got == th_want
    if pinned:
        assert all(b.rgb.is_pinned() for b in kept if len(b.rgb))
        assert all(torch.equal(b.rgb, rgb) for b, (_, rgb, _) in zip(kept, want, strict=True))
    else:
        assert all(len(b.rgb) == 0 for b in kept)


class _Strips(Dataset):
    """Strips of 2 tiles of 8 px, tile i's pixels all i."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        rgb = np.full((2, 3, 8, 8), i, dtype=np.uint8)
        rgb[1] += 100
        return {"raster": 0, "z": 1, "x": np.array([0, 1]), "y": i, "done": np.zeros(2, bool),
                "nodata": np.zeros(2, np.float32), "has": np.ones(2, bool), "rgb": rgb,
                "thumbs": [b"", b""], "error": None, "warnings": [], "read_s": 0.0}


def test_a_reader_with_no_buffer_handed_back_uses_a_new_one(monkeypatch):
    """A main process that never hands its buffer back (stalled) slows the reader by
    SLOT_WAIT_S per batch, never stops it, and the batch it holds is not written over."""
    monkeypatch.setattr(slots_mod, "SLOT_WAIT_S", 0.2)  # before the reader forks
    slots = SharedSlots(1, tiles=2, px=8, slots=1)
    loader = DataLoader(_Strips(), batch_size=1, num_workers=1,
                        collate_fn=functools.partial(collate, slots=slots))
    t0 = time.monotonic()
    batches = list(loader)
    assert time.monotonic() - t0 < 30
    assert [b.slot for b in batches] == [0] + [-1] * 5
    for i, b in enumerate(batches):
        assert b.rgb.is_shared()
        assert b.rgb[0].eq(i).all() and b.rgb[1].eq(i + 100).all()


def test_outside_a_reader_process_there_is_no_buffer():
    slots = SharedSlots(2, tiles=4, px=8)
    assert slots.take((4, 3, 8, 8)) is None
    batch = collate([_Strips()[0]], slots=slots)
    assert batch.slot == -1 and not batch.rgb.is_shared()


def test_collate_copies_the_kept_tiles_in_order_from_strip_views():
    """Tiles dropped anywhere in a strip (first, middle, last, all): the kept ones land in
    plan order, each with its own pixels, cut from the strided strip views the reader
    makes ([3, px, n * px] seen as [n, 3, px, px])."""
    px, keeps = 8, [[1, 0, 1, 1, 0], [0, 0], [1], [0, 1, 0, 1, 1, 1, 0, 1]]
    strips, want = [], []
    for s, keep in enumerate(keeps):
        n = len(keep)
        strip = np.empty((3, px, n * px), np.uint8)
        for i in range(n):
            for b in range(3):
                strip[b, :, i * px:(i + 1) * px] = 40 * b + 5 * s + i
        tiles = strip.reshape(3, px, n, px).transpose(2, 0, 1, 3)
        has = np.array(keep, bool)
        want += [tiles[i].copy() for i in np.flatnonzero(has)]
        strips.append({"raster": 0, "z": 1, "x": np.arange(n), "y": s,
                       "done": np.zeros(n, bool), "nodata": np.zeros(n, np.float32),
                       "has": has, "rgb": tiles, "thumbs": [b""] * int(has.sum()),
                       "error": None, "warnings": [], "read_s": 0.0})
    batch = collate(strips)
    assert batch.rgb.shape == (len(want), 3, px, px)
    np.testing.assert_array_equal(batch.rgb.numpy(), np.stack(want))
    has = np.concatenate([np.array(k, bool) for k in keeps])
    np.testing.assert_array_equal(batch.pixel_row[has], np.arange(len(want)))
    assert (batch.pixel_row[~has] == -1).all()


def _texture(px: int, seed: int) -> np.ndarray:
    """uint8 [3, px, px] like imagery: detail at every scale (noise smoothed at 4 sizes),
    the bands correlated."""
    rng = np.random.default_rng(seed)
    grey = np.zeros((px, px), np.float32)
    for cell in (3, 8, 20, 60):
        n = max(2, px // cell)
        grey += cv2.resize(rng.normal(0, 25, (n, n)).astype(np.float32), (px, px),
                           interpolation=cv2.INTER_CUBIC)
    out = np.stack([grey * gain + offset for gain, offset in ((1.0, 140), (0.8, 120),
                                                               (0.6, 90))])
    return np.clip(out, 0, 255).astype(np.uint8)


def _area_mean(rgb: np.ndarray, size: int) -> np.ndarray:
    """The exact area mean (PIL's BOX), [3, size, size] float."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(b)).resize(
        (size, size), Image.Resampling.BOX), dtype=np.float64) for b in rgb])


@pytest.mark.parametrize(("px", "within"), [(224, 2.5), (256, 0.5), (512, 0.5)])
def test_a_thumbnail_is_the_area_mean_of_its_tile(px, within):
    """224 -> 128 px (bilinear: ~2 grey levels from the exact area mean on an imagery-like
    texture), 256 and 512 -> 128 (whole-factor area means: rounding only). Sampling the
    nearest pixel instead (aliased) would be 5-13 grey levels off."""
    rgb = _texture(px, seed=px)
    area = _area_mean(rgb, 128)
    got = np.stack(thumbnail_bands(rgb, 128)).astype(np.float64)
    assert np.abs(got - area).mean() < within
    nearest = np.stack([cv2.resize(b, (128, 128), interpolation=cv2.INTER_NEAREST)
                        for b in rgb])
    assert np.abs(nearest - area).mean() > 2 * within


@pytest.mark.parametrize("px", [224, 64])
def test_a_thumbnail_jpeg_keeps_its_pixels_and_channels(px):
    """A JPEG of the asked size, its decoded pixels within JPEG's error of the thumbnail's
    (in R, G, B order: a tile of three flat colours keeps them); 64 px tiles are enlarged."""
    rgb = _texture(px, seed=px)
    img = Image.open(io.BytesIO(jpeg_thumbnail(rgb, 128, 95)))
    assert img.format == "JPEG" and img.size == (128, 128) and img.mode == "RGB"
    want = np.stack(thumbnail_bands(rgb, 128), axis=2).astype(np.float64)
    assert np.abs(np.asarray(img, dtype=np.float64) - want).mean() < 4  # JPEG at 95: ~2.5
    flat = np.stack([np.full((px, px), v, np.uint8) for v in (200, 100, 30)])
    got = np.asarray(Image.open(io.BytesIO(jpeg_thumbnail(flat, 128, 95))), dtype=np.float64)
    np.testing.assert_allclose(got.mean(axis=(0, 1)), (200, 100, 30), atol=2)


def test_a_thumbnail_of_a_strip_view_is_the_thumbnail_of_the_tile():
    strip = np.ascontiguousarray(_texture(224 * 3, seed=1)[:, :224, :])  # 3 tiles wide
    tiles = strip.reshape(3, 224, 3, 224).transpose(2, 0, 1, 3)  # as TileDataset cuts them
    assert not tiles[1].flags["C_CONTIGUOUS"]
    assert jpeg_thumbnail(tiles[1], 128, 85) == jpeg_thumbnail(np.ascontiguousarray(tiles[1]),
                                                               128, 85)


def test_a_reader_caps_gdals_block_cache():
    before = get_gdal_config("GDAL_CACHEMAX")
    try:
        reader_cache(48)
        assert get_gdal_config("GDAL_CACHEMAX") == 48 << 20
    finally:
        set_gdal_config("GDAL_CACHEMAX", before)
    assert get_gdal_config("GDAL_CACHEMAX") == before


class _Cache(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> int:
        return get_gdal_config("GDAL_CACHEMAX")


def test_reader_processes_start_with_the_jobs_cache(settings):
    assert settings.job.reader_cache_mb == 128  # index_config.toml
    loader = DataLoader(_Cache(), batch_size=None, num_workers=1,
                        worker_init_fn=functools.partial(worker_init, cache_mb=40))
    assert list(loader) == [40 << 20]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "float32"])
def test_zero_is_nodata_means_zero_in_every_band_for_every_type(dtype):
    rng = np.random.default_rng(3)
    lo = -3 if np.dtype(dtype).kind in "if" else 0
    data = rng.integers(lo, 3, size=(3, 40, 50)).astype(dtype)  # many zeros, some all-zero
    mask = rng.random((40, 50)) > 0.1
    want = mask & np.any(data != 0, axis=0)
    assert (~want & mask).any() and want.any()
    np.testing.assert_array_equal(valid_mask(data, mask, TilingSettings(zero_is_nodata=True)),
                                  want)
    np.testing.assert_array_equal(valid_mask(data, mask, TilingSettings(zero_is_nodata=False)),
                                  mask)


def test_a_reader_killed_for_want_of_shared_memory_says_so():
    """torch's report of a reader killed by SIGBUS (a page /dev/shm had no room for) becomes
    a one-line error naming /dev/shm and what to change; other deaths keep the memory hint."""
    bus = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Bus error. It is "
                       "possible that dataloader's workers are out of shared memory. Please "
                       "try to raise your shared memory limit.")
    err = worker_death(bus)
    assert "/dev/shm" in str(err) and "job.read_batch" in str(err) and "\n" not in str(err)
    kill = worker_death(RuntimeError("DataLoader worker (pid 4242) is killed by signal: "
                                     "Killed. "))
    assert "out of memory? try fewer job.workers" in str(kill) and "/dev/shm" not in str(kill)
    full = RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal "
                        "Traceback (most recent call last):\n  ...\nRuntimeError: unable to "
                        "allocate shared memory(shm) for file </torch_1_2_0>: No space left on "
                        "device (28)\n")
    assert "/dev/shm" in str(worker_death(full))
    assert worker_death(RuntimeError("something else")) is None
