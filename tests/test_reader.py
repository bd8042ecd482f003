"""The one raster reader: tiles (through a block's grid view), arbitrary windows (GRAFT
patches) and georeferenced query images read the same pixels the same way."""

from __future__ import annotations

import dataclasses
import io
import math

import mercantile
import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as PixelWindow

from indexer.config import DiscoverySettings, TileRecipe
from indexer.job.read import jpeg_thumbnail
from indexer.rasters import reader as reader_mod
from indexer.rasters.grid import (
    Window,
    block_window,
    choose_zoom,
    raster_blocks,
    tile_window,
)
from indexer.rasters.inspect import inspect_raster
from indexer.rasters.reader import RasterReader
from indexer.rasters.scaling import to_uint8, valid_mask
from indexer.rasters.sources import RasterSource
from search.query_image import decode_query_image
from tests.helpers import make_raster, strip_cuts


@pytest.fixture
def settings(settings):
    """These tests check the reader against GDAL itself, so they pin GDAL's warp
    (tiling.warp = "gdal"); the fast warp's own tests are in test_fast_warp.py."""
    return dataclasses.replace(settings, tiling=dataclasses.replace(settings.tiling,
                                                                    warp="gdal"))


def _info(path, tiling):
    return inspect_raster(RasterSource(str(path)), DiscoverySettings(), tiling)


def test_a_tile_reads_the_same_through_its_block_or_alone(tmp_path, settings):
    tiling = dataclasses.replace(settings.tiling, resampling="nearest")
    info = _info(make_raster(tmp_path / "a.tif", size=300), tiling)
    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, 64, tiling)
    (block,) = raster_blocks(info, zoom)
    reader = RasterReader(tiling)
    x, y = block.tile(block.count // 2)
    win = tile_window(zoom, x, y, 64, block.src_shift)
    via_block = reader.read(info, win, grid=block_window(block, 64))
    alone = reader.read(info, win)
    assert via_block.rgb.shape == (3, 64, 64)
    # Same pixels, up to GDAL's approximate warp transformer (error threshold 0.125 px):
    # a nearest-neighbour pick can flip for the odd pixel on a source pixel edge.
    differ = (via_block.rgb != alone.rgb).any(axis=0).mean()
    assert differ < 0.005
    assert abs(via_block.nodata_fraction - alone.nodata_fraction) < 0.005
    # a window that is not an integer window of the grid is read on its own
    shifted = dataclasses.replace(win, left=win.left + win.res / 3)
    assert shifted.offset_in(block_window(block, 64)) is None
    reader.close()


def test_open_datasets_are_bounded(tmp_path, settings):
    infos = [_info(make_raster(tmp_path / f"r{i}.tif", size=64, seed=i), settings.tiling)
             for i in range(5)]
    reader = RasterReader(settings.tiling, max_open=2)
    for info in infos:
        w, s, e, n = info.lonlat_bounds
        import mercantile

        x0, y1 = mercantile.xy(w, n)
        reader.read(info, Window.square(x0, y1, 10.0, 16))
        assert len(reader._datasets) <= 2
    reader.close()
    assert not reader._datasets and not reader._views


def test_a_georeferenced_query_image_is_read_by_the_raster_reader(tmp_path, settings,
                                                                   monkeypatch):
    path = make_raster(tmp_path / "q.tif", size=200)
    calls = []
    real = reader_mod.RasterReader.read
    monkeypatch.setattr(reader_mod.RasterReader, "read",
                        lambda self, info, window, grid=None: (calls.append(window),
                                                               real(self, info, window, grid))[1])
    recipe = TileRecipe.from_tiling(settings.tiling, 64)
    tile = decode_query_image(path.read_bytes(), recipe, ("png", "jpeg", "tiff"), 16)
    assert tile.shape == (3, 64, 64) and tile.dtype == np.uint8
    (win,) = calls
    assert win.width == win.height == 64
    # the centre square of a 1000 m footprint at 64 pixels: 1000 m / cos(43.5 deg) / 64 = 21.5
    # web-mercator metres per pixel (a little more: the warped footprint's bounding box)
    assert 21 < win.res < 24


# --- one warp per read, overviews, strips, thumbnails -------------------------------------

REAL_RASTERS = ("colorado_hro_0.15m.tif", "haiti_rgbn_5m.tif", "korea_0.6m_cogeo.tif",
                "landsat_bahamas_RGB.byte.tif", "naip_nd_20090818.tif", "naip_nd_20140720.tif")


def _reference_read(info, window, tiling, grid=None, overview_level=None):
    """The reader as it was before read_masked: the data and GDAL's dataset mask in two
    calls on a warped view of `grid` (or of the window alone), on a freshly opened dataset
    (the full-resolution pixels, or the internal overview `overview_level`).
    -> (rgb, valid, nodata_fraction)."""
    opts = {} if overview_level is None or overview_level < 0 else {
        "overview_level": overview_level}
    view = window if grid is None else grid
    with rasterio.open(info.path, **opts) as src:
        shift = reader_mod._shift(info, view)
        extra = {"src_transform": Affine.translation(shift, 0) @ src.transform} if shift else {}
        with WarpedVRT(src, crs="EPSG:3857", transform=view.transform, width=view.width,
                       height=view.height, resampling=Resampling[tiling.resampling],
                       add_alpha=info.add_alpha, **extra) as vrt:
            win = None
            if grid is not None:
                col, row = window.offset_in(grid)
                win = PixelWindow(col, row, window.width, window.height)
            data = vrt.read(list(tiling.bands), window=win)
            valid = valid_mask(data, vrt.dataset_mask(window=win), tiling)
    rgb = to_uint8(data, info.scale_lo, info.scale_hi)
    rgb = np.where(valid[None], rgb, np.uint8(0))
    return rgb, valid, float(1.0 - valid.mean())


def _sample_tiles(block):
    """Block corners (partly outside the raster: a block covers the footprint's bounding
    box) and the centre."""
    w = block.width
    return sorted({0, w - 1, block.count - w, block.count - 1, block.count // 2})


def _assert_same(got, want, what):
    rgb, valid = got
    assert rgb.dtype == np.uint8 and valid.dtype == bool, what
    assert np.array_equal(valid, want[1]), what
    assert np.array_equal(rgb, want[0]), what


def _corner_window(info, res, px):
    """A window off every tile grid, centred on the raster's north-west corner."""
    x, y = mercantile.xy(info.lonlat_bounds[0], info.lonlat_bounds[3])
    return Window.square(x - px * res / 2 + res / 3, y + px * res / 2, res, px)


@pytest.mark.parametrize("name", REAL_RASTERS)
def test_one_warp_reads_as_the_two_warp_reader(name, shared_geotiff, settings):
    """Same pixels, masks and nodata fractions as the two-call reader, bit for bit, for
    tiles through their block's grid and for windows read alone, at the tile zoom and one
    coarser (downsampling), from the full-resolution pixels and from the overview the
    reader picks."""
    tiling = settings.tiling
    info = _info(shared_geotiff / name, tiling)
    px = 64
    z0 = choose_zoom(info.native_gsd_m, info.centre_lat, px, tiling)
    for use_overviews in (False, True):
        reader = RasterReader(tiling, use_overviews=use_overviews)
        for zoom in (z0, z0 - 1):
            (block,) = raster_blocks(info, zoom)
            grid = block_window(block, px)
            wins = [(tile_window(zoom, *block.tile(i), px, block.src_shift), grid)
                    for i in _sample_tiles(block)]
            wins += [(w, None) for w, _ in wins[:2]]  # the same tiles alone
            wins.append((_corner_window(info, grid.res * 1.3, px), None))
            for win, g in wins:
                level = reader.overview_level(info, g or win)
                assert use_overviews or level == -1
                want = _reference_read(info, win, tiling, g, level)
                what = f"{name} z{zoom} {win} grid={g is not None} level={level}"
                _assert_same(reader.read_masked(info, win, g), want, what)
                patch = reader.read(info, win, g)
                assert np.array_equal(patch.rgb, want[0]), what
                assert patch.nodata_fraction == want[2], what
        reader.close()


@pytest.mark.parametrize("name", REAL_RASTERS)
def test_a_strip_cut_into_tiles_is_the_tiles(name, shared_geotiff, settings):
    """A strip of up to 16 tiles of one row, read in one call through the block's grid and
    cut in numpy, is exactly each tile read on its own through the grid (and so the
    two-warp reader's tiles). Exact, not the approximate-transformer tolerance of
    test_a_tile_reads_the_same_through_its_block_or_alone: that tolerance is for a tile
    warped on its own, where GDAL's approximate transformer interpolates over another
    extent; here every pixel comes from the same warped view, block by block (the reader
    keeps GDAL off its whole-request path, which would warp a large strip as one region)."""
    tiling = settings.tiling
    info = _info(shared_geotiff / name, tiling)
    px = 224  # a strip wider (> 512) and taller (> 128) than the warped view's blocks
    tiles = RasterReader(tiling)
    for tile, grid, rgb, valid, i, n in strip_cuts(info, tiling, px):
        _assert_same((rgb, valid), tiles.read_masked(info, tile, grid), f"{name} {tile}")
        if i in (0, n - 1):
            level = tiles.overview_level(info, grid)
            _assert_same((rgb, valid), _reference_read(info, tile, tiling, grid, level)[:2],
                         f"{name} {tile} reference")
    tiles.close()


def _synthetic(tmp_path, kind, n=96):
    """A raster of each mask kind the reader knows, with holes where it has nodata."""
    rng = np.random.default_rng(1)

    def holes(d, value):
        d = d.copy()
        d[:, 10:30, 20:50] = value
        d[:, 60:70, :] = value
        return d

    u8 = rng.integers(1, 255, (3, n, n)).astype("uint8")
    colors, mask, bands = None, None, (1, 2, 3)
    if kind == "uint16 nodata 0":
        data, nodata = holes(rng.integers(1, 4000, (3, n, n)).astype("uint16"), 0), 0
    elif kind == "float32 nodata -9999":
        data, nodata = holes(rng.normal(100, 30, (3, n, n)).astype("float32"), -9999), -9999
        data[0, 40:45, 40:45] = np.float32(-9999.0005)  # GDAL's float nodata test is fuzzy
        data[1, 50:52, 50:52] = np.nan
    elif kind == "float32 nodata nan":
        data, nodata = holes(rng.normal(100, 30, (3, n, n)).astype("float32"), np.nan), np.nan
    elif kind == "int16 nodata -1":
        data, nodata = holes(rng.integers(-500, 3000, (3, n, n)).astype("int16"), -1), -1
    elif kind == "gray nodata 0, bands 1,1,1":
        data, nodata, bands = holes(u8[:1], 0), 0, (1, 1, 1)
    elif kind == "RGBN nodata 0 (dataset mask = band 4's)":
        data, nodata = holes(rng.integers(1, 255, (4, n, n)).astype("uint8"), 0), 0
        data[3, 30:40] = 0  # only band 4 decides
        colors = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    elif kind == "RGBA":
        data, nodata = np.concatenate([u8, np.full((1, n, n), 255, "uint8")]), None
        data[3, 10:40, 10:40] = 0
        colors = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    elif kind == "RGB, no nodata":
        data, nodata = u8, None
    elif kind == "RGB with an internal mask":
        data, nodata = u8, None
        mask = np.full((n, n), 255, "uint8")
        mask[30:60, 30:60] = 0
    elif kind == "uint16, no nodata":
        data, nodata = rng.integers(1, 4000, (3, n, n)).astype("uint16"), None
    elif kind == "float32, no nodata":
        data, nodata = rng.normal(100, 30, (3, n, n)).astype("float32"), None
    else:
        raise AssertionError(kind)
    path = make_raster(tmp_path / "s.tif", data=data, nodata=nodata, size=n)
    if colors or mask is not None:
        with rasterio.open(path, "r+") as dst:
            if colors:
                dst.colorinterp = colors
            if mask is not None:
                with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                    dst.write_mask(mask)
    return path, bands


@pytest.mark.parametrize("kind,rule", [
    ("uint16 nodata 0", "nodata"), ("float32 nodata -9999", "nodata"),
    ("float32 nodata nan", "nodata"), ("int16 nodata -1", "nodata"),
    ("gray nodata 0, bands 1,1,1", "nodata"),
    ("RGBN nodata 0 (dataset mask = band 4's)", "nodata"),
    ("RGBA", "alpha"), ("RGB, no nodata", "alpha"), ("RGB with an internal mask", "alpha"),
    ("uint16, no nodata", "alpha"),
    # a float32 alpha band is no mask band to GDAL: dataset_mask is all valid
    ("float32, no nodata", "valid"),
])
def test_the_mask_from_the_same_read_is_gdals_for_every_raster_kind(tmp_path, settings, kind,
                                                                    rule):
    path, bands = _synthetic(tmp_path, kind)
    px = 32
    for zero_is_nodata in (True, False):
        tiling = dataclasses.replace(settings.tiling, bands=bands,
                                     zero_is_nodata=zero_is_nodata)
        info = _info(path, tiling)
        reader = RasterReader(tiling)
        for dz in (0, -1):
            zoom = choose_zoom(info.native_gsd_m, info.centre_lat, px, tiling) + dz
            (block,) = raster_blocks(info, zoom)
            grid = block_window(block, px)
            assert reader._view(info, grid).rule.kind == rule  # never the second warp
            for i in range(block.count):
                win = tile_window(zoom, *block.tile(i), px, block.src_shift)
                for g in (grid, None):
                    _assert_same(reader.read_masked(info, win, g),
                                 _reference_read(info, win, tiling, g),
                                 f"{kind} zero_is_nodata={zero_is_nodata} {i} {g}")
        reader.close()


def _cog(tmp_path, res=0.5, size=1024):
    """A smooth 0.5 m UTM raster with internal 2x, 4x, 8x overviews (averaged)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    data = np.stack([80 + 60 * np.sin(2 * np.pi * (2 * xx + yy)),
                     120 + 50 * np.cos(2 * np.pi * 3 * yy),
                     100 + 80 * xx * yy]).round().astype("uint8")
    path = make_raster(tmp_path / "cog.tif", data=data, size=size, res=res, tiled=True,
                       blockxsize=256, blockysize=256)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4, 8], Resampling.average)
    return path


def _centre_window(info, ground_res, px):
    lon = (info.lonlat_bounds[0] + info.lonlat_bounds[2]) / 2
    lat = info.centre_lat
    x, y = mercantile.xy(lon, lat)
    res = ground_res / math.cos(math.radians(lat))  # web-mercator metres at this latitude
    return Window.square(x - px * res / 2, y + px * res / 2, res, px)


@pytest.mark.parametrize("coarser,level", [(1.0, -1), (1.9, -1), (2.5, 0), (4.0, 1),
                                           (5.0, 1), (20.0, 2)])
def test_coarse_windows_read_the_overview(tmp_path, settings, coarser, level):
    """The overview used is the coarsest whose pixels are no larger than the window's
    (gdalwarp -ovr AUTO); from 2x coarser on. Its pixels are within a few grey levels of
    the full-resolution warp (a smooth image: the averaged overview and GDAL's downsampling
    bilinear kernel see nearly the same means)."""
    path = _cog(tmp_path)
    tiling = settings.tiling
    info = _info(path, tiling)
    win = _centre_window(info, 0.5 * coarser, 32)
    reader = RasterReader(tiling)
    assert reader.overview_level(info, win) == level
    rgb, valid = reader.read_masked(info, win)
    opened = {lvl for p, lvl in reader._datasets if p == str(path)}
    assert opened == ({-1} if level == -1 else {-1, level})
    full, full_valid = RasterReader(tiling, use_overviews=False).read_masked(info, win)
    assert valid.all() and full_valid.all()
    diff = np.abs(rgb.astype(int) - full)
    if level == -1:
        assert not diff.any()
    else:
        assert diff.mean() < 1.0 and diff.max() <= 3  # measured: 0.1-0.4, max 2
        # ... and exactly the two-warp reader's read of that overview
        _assert_same((rgb, valid), _reference_read(info, win, tiling, None, level)[:2],
                     "overview")
    # the same through a grid (one view, warped from the overview)
    grid = dataclasses.replace(win, width=40, height=40)
    rgb_g, _ = reader.read_masked(info, win, grid)
    assert reader._views[(str(path), grid)].dataset == (str(path), level)
    assert rgb_g.shape == (3, 32, 32)
    assert not RasterReader(tiling, use_overviews=False).overview_level(info, win) + 1
    reader.close()


@pytest.mark.parametrize("tile,size", [(224, 112), (224, 128), (256, 128), (128, 128)])
def test_jpeg_thumbnail_is_the_area_mean(tile, size):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:tile, 0:tile] / tile
    smooth = np.stack([120 + 80 * np.sin(2 * np.pi * (xx + 2 * yy)), 60 + 150 * xx * yy,
                       200 - 120 * yy])
    rgb = (smooth + rng.integers(0, 6, (3, tile, tile))).clip(0, 255).astype(np.uint8)
    jpeg = jpeg_thumbnail(rgb, size, 95)
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.size == (size, size) and img.mode == "RGB"
    got = np.asarray(img).transpose(2, 0, 1).astype(float)
    # the exact area mean: each output pixel averages the input pixels it covers (partly)
    f = tile / size
    edges = np.arange(size + 1) * f
    w = np.clip(np.minimum(edges[1:, None], np.arange(1, tile + 1)[None])
                - np.maximum(edges[:-1, None], np.arange(tile)[None]), 0, None) / f
    want = w @ rgb.astype(float) @ w.T
    diff = np.abs(got - want)
    # JPEG at quality 95 with 4:2:0 chroma (PIL's default) loses ~1.5 grey levels here on
    # its own (the same for a thumbnail the tile's size, nothing resized)
    assert diff.mean() < 2.5 and np.percentile(diff, 99) < 8
