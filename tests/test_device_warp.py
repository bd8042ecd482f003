"""The fast warp's plain tiles resampled on the encoder's device (job.warp_on): the readers
hand over source crops and affine maps, `grid_sample` makes the tiles. The same tiles as
the readers' warp within 1 grey level, the same validity, the same job output."""

from __future__ import annotations

import dataclasses
import time

import cv2
import numpy as np
import pytest
import torch

from indexer.config import ConfigError, DiscoverySettings, load_settings
from indexer.job.device_warp import resample_deferred, warp_tiles
from indexer.job.pipeline import IndexJob, warp_device
from indexer.job.read import RasterPlan, TileDataset, collate
from indexer.job.runner import LocalRunner
from indexer.job.thumbnails import crop_thumbnail_bands, device_thumbnails, thumbnail_maps
from indexer.rasters.grid import choose_zoom, raster_blocks
from indexer.rasters.inspect import inspect_raster
from indexer.rasters.sources import RasterSource
from indexer.store.snapshot import IndexSnapshot
from tests.helpers import busy_cuda_stream, make_raster, patterned_raster

CPU = torch.device("cpu")
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _smooth(size: int) -> np.ndarray:
    """uint8 [3, size, size] of smooth gradients (2..220: no pixel near 0)."""
    yy, xx = np.mgrid[0:size, 0:size] / 37.0
    return np.stack([120 + 100 * np.sin(xx + 0.3 * yy), 120 + 100 * np.cos(0.8 * yy),
                     120 + 90 * np.sin(0.5 * (xx - yy))]).round().astype(np.uint8)


def _fast(settings, **tiling):
    return dataclasses.replace(settings, tiling=dataclasses.replace(
        settings.tiling, warp="fast", **tiling))


def _plans(path, tiling, px):
    info = inspect_raster(RasterSource(str(path)), DiscoverySettings(), tiling)
    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, tiling)
    return [RasterPlan(info, b, 0) for b in raster_blocks(info, zoom)]


def _both(plans, px, tiling, job, device=CPU, device_thumbs=True):
    """The batch of every strip read by the readers' warp, and with plain tiles deferred
    (before and after resampling them on `device`), their thumbnails made there too where
    the runner would (`device_thumbs`) or by the readers."""
    ref = TileDataset(plans, px, tiling, job)
    thumbs = (job.thumbnail_size, job.thumbnail_quality)
    on_device = device_thumbs and device_thumbnails(px, thumbs[0])
    dev = TileDataset(plans, px, tiling, job, defer=True, device_thumbs=on_device)
    a = collate([ref[i] for i in range(len(ref))])
    b = collate([dev[i] for i in range(len(dev))])
    deferred = 0 if b.deferred is None else int(b.deferred.sum())
    left = [i for i, t in enumerate(b.thumbs) if t is None]
    assert left == (np.flatnonzero(b.deferred).tolist() if on_device and deferred else [])
    return a, resample_deferred(b, device, thumbs if on_device else None), deferred


def _deferred_batch(tmp_path, settings):
    """(settings, one batch of every strip of a 900 px smooth raster at 4 m, its plain tiles
    deferred with their thumbnails left to the device)."""
    s = _fast(settings, target_gsd_m=4.0)
    plans = _plans(make_raster(tmp_path / "r.tif", size=900, data=_smooth(900)), s.tiling, 224)
    ds = TileDataset(plans, 224, s.tiling, s.job, defer=True, device_thumbs=True)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.deferred is not None
    return s, batch


def _same_batch(a, b, mean_thumb=4.0):
    """Same tiles, validity and rows; pixels within 1 grey level; thumbnails alike."""
    for k in ("raster", "z", "x", "y", "done", "pixel_row"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    np.testing.assert_allclose(a.nodata, b.nodata, atol=1e-6)
    diff = np.abs(a.rgb.numpy().astype(np.int16) - b.rgb.cpu().numpy().astype(np.int16))
    assert diff.size == 0 or (diff.max() <= 1 and diff.mean() < 0.01), (diff.max(), diff.mean())
    assert len(a.thumbs) == len(b.thumbs) == len(a.rgb)
    for ta, tb in zip(a.thumbs, b.thumbnails(), strict=True):
        ia = cv2.imdecode(np.frombuffer(ta, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
        ib = cv2.imdecode(np.frombuffer(tb, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
        assert ia.shape == ib.shape
        assert np.abs(ia - ib).mean() < mean_thumb


@pytest.mark.parametrize("thumbs", ["device", "readers"])
@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_deferred_tiles_are_the_readers_tiles(tmp_path, settings, device, thumbs):
    """A UTM raster with a nodata corner at 224 px: the tiles inside are resampled on the
    device, those at the edges and the nodata corner in the readers; together the batch is
    the readers' batch, thumbnails too (made on the device or by the readers)."""
    s = _fast(settings, target_gsd_m=4.0)
    path = patterned_raster(tmp_path / "r.tif", 1536, nodata=0)
    plans = _plans(path, s.tiling, 224)
    job = dataclasses.replace(s.job, batch_size=64)
    a, b, deferred = _both(plans, 224, s.tiling, job, device, thumbs == "device")
    assert 0 < deferred < len(a.rgb)  # both kinds in one batch
    assert b.rgb.device.type == device.type and b.deferred is None and b.crops is None
    _same_batch(a, b)


def test_deferred_tiles_of_the_shared_rasters(shared_geotiff, settings):
    """Every shared raster (any CRS) at the test model's tile size and at 224 px: deferred
    tiles, where a raster has any, are the readers' within 1 grey level."""
    s = _fast(settings)
    job = dataclasses.replace(s.job, batch_size=64)
    deferred = 0
    for path in sorted(shared_geotiff.glob("*.tif")):
        for px in (64, 224):
            a, b, n = _both(_plans(path, s.tiling, px), px, s.tiling, job)
            deferred += n
            _same_batch(a, b, mean_thumb=10.0)  # sharper from the source: up to 8.9
    assert deferred > 0


def test_crops_larger_than_tiles_travel_beside_them(tmp_path, settings):
    """Tiles 1.04x the raster's pixel (no blur yet) need source crops larger than the tile:
    they are deferred too, and cross from a worker process in memory of their own."""
    s = _fast(settings, zoom=15)  # 3.96 m tiles of 224 px at 43.46 N
    data = np.random.default_rng(3).integers(2, 255, (3, 1200, 1200), dtype=np.uint8)
    path = make_raster(tmp_path / "r.tif", size=1200, res=3.963 / 1.04, data=data)
    plans = _plans(path, s.tiling, 224)
    job = dataclasses.replace(s.job, batch_size=32, read_batch=32, workers=1)
    ds = TileDataset(plans, 224, s.tiling, job, defer=True)
    strip = ds[len(ds) // 2]
    assert strip["deferred"] and max(max(d.crop.shape[1:]) for d in
                                     strip["deferred"].values()) > 224
    ref = LocalRunner(s.tiling, job, 224).batches(plans)
    got = LocalRunner(s.tiling, job, 224, warp_device=CPU).batches(plans)
    n = 0
    for a, b in zip(ref, got, strict=True):  # side by side: a reader's buffer is reused
        np.testing.assert_array_equal(a.pixel_row, b.pixel_row)
        diff = np.abs(a.rgb.numpy().astype(np.int16) - b.rgb.numpy().astype(np.int16))
        assert diff.size == 0 or diff.max() <= 1
        n += len(b.rgb)
    assert n > 0


def test_a_deferred_tiles_thumbnail_is_the_tiles_thumbnail(tmp_path, settings):
    """A web-mercator raster on the tile grid at the tiles' own pixel size: each tile is
    its source crop as it is, so the thumbnail made from the crop must be the thumbnail the
    readers make from the tile (a bilinear resize) within rounding; an offset or a wrong
    scale of its sample grid would show on these gradients."""
    import rasterio
    from rasterio.transform import from_origin

    from indexer.job.thumbnails import crop_thumbnail_bands, thumbnail_bands
    from indexer.rasters.grid import ORIGIN

    z, px, tx, ty = 14, 224, 8700, 5900
    tile_m = 2 * ORIGIN / 2**z
    size = 5 * px
    data = _smooth(size)
    path = tmp_path / "m.tif"
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3,
                       dtype="uint8", crs="EPSG:3857",
                       transform=from_origin(-ORIGIN + tx * tile_m, ORIGIN - ty * tile_m,
                                             tile_m / px, tile_m / px)) as dst:
        dst.write(data)
    s = _fast(settings, zoom=z)
    ds = TileDataset(_plans(path, s.tiling, px), px, s.tiling, s.job, defer=True)
    checked = 0
    for i in range(len(ds)):
        strip = ds[i]
        for d in strip["deferred"].values():
            tile = d.crop[:, round(d.matrix[1, 2]):round(d.matrix[1, 2]) + px,
                          round(d.matrix[0, 2]):round(d.matrix[0, 2]) + px]
            np.testing.assert_allclose(d.matrix[:, :2], np.eye(2), atol=1e-6)
            want = np.stack(thumbnail_bands(tile, 128)).astype(np.int16)
            got = np.stack(crop_thumbnail_bands(d.crop, d.matrix, px, 128)).astype(np.int16)
            assert np.abs(got - want).max() <= 2, np.abs(got - want).max()
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("case", ["float32", "int16", "downsampled", "nearest", "dark"])
def test_tiles_that_are_not_plain_are_resampled_by_the_readers(tmp_path, settings, case):
    """Not deferred: float and signed rasters, tiles coarser than the raster (the warp blurs
    first), nearest resampling, and (zero_is_nodata) tiles whose source has pixels that
    could resample to 0 in every band. The batch is the readers' all the same."""
    tiling = {"target_gsd_m": 4.0}
    size, dtype = 1024, "uint8"
    data = _smooth(size)
    if case in ("float32", "int16"):
        dtype, data = case, data.astype(case) * 13
    elif case == "downsampled":
        tiling = {"target_gsd_m": 8.0}
    elif case == "nearest":
        tiling["resampling"] = "nearest"
    else:  # dark: pixels of (1, 0, 0) and (0, 1, 0) everywhere in the left half
        data[:, :, : size // 2] = 0
        data[0, 0::2, : size // 2] = 1
        data[1, 1::2, : size // 2] = 1
    s = _fast(settings, **tiling)
    path = make_raster(tmp_path / "r.tif", size=size, data=data, dtype=dtype)
    job = dataclasses.replace(s.job, batch_size=64)
    plans = _plans(path, s.tiling, 224)
    a, b, deferred = _both(plans, 224, s.tiling, job)
    if case == "dark":
        ds = TileDataset(plans, 224, s.tiling, job, defer=True)
        left = [d for i in range(len(ds)) for t, d in ds[i]["deferred"].items()
                if ds[i]["x"][t] < (plans[0].block.x0 + plans[0].block.x1) / 2 - 1]
        assert deferred > 0 and not left  # the right half is deferred, the left is not
    else:
        assert deferred == 0
    _same_batch(a, b)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_uint16_rasters_are_scaled_on_the_device_as_the_readers_scale(tmp_path, settings,
                                                                      device):
    """A uint16 raster (scaled by its percentiles) and a uint8 one in the same batches:
    the uint16 crops travel as 16-bit values, the uint8 ones widened beside them, and both
    become the readers' uint8 tiles within 1 grey level (thumbnails scaled alike)."""
    s = _fast(settings, target_gsd_m=4.0)
    wide = make_raster(tmp_path / "a" / "wide.tif", size=900, dtype="uint16",
                       data=(_smooth(900).astype(np.uint16) * 150 + 400))  # past 32767
    narrow = make_raster(tmp_path / "a" / "narrow.tif", size=900, lon=11.95, data=_smooth(900))
    plans = _plans(wide, s.tiling, 224) + [
        dataclasses.replace(p, source=1) for p in _plans(narrow, s.tiling, 224)]
    assert plans[0].info.scale_hi[0] > 255  # percentiles of the 16-bit values
    job = dataclasses.replace(s.job, batch_size=4096)
    dev = TileDataset(plans, 224, s.tiling, job, defer=True)
    batch = collate([dev[i] for i in range(len(dev))])
    assert batch.crops.dtype == torch.int16  # 16 bits for all, in one batch
    assert set(batch.raster[batch.pixel_row >= 0][batch.deferred].tolist()) == {0, 1}
    a, b, _ = _both(plans, 224, s.tiling, job, device)
    _same_batch(a, b)


def test_warp_tiles_samples_where_the_maps_say():
    """Identity maps give the crops back; half a pixel to the right, the mean of two
    neighbours (rounded half up, as warpAffine)."""
    crops = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    ident = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(3, 2, 3)
    assert torch.equal(warp_tiles(crops, ident, 16), crops[:, :, :16, :16])
    half = ident.clone()
    half[:, 0, 2] = 0.5
    want = ((crops[:, :, :16, :16].int() + crops[:, :, :16, 1:17].int()) / 2).round()
    got = warp_tiles(crops, half, 16).int()
    assert (got - want).abs().max() <= 1
    ref = cv2.warpAffine(crops[0, 0].numpy(), half[0].numpy().astype(np.float64), (16, 16),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    assert np.abs(got[0, 0].numpy() - ref).max() <= 1


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_the_sample_grid_is_where_the_maps_say(device):
    """The grid built from a row term and a column term is the maps' positions, normalised,
    to 1e-4 px (float64 reference)."""
    from indexer.job.device_warp import _grid

    g = torch.Generator().manual_seed(3)
    d, px, w, h = 16, 224, 305, 301
    a = torch.rand(d, generator=g) * 0.1  # ~2 degrees of rotation, 1.35x the tile's pixel
    m = torch.stack([torch.stack([1.35 * torch.cos(a), -1.35 * torch.sin(a),
                                  torch.rand(d, generator=g) * 9]),
                     torch.stack([1.35 * torch.sin(a), 1.35 * torch.cos(a),
                                  torch.rand(d, generator=g) * 9])]).permute(2, 0, 1)
    r, c = torch.meshgrid(torch.arange(px, dtype=torch.float64),
                          torch.arange(px, dtype=torch.float64), indexing="ij")
    md = m.double()
    want = torch.stack([md[:, i, 0, None, None] * c + md[:, i, 1, None, None] * r
                        + md[:, i, 2, None, None] for i in (0, 1)], dim=-1)
    got = _grid(m.to(device), px, w, h).cpu().double()
    pixels = (got + 1) / 2 * torch.tensor([w - 1, h - 1], dtype=torch.float64)
    assert (pixels - want).abs().max() < 1e-4


def test_a_batch_with_some_deferred_thumbnails_made_is_refused(tmp_path, settings):
    """The device makes every deferred tile's thumbnail or none: a batch where the readers
    made some of them (no reader does) is an error, not thumbnails put on the wrong rows."""
    s, batch = _deferred_batch(tmp_path, settings)
    later = np.flatnonzero(batch.deferred)
    assert len(later) >= 2
    batch.thumbs[later[0]] = b"\xff\xd8 made by a reader"
    with pytest.raises(ValueError, match="some deferred tiles' thumbnails, not all"):
        resample_deferred(batch, CPU, (s.job.thumbnail_size, s.job.thumbnail_quality))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_warp_beside_the_encoder_makes_the_same_tiles_without_waiting_for_it(
        tmp_path, settings, monkeypatch):
    """device_warp.WARP_BESIDE: the warp on the copy stream gives the tiles and thumbnails
    of the warp on the encoder's stream, made while ~1 s of work queued on that stream still
    runs, and the encoder's stream sees them once it gets there. In line, it is queued
    without waiting for that work."""
    import indexer.job.device_warp as dw

    s, batch = _deferred_batch(tmp_path, settings)
    batch = batch.pin_memory()
    assert batch.deferred.sum() >= 4
    cuda = torch.device("cuda")

    def run():
        return resample_deferred(dataclasses.replace(batch, thumbs=list(batch.thumbs)), cuda,
                                 (s.job.thumbnail_size, s.job.thumbnail_quality))

    monkeypatch.setattr(dw, "WARP_BESIDE", False)  # in line on the encoder's stream
    ref = run()
    want = ref.thumbnails()
    monkeypatch.setattr(dw, "WARP_BESIDE", True)
    run().thumbnails()  # the copy stream's memory, allocated once
    torch.cuda.synchronize()
    busy_cuda_stream(1.0)  # the encoder's batches, queued
    got = run()
    made = torch.cuda.Event()
    made.record(dw._copy_stream(cuda))
    made.synchronize()
    assert not torch.cuda.current_stream().query()  # made while the queued work runs
    assert got.thumbnails() == want  # copied back without waiting for it either
    assert not torch.cuda.current_stream().query()
    assert torch.equal(got.rgb, ref.rgb)  # read on the encoder's stream, after the warp
    # In line, the warp's kernels queue behind the encoder's work, but the main thread that
    # queues them does not wait for it (no copy from pageable memory on that stream).
    monkeypatch.setattr(dw, "WARP_BESIDE", False)
    torch.cuda.synchronize()
    busy_cuda_stream(1.0)
    t0 = time.perf_counter()
    inline = run()
    assert time.perf_counter() - t0 < 0.3
    assert not torch.cuda.current_stream().query()
    assert torch.equal(inline.rgb, ref.rgb) and inline.thumbnails() == want


def test_the_job_gives_the_same_index_either_way(tmp_path, settings, encoder):
    """Two reader processes, the test model: the index with plain tiles resampled on the
    device (here the CPU), their thumbnails made by the readers or (as on a GPU) on the
    device too, holds the same tiles, nodata counts, within float tolerance the same
    vectors, and alike thumbnails, as the index of the readers' warp."""
    path = patterned_raster(tmp_path / "archive" / "r.tif", 1024, nodata=0)
    reports, snaps = [], []
    for where, thumbs in (("readers", "auto"), ("device", "auto"), ("device", "device")):
        s = _fast(settings, target_gsd_m=4.0)  # 5 m pixels, upsampled: no blur
        s = dataclasses.replace(s, job=dataclasses.replace(
            s.job, workers=2, warp_on=where, thumbnails_on=thumbs, batch_size=32,
            read_batch=64))
        out = tmp_path / f"{where}-{thumbs}"
        job = IndexJob(out, s, encoder, progress=False)
        assert (job.runner.warp_device is None) == (where == "readers")
        # auto: on a GPU only (on the CPU the readers' OpenCV is cheaper than grid_sample)
        gpu = job.runner.warp_device is not None and job.runner.warp_device.type == "cuda"
        assert job.runner._thumbnails_on_device() == (thumbs == "device" or (
            thumbs == "auto" and gpu))
        reports.append(job.run([str(path.parent)]))
        snaps.append(IndexSnapshot.open(out))
    a = reports[0]
    assert "warp on the device" not in a.stages
    tiles = [s.tiles(["id", "z", "x", "y"]).to_pandas().sort_values(["x", "y"]) for s in snaps]
    for b, snap, tb in zip(reports[1:], snaps[1:], tiles[1:], strict=True):
        assert b.stages["warp on the device"] > 0
        assert a.tiles_written == b.tiles_written > 0 and a.tiles_nodata == b.tiles_nodata
        np.testing.assert_array_equal(tiles[0][["z", "x", "y"]].to_numpy(),
                                      tb[["z", "x", "y"]].to_numpy())
        va = snaps[0].get_vectors(tiles[0]["id"].to_numpy())
        assert (va * snap.get_vectors(tb["id"].to_numpy())).sum(axis=1).min() > 0.999
        ref = snaps[0].thumbnails(tiles[0]["id"].to_numpy())
        got = snap.thumbnails(tb["id"].to_numpy())
        assert len(got) == len(ref) == len(tb)
        for i, j in zip(tiles[0]["id"].tolist(), tb["id"].tolist(), strict=True):
            ia = cv2.imdecode(np.frombuffer(ref[i], np.uint8), cv2.IMREAD_COLOR)
            ib = cv2.imdecode(np.frombuffer(got[j], np.uint8), cv2.IMREAD_COLOR)
            assert np.abs(ia.astype(np.int16) - ib).mean() < 4


def test_where_the_warp_runs_is_a_setting(tmp_path, settings):
    """auto: the encoder's GPU, never a CPU; device: the encoder's device whatever it is;
    readers, or GDAL's warp: the readers. A wrong value is one line."""
    s = _fast(settings)

    class On:
        def __init__(self, kind):
            self.device = torch.device(kind)

    def where(on, kind, warp="fast"):
        t = dataclasses.replace(s.tiling, warp=warp)
        return warp_device(dataclasses.replace(s, tiling=t, job=dataclasses.replace(
            s.job, warp_on=on)), On(kind))

    assert where("auto", "cpu") is None and where("readers", "cpu") is None
    assert where("device", "cpu") == CPU and where("device", "cpu", "gdal") is None
    assert where("auto", "cuda") == torch.device("cuda") and where("readers", "cuda") is None
    assert where("auto", "cuda", "gdal") is None
    bad = tmp_path / "bad.toml"
    bad.write_text('[job]\nwarp_on = "gpu"\n')
    with pytest.raises(ConfigError, match="job.warp_on must be auto, device or readers"):
        load_settings(bad)
    bad.write_text('[job]\nthumbnails_on = "gpu"\n')
    with pytest.raises(ConfigError, match="job.thumbnails_on must be auto, device or readers"):
        load_settings(bad)


def test_where_the_thumbnails_are_made_is_a_setting(settings):
    """job.thumbnails_on: auto = on the warp's device where that is a GPU; device = there
    whatever it is; readers = never; and never where the device cannot (2x from the
    source) or the readers warp everything."""
    job = dataclasses.replace(settings.job, batch_size=64, workers=0)

    def on(setting, kind, size=128):
        j = dataclasses.replace(job, thumbnails_on=setting, thumbnail_size=size)
        device = torch.device(kind) if kind else None
        return LocalRunner(settings.tiling, j, 224, warp_device=device)._thumbnails_on_device()

    assert on("auto", "cuda") and on("device", "cpu") and on("device", "cuda")
    assert not on("auto", "cpu") and not on("readers", "cuda") and not on("device", None)
    assert not on("auto", "cuda", size=64)


def test_a_batch_with_deferred_tiles_is_not_split_before_they_are_resampled(tmp_path,
                                                                            settings):
    s = _fast(settings, target_gsd_m=4.0)
    path = patterned_raster(tmp_path / "r.tif", 1024)
    ds = TileDataset(_plans(path, s.tiling, 224), 224, s.tiling, s.job, defer=True)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.deferred is not None
    with pytest.raises(ValueError, match="resample the deferred tiles first"):
        batch.split(4)
    assert len(resample_deferred(batch, CPU).split(4)) > 1


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_thumbnails_made_on_the_device_are_the_readers(tmp_path, settings, device, dtype):
    """The thumbnail pixels the device resamples from a deferred tile's crop are within 1
    grey level of the readers' (crop_thumbnail_bands, scaled alike), before JPEG."""
    s = _fast(settings, target_gsd_m=4.0)
    data = _smooth(900) if dtype == "uint8" else _smooth(900).astype(np.uint16) * 150 + 400
    path = make_raster(tmp_path / "r.tif", size=900, dtype=dtype, data=data)
    plans = _plans(path, s.tiling, 224)
    ds = TileDataset(plans, 224, s.tiling, s.job, defer=True)
    strips = [ds[i] for i in range(len(ds))]
    tiles = [(d, st["scale"]) for st in strips for d in st["deferred"].values()]
    assert len(tiles) >= 4
    scale = None if dtype == "uint8" else tiles[0][1]
    want = np.stack([np.stack(crop_thumbnail_bands(d.crop, d.matrix, 224, 128, scale))
                     for d, _ in tiles]).astype(np.int16)
    batch = collate(strips)
    maps = thumbnail_maps(batch.maps, 224, 128)
    from indexer.job.device_warp import _factors
    factors = _factors(batch.scales)
    got = warp_tiles(batch.crops.to(device), torch.from_numpy(maps).to(device), 128,
                     None if factors is None else torch.from_numpy(factors).to(device))
    diff = np.abs(got.cpu().numpy().astype(np.int16) - want)
    assert diff.max() <= 1 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_a_batch_split_keeps_each_tiles_thumbnail(tmp_path, settings):
    """Thumbnails still being made when the batch is split reach the right parts."""
    s = _fast(settings, target_gsd_m=4.0)
    path = patterned_raster(tmp_path / "r.tif", 1024, nodata=0)
    job = dataclasses.replace(s.job, batch_size=4096)
    a, b, deferred = _both(_plans(path, s.tiling, 224), 224, s.tiling, job)
    assert 0 < deferred < len(a.rgb) and b.later_thumbs is not None
    parts = b.split(5)
    assert len(parts) > 2
    assert sum(len(p.later_thumbs.rows) for p in parts) == len(b.later_thumbs.rows)
    got = [t for p in parts for t in p.thumbnails()]
    assert got == b.thumbnails() and all(t[:2] == b"\xff\xd8" for t in got)


def test_which_thumbnails_the_device_can_make():
    """Under 2x from the source (no blur): 224 -> 128 px yes; 224 -> 64 and 336 -> 128 no
    (the readers blur those first)."""
    assert device_thumbnails(224, 128) and device_thumbnails(64, 128)
    assert not device_thumbnails(224, 64) and not device_thumbnails(336, 128)


def test_a_thumbnail_that_fails_to_encode_fails_the_batch(tmp_path, settings):
    """An error on a JPEG thread is raised where the thumbnails are taken (the writer)."""
    from concurrent.futures import Future

    from indexer.job.read import LaterThumbs

    s = _fast(settings, target_gsd_m=4.0)
    path = patterned_raster(tmp_path / "r.tif", 1024)
    _, b, _ = _both(_plans(path, s.tiling, 224), 224, s.tiling, s.job)
    failed = Future()
    failed.set_exception(ValueError("cannot JPEG-encode a 128 px thumbnail"))
    b.later_thumbs = LaterThumbs(failed, b.later_thumbs.pick, b.later_thumbs.rows)
    with pytest.raises(ValueError, match="cannot JPEG-encode"):
        b.thumbnails()
