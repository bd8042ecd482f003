"""The one raster reader: tiles (through a block's grid view), arbitrary windows (GRAFT
patches) and georeferenced query images read the same pixels the same way."""

from __future__ import annotations

import dataclasses

import numpy as np

from indexer.config import DiscoverySettings, TileRecipe
from indexer.rasters import reader as reader_mod
from indexer.rasters.grid import Window, block_window, choose_zoom, raster_blocks, tile_window
from indexer.rasters.inspect import inspect_raster
from indexer.rasters.reader import RasterReader
from indexer.rasters.sources import RasterSource
from search.query_image import decode_query_image
from tests.helpers import make_raster


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
