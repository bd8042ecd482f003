"""The fast warp (tiling.warp = "fast", indexer/rasters/warp.py) against GDAL's warper, the
reader's other warp: same tiles within a stated tolerance on every shared raster (every CRS
there), exact where it must be (a strip cut into tiles; nodata never blending in), the
projection's affine fits within GDAL's own error bound, and the recipe that records which
warp an index's tiles went through."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import transform as warp_transform

from indexer.config import ConfigError, DiscoverySettings, TileRecipe, load_settings
from indexer.rasters import reader as reader_mod
from indexer.rasters import warp as warp_mod
from indexer.rasters.grid import (
    ORIGIN,
)
from indexer.rasters.inspect import inspect_raster
from indexer.rasters.reader import RasterReader
from indexer.rasters.sources import RasterSource
from tests.helpers import (
    OFFLINE_CONFIG,
    job_strips,
    make_raster,
    read_difference,
    strip_cuts,
)

REAL_RASTERS = ["naip_nd_20090818.tif", "landsat_bahamas_RGB.byte.tif", "korea_0.6m_cogeo.tif",
                "colorado_hro_0.15m.tif", "haiti_rgbn_5m.tif"]


def _tiling(settings, warp, **kw):
    return dataclasses.replace(settings.tiling, warp=warp, **kw)


def _info(path, tiling):
    return inspect_raster(RasterSource(str(path)), DiscoverySettings(), tiling)


def _ratio(info, grid):
    """Tile pixels per raster pixel (ground size), at the raster's centre."""
    return grid.res * np.cos(np.radians(info.centre_lat)) / info.native_gsd_m


def _compare(info, tiling_gdal, tiling_fast, px):
    """(abs differences of the pixels both call valid, share of pixels whose validity
    differs, the largest tile/raster pixel ratio, the overview level of the last strip)."""
    gdal, fast = RasterReader(tiling_gdal), RasterReader(tiling_fast)
    strips = job_strips(info, tiling_fast, px)
    d, differ = read_difference((gdal.read_masked(info, strip, grid),
                                 fast.read_masked(info, strip, grid)) for grid, strip in strips)
    level = fast.overview_level(info, strips[-1][1])
    ratio = max(_ratio(info, grid) for grid, _ in strips)
    gdal.close()
    fast.close()
    return d, differ, ratio, level


@pytest.mark.parametrize("name", REAL_RASTERS)
@pytest.mark.parametrize("target", [2.0, 10.0])
def test_fast_warp_is_gdals_within_the_stated_tolerance(name, target, shared_geotiff,
                                                        settings):
    """Every CRS of the shared rasters, upsampled and downsampled: the tiles' pixels agree
    with GDAL's bilinear warp within the tolerance warp.py states, and so do the valid
    masks. Upsampling (and downsampling by less than GDAL's 1.05): the same kernel, a few
    tenths of a grey level (0.5 on the 300 m Landsat scene, where GDAL's default warp is
    itself that far from the exact projection). Downsampling: a Gaussian for GDAL's
    widened kernel, within ~1.5 grey levels on average when an overview takes over from 2x;
    without overviews (these files have none) farther from GDAL's kernel, within ~5."""
    gdal = _tiling(settings, "gdal", target_gsd_m=target)
    fast = _tiling(settings, "fast", target_gsd_m=target)
    info = _info(shared_geotiff / name, fast)
    d, differ, ratio, level = _compare(info, gdal, fast, 224)
    assert len(d) > 10_000, name
    assert differ < 1e-3, (name, differ)  # validity: a pixel of the raster's edges at most
    if ratio <= warp_mod.DOWNSAMPLE_FROM:  # (Landsat: GDAL's own transformer error, below)
        assert d.mean() < 0.6 and np.percentile(d, 99) <= 8, (name, ratio, d.mean())
    elif ratio <= 2 or level >= 0:
        assert d.mean() < 1.5 and np.percentile(d, 99) <= 16, (name, ratio, d.mean())
    else:
        assert d.mean() < 6 and np.percentile(d, 99) <= 40, (name, ratio, d.mean())


def test_the_fast_warp_is_nearer_the_exact_projection_than_gdals_default(shared_geotiff,
                                                                          settings):
    """Geometry: on the 300 m Landsat scene (34 km tiles, where the projection bends most
    across a tile), against GDAL's warp with its approximate transformer made exact
    (tolerance 0.001 px), the fast warp is closer than GDAL's default warp (0.125 px)."""
    from rasterio.vrt import WarpedVRT

    tiling = _tiling(settings, "fast", target_gsd_m=2.0)
    info = _info(shared_geotiff / "landsat_bahamas_RGB.byte.tif", tiling)
    grid = job_strips(info, tiling, 224)[0][0]
    fast, fast_valid = RasterReader(tiling).read_masked(info, grid)
    gdal, gdal_valid = RasterReader(_tiling(settings, "gdal", target_gsd_m=2.0)).read_masked(
        info, grid)
    with rasterio.open(info.path) as src, WarpedVRT(
            src, crs="EPSG:3857", transform=grid.transform, width=grid.width,
            height=grid.height, resampling=Resampling.bilinear, tolerance=0.001) as vrt:
        exact = vrt.read([1, 2, 3])
    keep = fast_valid & gdal_valid & (exact.min(axis=0) > 0)
    assert keep.sum() > 100_000

    def off(x):
        return np.abs(x.astype(int) - exact.astype(int))[:, keep].mean()

    assert off(fast) < 0.1 < off(gdal), (off(fast), off(gdal))


@pytest.mark.parametrize("name", REAL_RASTERS)
@pytest.mark.parametrize("px", [64, 224])
@pytest.mark.parametrize("target", [2.0, 10.0])
def test_a_strip_cut_into_tiles_is_the_tiles_read_alone(name, px, target, shared_geotiff,
                                                        settings):
    """Pieces depend on their lattice cell only (their map, their blur, their source
    rectangle): a strip of up to 16 tiles cut in numpy is exactly each tile read on its
    own, through the block's grid or without one; up- and downsampled."""
    tiling = _tiling(settings, "fast", target_gsd_m=target)
    info = _info(shared_geotiff / name, tiling)
    tiles = RasterReader(tiling)
    for tile, grid, rgb, valid, _, _ in strip_cuts(info, tiling, px):
        for g in (grid, None):
            t_rgb, t_valid = tiles.read_masked(info, tile, g)
            assert np.array_equal(t_rgb, rgb) and np.array_equal(t_valid, valid), (name, tile)
    tiles.close()


def _holes(path, dtype, nodata, fill, n=400, alpha=False):
    """A raster of one value `fill` with rectangles of `nodata` (or alpha 0)."""
    data = np.full((4 if alpha else 3, n, n), fill, dtype=dtype)
    hole = (slice(None, 3), slice(100, 180), slice(60, 300))
    if alpha:
        data[3] = 255
        data[3, 100:180, 60:300] = 0
        data[:3, 100:180, 60:300] = 7  # values under alpha 0: never seen
    else:
        data[hole] = nodata
        data[:, 250:260, :] = nodata
    return make_raster(path, data=data, size=n, res=2.0, nodata=None if alpha else nodata,
                       crs="EPSG:32632")


@pytest.mark.parametrize("dtype,nodata,fill,alpha", [
    ("uint8", 0, 200, False), ("uint16", 0, 3000, False), ("int16", -1, 1200, False),
    ("float32", -9999.0, 0.25, False), ("uint8", None, 90, True)])
@pytest.mark.parametrize("target", [1.5, 2.0, 3.1])
def test_nodata_never_blends_into_valid_pixels(tmp_path, settings, dtype, nodata, fill, alpha,
                                               target):
    """Around holes of nodata (or alpha 0) and the raster's edges, up- and downsampled:
    every valid pixel is exactly what a hole-free raster gives (the mean of valid samples
    only, as GDAL renormalises), and the valid mask is GDAL's within a pixel's width of
    the holes' edges."""
    path = _holes(tmp_path / "h.tif", dtype, nodata, fill, alpha=alpha)
    full = make_raster(tmp_path / "full.tif", data=np.full((3, 400, 400), fill, dtype=dtype),
                       size=400, res=2.0, crs="EPSG:32632")
    scaling = {} if dtype == "uint8" else {"scaling": "divisor", "reflectance_divisor": 4000}
    fast = _tiling(settings, "fast", target_gsd_m=target, **scaling)
    gdal = _tiling(settings, "gdal", target_gsd_m=target, **scaling)
    info, info_full = _info(path, fast), _info(full, fast)
    reader, reader_gdal = RasterReader(fast), RasterReader(gdal)
    seen = 0
    for grid, strip in job_strips(info, fast, 64):
        rgb, valid = reader.read_masked(info, strip, grid)
        ref, _ = reader.read_masked(info_full, strip, grid)
        assert np.array_equal(rgb[:, valid], ref[:, valid]), (dtype, target)
        assert (rgb[:, ~valid] == 0).all()
        _, g_valid = reader_gdal.read_masked(info, strip, grid)
        near = g_valid != valid
        assert near.mean() < 0.02, (dtype, target, near.mean())
        seen += int(valid.sum())
    assert seen > 10_000


def test_affine_fits_hold_gdals_error_bound_where_the_projection_bends(tmp_path, settings):
    """Large tiles of a geographic raster near the pole (the map bends most): the pieces'
    affine maps are cut until they fit, and at random points inside each piece the map is
    within 0.25 px of the exact projection (fitted exactly to 0.125 px at 9 points)."""
    path = make_raster(tmp_path / "north.tif", crs="EPSG:4326", lon=20.0, lat=74.0,
                       size=600, res=0.02)
    with rasterio.open(path) as src:
        from indexer.rasters.grid import Window

        res = 2 * ORIGIN / 2**7 / 256  # zoom 7 tiles of 256 px: ~600 m pixels, 150 km tiles
        x, y = warp_transform("EPSG:4326", "EPSG:3857", [20.0], [74.0])
        win = Window(x[0] - 128 * res, y[0] + 128 * res, res, 256, 256)
        pieces = warp_mod._pieces(win, src, 0.0, "bilinear")
        assert pieces is not None and len(pieces) > 1  # one affine could not hold
        rng = np.random.default_rng(0)
        inv = ~src.transform
        worst = 0.0
        for p in pieces:
            cols = rng.uniform(0, p.width - 1, 20)
            rows = rng.uniform(0, p.height - 1, 20)
            fit = p.matrix @ np.stack([cols, rows, np.ones(20)])
            xs = win.left + (p.col + cols + 0.5) * res
            ys = win.top - (p.row + rows + 0.5) * res
            lon, lat = warp_transform("EPSG:3857", src.crs, xs.tolist(), ys.tolist())
            exact = np.array([inv * xy for xy in zip(lon, lat, strict=True)]).T - 0.5
            worst = max(worst, float(np.abs(fit - exact).max()))
        assert worst < 0.25, worst
    assert (np.diff(sorted({p.width for p in pieces})) >= 0).all()


@pytest.mark.parametrize("name,same", [("korea_0.6m_cogeo.tif", 1.0),  # EPSG:3857: exact
                                       ("naip_nd_20090818.tif", 0.98)])
def test_nearest_picks_gdals_pixels(name, same, shared_geotiff, settings):
    """resampling = "nearest": the same source pixel as GDAL's nearest, but where a sample
    falls within the two warps' coordinate errors of a pixel edge (99 % of pixels the same
    on NAIP; all for a web-mercator raster, where the map is exactly affine)."""
    fast = _tiling(settings, "fast", target_gsd_m=2.0, resampling="nearest")
    gdal = _tiling(settings, "gdal", target_gsd_m=2.0, resampling="nearest")
    info = _info(shared_geotiff / name, fast)
    d, differ, _, _ = _compare(info, gdal, fast, 224)
    assert (d == 0).mean() >= same and differ < 1e-3, ((d == 0).mean(), differ)


def test_a_huge_source_rectangle_is_left_to_gdal(monkeypatch, shared_geotiff, settings):
    """A window whose source rectangle is over MAX_SOURCE_PIXELS (a strip far coarser than
    a raster without overviews) is not read whole: GDAL warps it, in chunks."""
    fast = _tiling(settings, "fast")
    info = _info(shared_geotiff / "haiti_rgbn_5m.tif", fast)
    grid, strip = job_strips(info, fast, 64)[0]
    monkeypatch.setattr(warp_mod, "MAX_SOURCE_PIXELS", 100)
    with rasterio.open(info.path) as src:
        assert warp_mod.warp_window(src, [1, 2, 3], strip, 0.0, "bilinear") is None
    got = RasterReader(fast).read_masked(info, strip, grid)
    want = RasterReader(_tiling(settings, "gdal")).read_masked(info, strip, grid)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_a_window_the_fast_warp_cannot_take_is_gdals(monkeypatch, shared_geotiff, settings):
    """Where the projection fails at a fitted point, the reader warps that window with GDAL:
    the same pixels as the gdal reader, not a hole."""
    fast = _tiling(settings, "fast")
    gdal = _tiling(settings, "gdal")
    info = _info(shared_geotiff / "haiti_rgbn_5m.tif", fast)
    grid, strip = job_strips(info, fast, 64)[0]
    monkeypatch.setattr(reader_mod, "warp_or_defer", lambda *a, **k: None)
    got = RasterReader(fast).read_masked(info, strip, grid)
    want = RasterReader(gdal).read_masked(info, strip, grid)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    # Reading for the device's warp too: nothing deferred, GDAL's pixels.
    *got, deferred = RasterReader(fast).read_deferring(info, strip, grid, 64)
    assert not deferred
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_coarse_windows_read_the_overview_with_the_fast_warp_too(tmp_path, settings):
    """A window 4x coarser than a COG with 2x/4x overviews reads the 4x overview (as the
    GDAL warp does): near GDAL's read of it, and far cheaper than the full pixels."""
    yy, xx = np.mgrid[0:1024, 0:1024] / 1024
    data = np.stack([80 + 60 * np.sin(2 * np.pi * (2 * xx + yy)),
                     120 + 50 * np.cos(2 * np.pi * 3 * yy),
                     100 + 80 * xx * yy]).round().astype("uint8")
    path = make_raster(tmp_path / "cog.tif", data=data, size=1024, res=0.5, tiled=True,
                       blockxsize=256, blockysize=256)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4], Resampling.average)
    fast = _tiling(settings, "fast", target_gsd_m=2.0, max_downsample=8.0)
    gdal = _tiling(settings, "gdal", target_gsd_m=2.0, max_downsample=8.0)
    info = _info(path, fast)
    d, differ, ratio, level = _compare(info, gdal, fast, 64)
    assert ratio > 2 and level >= 0
    assert d.mean() < 1.0 and differ < 1e-3


# --- the recipe ------------------------------------------------------------------------------
def test_auto_is_fast_for_a_new_index_and_keeps_an_old_indexs_warp(tmp_path, settings,
                                                                   encoder):
    """warp "auto": a new index records "fast"; an index whose recipe says gdal (or whose
    recipe predates the setting) keeps gdal, and its tiles keep being read with GDAL's
    warp; an explicit other warp is refused in one line."""
    from indexer.job.pipeline import IndexJob

    arc = tmp_path / "arc"
    make_raster(arc / "a.tif", size=300)
    job = IndexJob(tmp_path / "new", settings, encoder, progress=False)
    assert job.recipe.warp == "fast" and job.s.tiling.warp == "fast"
    job.run([str(arc)])
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert manifest["recipe"]["warp"] == "fast"

    # An index written before the setting: its recipe has no "warp" key.
    gdal = dataclasses.replace(settings, tiling=_tiling(settings, "gdal"))
    IndexJob(tmp_path / "old", gdal, encoder, progress=False).run([str(arc)])
    path = tmp_path / "old" / "manifest.json"
    m = json.loads(path.read_text())
    del m["recipe"]["warp"]
    path.write_text(json.dumps(m))
    assert TileRecipe.from_dict(m["recipe"]).warp == "gdal"
    again = IndexJob(tmp_path / "old", settings, encoder, progress=False)
    assert again.s.tiling.warp == "gdal" and again.recipe.warp == "gdal"
    make_raster(arc / "b.tif", size=300, lon=11.9)
    report = again.run([str(arc)])
    assert report.tiles_written > 0 and not report.problems

    fast = dataclasses.replace(settings, tiling=_tiling(settings, "fast"))
    from indexer.errors import IndexError_

    with pytest.raises(IndexError_, match="warp 'gdal' \\(index\\) vs 'fast'"):
        IndexJob(tmp_path / "old", fast, encoder, progress=False).run([str(arc)])


def test_warp_settings_are_checked_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    base = OFFLINE_CONFIG.read_text()
    bad.write_text(base.replace("[tiling]", '[tiling]\nwarp = "opencv"'))
    with pytest.raises(ConfigError, match="tiling.warp must be auto, fast or gdal"):
        load_settings(bad)
    bad.write_text(base.replace("[tiling]", '[tiling]\nwarp = "fast"\nresampling = "cubic"'))
    with pytest.raises(ConfigError, match="fast resamples nearest or bilinear, not 'cubic'"):
        load_settings(bad)
    ok = tmp_path / "ok.toml"
    ok.write_text(base.replace("[tiling]", '[tiling]\nresampling = "cubic"'))
    assert load_settings(ok).tiling.resolved_warp() == "gdal"  # auto: what fast lacks


def test_graft_keys_change_with_the_pixels_not_with_the_spelling(settings):
    """GRAFT's run fingerprint and pair-cache key (TilingSettings.key): with GDAL's warp
    they are what they were before the setting existed (the same pixels: a run started
    then resumes with warp = "gdal"); the fast warp gives other patches, so another key;
    "auto" and "fast" read the same pixels, so one key."""
    t = settings.tiling
    gdal = dataclasses.replace(t, warp="gdal")
    assert gdal.key() == repr(gdal).replace(", warp='gdal'", "")  # the repr before
    assert dataclasses.replace(t, warp="auto").key() == dataclasses.replace(t, warp="fast").key()
    assert dataclasses.replace(t, warp="fast").key() != gdal.key()
