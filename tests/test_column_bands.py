"""Column bands: a raster stored in blocks (a COG, a tiled GeoTIFF) is read in bands of
plan.BAND_TILES tile columns, one after another, each row by row; a raster stored in strips
of whole rows is read in whole rows, as before. The entry records the band, so a resumed run
reads in the order its `through` counts, including an index read in rows before bands."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import indexer.job.plan as plan
from indexer.config import DiscoverySettings
from indexer.job.pipeline import IndexJob
from indexer.job.plan import by_block, first_tiles
from indexer.job.read import RasterPlan, TileDataset
from indexer.rasters.grid import TileBlock, column_bands
from indexer.rasters.inspect import inspect_raster
from indexer.rasters.sources import RasterSource
from indexer.store.snapshot import IndexSnapshot
from tests.helpers import InterruptingEncoder, make_raster

BAND = 8  # in these tests (the rasters are ~19 tiles wide at the test model's 64 px)


def test_bands_hold_every_tile_once_left_to_right():
    blocks = [TileBlock(15, 100, 200, 136, 202, 0.5), TileBlock(15, 5, 7, 9, 9)]  # 37, 5 wide
    bands = column_bands(blocks, 16)
    assert [(b.x0, b.x1) for b in bands] == [(100, 115), (116, 131), (132, 136), (5, 9)]
    assert all(b.y0 == 200 and b.y1 == 202 and b.src_shift == 0.5 for b in bands[:3])

    def tiles(bs):
        return [t for b in bs for t in (b.tile(i) for i in range(b.count))]
    assert sorted(tiles(bands)) == sorted(tiles(blocks)) and len(set(tiles(bands))) == 126
    assert column_bands(blocks, 0) == blocks
    # a resumed run's done tiles go to the band that holds each, in one pass
    done = set(tiles(bands)[::7]) | {(4, 8), (120, 199), (137, 200)}  # three outside
    split = by_block(done, bands)
    for b, mine in zip(bands, split, strict=True):
        assert mine == {t for t in done if b.x0 <= t[0] <= b.x1 and b.y0 <= t[1] <= b.y1}
    assert sum(map(len, split)) == len(done) - 3


def test_the_readers_order_is_the_watermarks_in_bands(tmp_path, settings):
    """plan.first_tiles over the bands is exactly the first n tiles the job reads: a
    resumed run trusts it to skip tiles that went through without being stored."""
    path = make_raster(tmp_path / "a.tif", size=64)
    info = inspect_raster(RasterSource(str(path)), DiscoverySettings(), settings.tiling)
    blocks = column_bands([TileBlock(15, 100, 200, 136, 202), TileBlock(15, 5, 7, 9, 9)], 20)
    every = [frozenset((x, y) for y in range(b.y0, b.y1 + 1) for x in range(b.x0, b.x1 + 1))
             for b in blocks]
    ds = TileDataset([RasterPlan(info, b, 0, d) for b, d in zip(blocks, every, strict=True)],
                     64, settings.tiling, dataclasses.replace(settings.job, batch_size=64))
    order = [(int(x), int(s["y"])) for i in range(len(ds)) for s in [ds[i]] for x in s["x"]]
    assert order[:20] == [(x, 200) for x in range(100, 120)]  # the first band's first row
    assert len(order) == len(set(order)) == 126
    for n in (0, 1, 16, 20, 21, 59, 60, 61, 90, 110, 111, 112, 126):
        assert first_tiles(blocks, n) == set(order[:n]), n


def _archive(d):
    """A tiled raster with a nodata corner (tiles that go through without being stored: the
    watermark counts them) and a raster in strips, both ~19 tiles wide."""
    data = np.random.default_rng(1).integers(1, 255, (3, 1600, 1600), dtype=np.uint8)
    data[:, :700, :900] = 0
    make_raster(d / "a_tiled.tif", size=1600, data=data, nodata=0, tiled=True, blockxsize=256,
                blockysize=256)
    make_raster(d / "b_strips.tif", size=1600, seed=2, lon=11.99)
    return d


@pytest.fixture(scope="module")
def banded(tmp_path_factory, settings, encoder):
    d = tmp_path_factory.mktemp("bands")
    archive = _archive(d / "archive")
    s = dataclasses.replace(settings, job=dataclasses.replace(settings.job, batch_size=32,
                                                               commit_every=64))
    mp = pytest.MonkeyPatch()
    mp.setattr(plan, "BAND_TILES", BAND)
    IndexJob(d / "ref", s, encoder, progress=False).run([str(archive)])
    yield archive, s, _tiles(d / "ref"), d / "ref"
    mp.undo()


def _tiles(idx):
    snap = IndexSnapshot.open(idx)
    rows = snap.tiles(["id", "source", "z", "x", "y"]).to_pylist()
    assert len({r["id"] for r in rows}) == len(rows) == snap.ntotal
    return sorted((r["source"].rsplit("/", 1)[-1], r["z"], r["x"], r["y"]) for r in rows)


def test_a_tiled_raster_is_read_in_bands_and_one_in_strips_in_rows(banded, tmp_path):
    snap = IndexSnapshot.open(banded[3])
    bands = {s.path.rsplit("/", 1)[-1]: s.band for s in snap.sources.values()}
    assert bands == {"a_tiled.tif": BAND, "b_strips.tif": 0}
    # ids are given in read order: the tiled raster's first ids are all of its first band
    rows = snap.tiles(["id", "source", "x", "y"]).to_pylist()
    mine = sorted((r["id"], r["x"], r["y"]) for r in rows if r["source"].endswith("tiled.tif"))
    x0 = min(r[1] for r in mine)
    in_first = sum(x < x0 + BAND for _, x, _ in mine)
    assert all(x < x0 + BAND for _, x, _ in mine[:in_first])
    assert max(x for _, x, _ in mine) >= x0 + 2 * BAND  # three bands
    strips = sorted((r["id"], r["y"], r["x"]) for r in rows if r["source"].endswith("strips.tif"))
    assert [r[1:] for r in strips] == sorted(r[1:] for r in strips)  # whole rows


@pytest.mark.parametrize("call", [4, 6, 8])
def test_an_interrupted_banded_run_resumes_to_the_same_tiles(banded, encoder, tmp_path, call):
    archive, s, expected, _ = banded
    first = IndexJob(tmp_path / "idx", s, InterruptingEncoder(encoder, call),
                     progress=False).run([str(archive)])
    assert first.interrupted
    (part,) = IndexSnapshot.open(tmp_path / "idx").sources.values()
    assert part.band == BAND and part.through > 0 and not part.complete  # a watermark
    IndexJob(tmp_path / "idx", s, encoder, progress=False).run([str(archive)])
    assert _tiles(tmp_path / "idx") == expected


def test_an_index_read_in_rows_resumes_in_rows(banded, encoder, tmp_path, monkeypatch):
    """A partial raster of an index written before the bands (entry band 0, through > 0)
    is read on in whole rows: in bands, its watermark would name tiles never read."""
    archive, s, expected, _ = banded
    monkeypatch.setattr(plan, "BAND_TILES", 0)  # the order before bands
    first = IndexJob(tmp_path / "idx", s, InterruptingEncoder(encoder, 5),
                     progress=False).run([str(archive)])
    assert first.interrupted
    (old,) = IndexSnapshot.open(tmp_path / "idx").sources.values()
    assert old.band == 0 and old.through > 0 and not old.complete
    monkeypatch.setattr(plan, "BAND_TILES", BAND)
    IndexJob(tmp_path / "idx", s, encoder, progress=False).run([str(archive)])
    assert _tiles(tmp_path / "idx") == expected
    again = [e for e in IndexSnapshot.open(tmp_path / "idx").sources.values()
             if e.path.endswith("tiled.tif")][0]
    assert again.band == 0 and again.complete
