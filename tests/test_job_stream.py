"""The job's data path: strips of tiles read in worker processes and handed over as one
uint8 tensor in shared memory, encoded on the main thread while a writer thread stores the
previous batch."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from indexer.config import DiscoverySettings
from indexer.job.background import BackgroundWriter
from indexer.job.pipeline import IndexJob
from indexer.job.plan import first_tiles
from indexer.job.read import RasterPlan, TileDataset, collate, tile_loader
from indexer.rasters.grid import TileBlock, block_window, choose_zoom, raster_blocks, tile_window
from indexer.rasters.inspect import inspect_raster
from indexer.rasters.reader import RasterReader
from indexer.rasters.sources import RasterSource
from tests.helpers import make_raster


def _plans(path, settings, px):
    info = inspect_raster(RasterSource(str(path)), DiscoverySettings(), settings.tiling)
    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, settings.tiling)
    return [RasterPlan(info, b, 0) for b in raster_blocks(info, zoom)]


def test_a_batch_holds_each_tiles_own_pixels(tmp_path, settings, encoder):
    px = encoder.image_size
    path = make_raster(tmp_path / "a.tif", size=700, seed=4, nodata=0)
    plans = _plans(path, settings, px)
    job = dataclasses.replace(settings.job, batch_size=40)
    ds = TileDataset(plans, px, settings.tiling, job)
    batch = collate([ds[i] for i in range(len(ds))])
    reader = RasterReader(settings.tiling)
    block = plans[0].block
    assert len(batch) == block.count and len(batch.thumbs) == len(batch.rgb)
    assert batch.rgb.dtype == torch.uint8 and batch.rgb.shape[1:] == (3, px, px)
    for i in range(len(batch)):
        x, y = int(batch.x[i]), int(batch.y[i])
        one = reader.read(plans[0].info, tile_window(block.zoom, x, y, px, block.src_shift),
                          grid=block_window(block, px))
        assert batch.nodata[i] == pytest.approx(one.nodata_fraction, abs=1e-6)
        row = int(batch.pixel_row[i])
        assert (row >= 0) == (one.nodata_fraction <= settings.tiling.max_nodata_fraction)
        if row >= 0:
            np.testing.assert_array_equal(batch.rgb[row].numpy(), one.rgb)
    # The encoder gives the same vectors for the batch tensor as for the same tiles stacked.
    stacked = np.stack([batch.rgb[r].numpy() for r in range(len(batch.rgb))])
    np.testing.assert_allclose(encoder.encode_images(batch.rgb),
                               encoder.encode_images(stacked), atol=1e-6)


def test_batches_cross_from_a_worker_in_shared_memory(tmp_path, settings, encoder):
    px = encoder.image_size
    path = make_raster(tmp_path / "a.tif", size=500, seed=5)
    job = dataclasses.replace(settings.job, workers=1, batch_size=32, read_batch=32)
    ds = TileDataset(_plans(path, settings, px), px, settings.tiling, job)
    batches = list(tile_loader(ds, job))
    assert sum(len(b) for b in batches) == sum(ds.tiles(i) for i in range(len(ds)))
    assert all(len(b) <= 32 for b in batches)
    with_pixels = [b for b in batches if len(b.rgb)]
    assert with_pixels and all(b.rgb.is_shared() for b in with_pixels)  # not pickled bytes
    assert all(b.read_s > 0 for b in batches)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_preprocessing_matches_the_cpu(encoder, settings):
    import dataclasses as dc

    from encoder.model import SatelliteEncoder

    gpu = SatelliteEncoder(dc.replace(settings.encoder, device="cuda"))
    cpu = SatelliteEncoder(dc.replace(settings.encoder, device="cpu"))
    for px in (80, gpu.image_size):  # resized on the device, or one multiply-add
        tiles = torch.randint(0, 256, (8, 3, px, px), dtype=torch.uint8).pin_memory()
        np.testing.assert_allclose(gpu.prepare(tiles).cpu().numpy(),
                                   cpu.prepare(tiles).numpy(), atol=1e-5)
        np.testing.assert_allclose(gpu.prepare(tiles, torch.bfloat16).float().cpu().numpy(),
                                   cpu.prepare(tiles).numpy(), atol=2e-2)


def test_the_writer_thread_overlaps_and_hands_back_its_error():
    seen, started, go = [], threading.Event(), threading.Event()

    def write(i):
        started.set()
        assert go.wait(20)
        seen.append(i)
        if i == 3:
            raise OSError("disk full")

    out = BackgroundWriter(write, depth=2)
    out.put(0)  # returns while write(0) is blocked: put() does not wait for it
    assert started.wait(20) and seen == []
    go.set()
    out.put(1)
    out.drain()
    assert seen == [0, 1]
    out.put(2)
    out.put(3)
    with pytest.raises(OSError, match="disk full"):
        for i in range(4, 50):  # bounded: the error arrives within a few puts
            out.put(i)
    out.close()
    assert seen[:4] == [0, 1, 2, 3] and len(seen) == 4  # nothing written after the error


def test_the_report_says_where_the_time_went(tmp_path, settings, encoder):
    make_raster(tmp_path / "a" / "one.tif", size=300, seed=6)
    report = IndexJob(tmp_path / "idx", settings, encoder, progress=False).run(
        [str(tmp_path / "a")])
    assert report.tiles_written > 0
    for stage in ("plan (main thread)", "wait for tiles", "read (worker seconds)", "encode",
                  "write + commit (writer thread)", "start the readers (in first tiles)"):
        assert report.stages[stage] > 0, report.stages
    st = report.stages  # the readers' start is part of the first tiles' wait, part of all
    assert st["start the readers (in first tiles)"] <= st["first tiles (in wait for tiles)"] \
        <= st["wait for tiles"]
    # the writer's own CPU time, part of its busy time (the rest: disk, the GIL, waits)
    cpu = st["writer thread's CPU (in write + commit)"]
    assert 0 < cpu <= st["write + commit (writer thread)"] * 1.05 + 0.01, st
    assert report.stage_line().startswith("stages: ")


def test_resume_watermark_names_the_tiles_in_read_order(tmp_path, settings):
    """plan.first_tiles(blocks, n) is exactly the first n tiles the job reads (block by
    block, row by row, strip by strip), for blocks wider than a strip; a resumed run trusts
    it to skip tiles that went through without being stored (nodata)."""
    path = make_raster(tmp_path / "a.tif", size=64)
    info = inspect_raster(RasterSource(str(path)), DiscoverySettings(), settings.tiling)
    blocks = [TileBlock(15, 100, 200, 136, 202), TileBlock(15, 5, 7, 9, 9)]  # 37 wide, 5 wide
    every = [frozenset((x, y) for y in range(b.y0, b.y1 + 1) for x in range(b.x0, b.x1 + 1))
             for b in blocks]
    # Every tile "done": the dataset yields each strip's tiles in order without reading.
    ds = TileDataset([RasterPlan(info, b, 0, d) for b, d in zip(blocks, every, strict=True)],
                     64, settings.tiling, dataclasses.replace(settings.job, batch_size=64))
    order = [(int(x), int(s["y"])) for i in range(len(ds)) for s in [ds[i]] for x in s["x"]]
    assert len(order) == sum(len(d) for d in every) == len(set(order))
    for n in (0, 1, 15, 16, 17, 36, 37, 38, 110, 111, 112, 120, len(order)):
        assert first_tiles(blocks, n) == set(order[:n]), n


def test_a_read_batch_splits_into_encoder_batches_tile_for_tile(tmp_path, settings):
    """Readers read job.read_batch tiles per call; the job encodes them job.batch_size at a
    time: every part holds its own tiles' pixels, thumbnails and rows, nothing twice."""
    path = make_raster(tmp_path / "a.tif", size=700, seed=4, nodata=0)
    px = 32
    plans = _plans(path, settings, px)
    ds = TileDataset(plans, px, settings.tiling, settings.job)
    whole = collate([ds[i] for i in range(len(ds))])
    whole.errors = {0: "a raster error"}
    assert (whole.pixel_row < 0).any() and len(whole) > 40  # some nodata tiles, several parts
    parts = whole.split(7)
    assert [len(p) for p in parts[:-1]] == [7] * (len(parts) - 1)
    assert sum(len(p) for p in parts) == len(whole)
    assert [p.errors for p in parts].count({0: "a raster error"}) == 1 and parts[0].errors
    i = 0
    for p in parts:
        for j in range(len(p)):
            assert (p.x[j], p.y[j], p.nodata[j]) == (whole.x[i], whole.y[i], whole.nodata[i])
            if whole.pixel_row[i] < 0:
                assert p.pixel_row[j] < 0
            else:
                assert torch.equal(p.rgb[p.pixel_row[j]], whole.rgb[whole.pixel_row[i]])
                assert p.thumbs[p.pixel_row[j]] == whole.thumbs[whole.pixel_row[i]]
            i += 1
    assert whole.split(len(whole)) == [whole]


class _QueuedEncoder:
    """Stands in for a CUDA encoder: encode_images_later queues a chunk (recorded with its
    size), the returned function 'waits' for it (recorded) and gives the real encoder's
    vectors."""

    def __init__(self, real):
        self.real, self.events = real, []
        self.device = torch.device("cuda")  # only its type is looked at

    def encode_images(self, images):
        raise AssertionError("on CUDA the runner queues batches with encode_images_later")

    def encode_images_later(self, images):
        i = sum(1 for e in self.events if e[0] == "start")
        self.events.append(("start", i, len(images)))
        vectors = self.real.encode_images(images)

        def wait():
            self.events.append(("wait", i, len(images)))
            return vectors

        return wait


def test_on_cuda_tiles_go_in_chunks_of_one_size_the_next_queued_before_a_wait(
        tmp_path, settings, encoder):
    """The readers' batches vary in size (tiles without pixels are dropped); on CUDA the
    encoder gets chunks of exactly job.batch_size, chunk i+1 queued before chunk i is
    waited for, and every batch comes back in order with its own tiles' vectors."""
    from collections import defaultdict

    from indexer.job.runner import LocalRunner

    px = encoder.image_size
    plans = _plans(make_raster(tmp_path / "a.tif", size=600, seed=6, nodata=0,
                               data=_with_nodata_corner(600, seed=6)), settings, px)
    job = dataclasses.replace(settings.job, workers=0, batch_size=16, read_batch=16)
    runner = LocalRunner(settings.tiling, job, px)
    want = [(b.x.tolist(), b.y.tolist(), len(b.rgb), encoder.encode_images(b.rgb))
            for b in runner.batches(plans)]
    assert len({n for *_, n, _ in want}) > 2  # batches of several sizes
    fake, stages = _QueuedEncoder(encoder), defaultdict(float)
    got = []
    for batch, vectors in runner.embedded(plans, fake, stages):
        got.append((batch.x.tolist(), batch.y.tolist(), len(vectors), vectors))
        assert len(batch.rgb) == 0  # handed on without its (encoded) pixels
    assert len(got) == len(want) > 3
    for (gx, gy, gn, gv), (wx, wy, wn, wv) in zip(got, want, strict=True):
        assert (gx, gy, gn) == (wx, wy, wn)  # same order, same tiles
        np.testing.assert_allclose(gv, wv, atol=1e-5)
    starts = [n for kind, _, n in fake.events if kind == "start"]
    assert sum(starts) == sum(n for *_, n, _ in want)
    assert set(starts[:-1]) == {16} and 0 < starts[-1] <= 16
    waits = [i for kind, i, _ in fake.events if kind == "wait"]
    assert waits == list(range(len(starts)))
    for i in range(len(starts) - 1):  # chunk i+1 was queued before chunk i was waited for
        assert fake.events.index(("start", i + 1, starts[i + 1])) < \
            fake.events.index(("wait", i, starts[i]))
    assert stages["encode"] > 0


def _with_nodata_corner(size: int, seed: int) -> np.ndarray:
    """Random pixels with a nodata (0) triangle: tiles there have no pixels to encode."""
    data = np.random.default_rng(seed).integers(1, 255, (3, size, size)).astype(np.uint8)
    rows, cols = np.indices((size, size))
    data[:, rows + cols < size // 2] = 0
    return data


def test_embedded_batches_come_without_their_pixels(tmp_path, settings, encoder):
    """The writer's queue holds batches until they are committed: not their pixels (on
    CUDA page-locked, 77 MB per 512 tiles), which nothing after the encoder reads."""
    from collections import defaultdict

    from indexer.job.runner import LocalRunner

    px = encoder.image_size
    plans = _plans(make_raster(tmp_path / "a.tif", size=400, seed=7), settings, px)
    job = dataclasses.replace(settings.job, workers=0, batch_size=16, read_batch=16)
    runner = LocalRunner(settings.tiling, job, px)
    want = [encoder.encode_images(b.rgb) for b in runner.batches(plans)]
    got = list(runner.embedded(plans, encoder, defaultdict(float)))
    assert len(got) == len(want) > 1
    for (batch, vectors), w in zip(got, want, strict=True):
        assert batch.rgb.shape[0] == 0 and len(vectors) == len(w) > 0
        np.testing.assert_allclose(vectors, w, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_queued_batches_give_the_vectors_encode_images_gives(encoder, settings):
    from encoder.model import SatelliteEncoder

    gpu = SatelliteEncoder(dataclasses.replace(settings.encoder, device="cuda"))
    tiles = [torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8).pin_memory()
             for _ in range(4)]
    want = [gpu.encode_images(t) for t in tiles]
    queued = [gpu.encode_images_later(t) for t in tiles]  # all four in flight at once
    for w, q in zip(want, queued, strict=True):
        np.testing.assert_allclose(q(), w, atol=1e-3)



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fixed_chunks_on_the_gpu_give_each_batch_its_vectors(settings):
    """Batches whose pixels are on the GPU (the device's warp) or page-locked on the host
    (the readers' warp), mixed, in chunks of 32: each batch gets the vectors of its tiles
    encoded alone (one chunk ahead, as the runner queues them)."""
    from types import SimpleNamespace

    from encoder.model import SatelliteEncoder
    from indexer.job.fixed_batches import FixedBatches

    gpu = SatelliteEncoder(dataclasses.replace(settings.encoder, device="cuda"))
    px = gpu.image_size
    sizes = [20, 0, 45, 7, 31, 64, 3]
    tiles = [torch.randint(0, 256, (n, 3, px, px), dtype=torch.uint8) for n in sizes]
    want = [gpu.encode_images(t) for t in tiles]
    batches = [SimpleNamespace(rgb=t.cuda() if i % 2 else t.pin_memory())
               for i, t in enumerate(tiles)]
    fixed = FixedBatches(gpu.encode_images_later, 32, ahead=1)
    got = [out for b in batches for out in fixed.add(b)] + fixed.finish()
    assert [b for b, _ in got] == batches
    for (_, v), w in zip(got, want, strict=True):
        assert v.shape == w.shape  # bf16 on the GPU, other batch sizes: not bit for bit
        assert len(v) == 0 or (v * w).sum(axis=1).min() > 0.999

def test_the_readers_first_calls_are_smaller_then_full():
    """With 3 readers and calls of 64 tiles: rounds of 3 calls of at most 4, 8, 16, 32
    tiles, then 64; every strip once, in order; without readers, all calls full."""
    from indexer.job.read import RAMP_ROUNDS, StripBatches

    class Strips:
        sizes = [16, 16, 5] * 40

        def __len__(self):
            return len(self.sizes)

        def tiles(self, i):
            return self.sizes[i]

    ds = Strips()
    for readers in (0, 3):
        groups = list(StripBatches(ds, 64, readers=readers))
        assert [i for g in groups for i in g] == list(range(len(ds)))
        sums = [sum(ds.tiles(i) for i in g) for g in groups]
        for k, n in enumerate(sums[:-1]):
            limit = 64 if not readers else 64 >> max(0, RAMP_ROUNDS - k // readers)
            # at most the limit (a strip larger than it goes alone), and as full as it goes
            assert n <= max(limit, 16) and n + ds.tiles(groups[k + 1][0]) > limit
        if readers:
            assert sums[:3] == [16, 16, 5] and max(sums[:12]) < 64 and max(sums) > 32
        else:
            assert sums[0] == 53
