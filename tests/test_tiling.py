"""Tiling: zoom choice, tile grid, and that pixels land in the right web-mercator tile."""

from __future__ import annotations

import dataclasses
import io
import math

import mercantile
import numpy as np
import pytest
from PIL import Image

from indexer.config import TilingSettings
from indexer.job.pipeline import IndexJob
from indexer.rasters.grid import choose_zoom, tile_gsd_m
from indexer.rasters.scaling import to_uint8
from indexer.store.snapshot import IndexSnapshot
from tests.conftest import make_raster


def test_tile_gsd_matches_web_mercator_resolution():
    # 256-px tiles at zoom 0 on the equator: 156543.03 m/px (the standard constant).
    assert tile_gsd_m(0, 0.0, 256) == pytest.approx(156543.03392, rel=1e-9)
    assert tile_gsd_m(10, 60.0, 256) == pytest.approx(156543.03392 / 1024 / 2, rel=1e-9)


@pytest.mark.parametrize("native,target,expect_near", [
    (5.0, 5.0, 5.0),      # native = target: nearest zoom to 5 m
    (0.15, 10.0, 0.6),    # 15 cm aerial: no coarser than 4x native
    (300.0, 10.0, 150.0),  # 300 m Landsat: no finer than native / 2
])
def test_choose_zoom_respects_target_and_native_limits(native, target, expect_near):
    t = TilingSettings(target_gsd_m=target, max_upsample=2, max_downsample=4)
    z = choose_zoom(native, 45.0, 64, t)
    gsd = tile_gsd_m(z, 45.0, 64)
    assert native / 2 <= gsd <= native * 4
    # no other allowed zoom is nearer the (clamped) goal
    for other in range(25):
        g = tile_gsd_m(other, 45.0, 64)
        if native / 2 <= g <= native * 4:
            assert abs(math.log(gsd / expect_near)) <= abs(math.log(g / expect_near)) + 1e-12


def test_fixed_zoom_overrides():
    assert choose_zoom(5.0, 10.0, 64, TilingSettings(zoom=12)) == 12


def test_to_uint8_percentile_map():
    data = np.array([[[0, 1000, 2000]]] * 3, dtype=np.uint16)
    out = to_uint8(data, (1000.0,) * 3, (2000.0,) * 3)
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 255]


def test_synthetic_pattern_lands_in_the_right_tile(tmp_path, settings, encoder):
    """A bright square at a known lon/lat shows up in that tile's thumbnail, at the right
    pixel, and nowhere else; the raster is in UTM, the tiles in web mercator."""
    zoom = 16
    lon0, lat0 = 11.88, 43.46
    home = mercantile.tile(lon0, lat0, zoom)
    b = mercantile.bounds(home)
    fx, fy = 0.3, 0.6  # target position inside the tile, as fractions from the north-west
    plon = b.west + fx * (b.east - b.west)
    # latitude at fraction fy in mercator y
    xy = mercantile.xy_bounds(home)
    _, plat = mercantile.lnglat(xy.left, xy.top - fy * (xy.top - xy.bottom))

    size, res = 320, 5.0
    from rasterio.warp import transform as warp_transform

    xs, ys = warp_transform("EPSG:4326", "EPSG:32632", [lon0], [lat0])
    px_x, px_y = warp_transform("EPSG:4326", "EPSG:32632", [plon], [plat])
    col = int((px_x[0] - (xs[0] - size * res / 2)) / res)
    row = int(((ys[0] + size * res / 2) - px_y[0]) / res)
    data = np.full((3, size, size), 20, dtype=np.uint8)
    half = 4  # a 40 m bright square
    data[:, row - half:row + half, col - half:col + half] = 250
    archive = tmp_path / "archive"
    make_raster(archive / "pattern.tif", lon=lon0, lat=lat0, size=size, res=res, data=data)

    s = dataclasses.replace(settings, tiling=dataclasses.replace(settings.tiling, zoom=zoom))
    report = IndexJob(tmp_path / "idx", s, encoder, progress=False).run([str(archive)])
    assert report.tiles_written > 4 and not report.problems

    snap = IndexSnapshot.open(tmp_path / "idx")
    tiles = snap.tiles().to_pylist()
    by_xy = {(t["x"], t["y"]): t for t in tiles}
    assert (home.x, home.y) in by_xy
    for t in tiles:
        img = np.asarray(Image.open(io.BytesIO(snap.thumbnail(t["id"]))).convert("L"))
        bright = img > 180
        if (t["x"], t["y"]) == (home.x, home.y):
            ys_, xs_ = np.nonzero(bright)
            assert len(ys_) > 0, "the bright square is missing from its tile"
            h, w = img.shape
            assert xs_.mean() / w == pytest.approx(fx, abs=0.04)
            assert ys_.mean() / h == pytest.approx(fy, abs=0.04)
        else:
            assert not bright.any(), f"bright pixels leaked into tile {t['x']},{t['y']}"
