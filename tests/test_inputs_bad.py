"""Bad input: one line naming the file and the problem; the rest still indexes; --strict
makes it fatal; exit code non-zero only when nothing could be indexed; never a traceback."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from indexer.job.pipeline import IndexJob
from indexer.store.snapshot import IndexSnapshot
from tests.conftest import OFFLINE_CONFIG, make_raster, run_clis


def _job(tmp_path, settings, encoder, archives, **kw):
    return IndexJob(tmp_path / "idx", settings, encoder, progress=False, **kw).run(
        [str(a) for a in archives])


def _good(tmp_path):
    return make_raster(tmp_path / "archive" / "good.tif", size=160, seed=1)


def _only_problem(report, name: str) -> str:
    (p,) = report.problems
    line = str(p)
    assert "\n" not in line and name in line
    return line


def _sources(tmp_path) -> set[str]:
    snap = IndexSnapshot.open(tmp_path / "idx")
    return {os.path.basename(s) for s in snap.tiles(["source"])["source"].to_pylist()}


def test_not_a_raster(tmp_path, settings, encoder):
    _good(tmp_path)
    (tmp_path / "archive" / "bad.tif").write_text("this is not a GeoTIFF\n")
    notes = tmp_path / "notes.dat"
    notes.write_bytes(b"\x00\x01 plain bytes")
    report = _job(tmp_path, settings, encoder, [tmp_path / "archive", notes])
    lines = sorted(str(p) for p in report.problems)
    assert len(lines) == 2 and all("not a raster" in x for x in lines)
    assert any("bad.tif" in x for x in lines) and any("notes.dat" in x for x in lines)
    assert report.rasters_indexed == 1 and _sources(tmp_path) == {"good.tif"}


def test_raster_without_crs(tmp_path, settings, encoder):
    _good(tmp_path)
    make_raster(tmp_path / "archive" / "nocrs.tif", crs="NONE", size=64)
    report = _job(tmp_path, settings, encoder, [tmp_path / "archive"])
    assert "has no CRS" in _only_problem(report, "nocrs.tif")
    assert _sources(tmp_path) == {"good.tif"}


def test_empty_folder(tmp_path, settings, encoder):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing here")
    report = _job(tmp_path, settings, encoder, [tmp_path / "empty", _good(tmp_path)])
    assert "contains no GeoTIFF" in _only_problem(report, "empty")
    assert report.rasters_indexed == 1


def test_missing_path(tmp_path, settings, encoder):
    report = _job(tmp_path, settings, encoder, [tmp_path / "nope.tif", _good(tmp_path)])
    assert "does not exist" in _only_problem(report, "nope.tif")


def _truncated(path, cut_bytes: int):
    # Uncompressed, one row per strip, pixels after the header: cutting the end loses rows.
    make_raster(path, size=2048, seed=2, blockysize=1)
    data = path.read_bytes()
    path.write_bytes(data[:-cut_bytes])
    return path


@pytest.mark.parametrize("cut_bytes,when", [(6_000_000, "check"), (3000, "stream")])
def test_truncated_geotiff(tmp_path, settings, encoder, capsys, cut_bytes, when):
    """Half a file fails the pre-check. Losing only the last row passes it (its decimated
    read skips that row) and fails while the tiles stream, after some of its tiles were
    committed: either way none of its tiles stay."""
    _good(tmp_path)
    _truncated(tmp_path / "archive" / "cut.tif", cut_bytes)
    s = dataclasses.replace(settings, job=dataclasses.replace(settings.job, commit_every=16,
                                                              batch_size=8))
    report = _job(tmp_path, s, encoder, [tmp_path / "archive"])
    line = _only_problem(report, "cut.tif")
    assert "truncated or corrupt" in line
    assert ("cannot read tile" in line) == (when == "stream")
    assert _sources(tmp_path) == {"good.tif"}
    assert report.tiles_written == IndexSnapshot.open(tmp_path / "idx").ntotal
    assert all("cut.tif" not in e.path
               for e in IndexSnapshot.open(tmp_path / "idx").sources.values())


def test_a_corrupt_block_the_inspection_skips_fails_its_raster_while_read(tmp_path, settings,
                                                                         encoder):
    """The inspection checks a tiled raster without overviews on a sample of its blocks
    (inspect.sampled_blocks): a corrupt block elsewhere is found when its tiles are read,
    and none of the raster's tiles stay."""
    import rasterio

    from indexer.rasters import inspect

    _good(tmp_path)
    path = make_raster(tmp_path / "archive" / "blocky.tif", size=1024, seed=3, tiled=True,
                       blockxsize=64, blockysize=64, compress="deflate")
    with rasterio.open(path) as src:
        sampled = {(w.row_off // 64, w.col_off // 64) for w in inspect.sampled_blocks(src)}
        assert (7, 7) not in sampled
        offset = int(src.get_tag_item("BLOCK_OFFSET_7_7", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 64] = b"\xff" * 64  # not a DEFLATE stream any more
    path.write_bytes(bytes(raw))
    s = dataclasses.replace(settings, job=dataclasses.replace(settings.job, commit_every=16,
                                                              batch_size=8))
    report = _job(tmp_path, s, encoder, [tmp_path / "archive"])
    line = _only_problem(report, "blocky.tif")
    assert "cannot read tile" in line and "truncated or corrupt" in line
    assert _sources(tmp_path) == {"good.tif"}


def _stac_item(path, href: str, when: str = "2021-05-06T07:08:09Z"):
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": path.stem,
        "geometry": {"type": "Point", "coordinates": [11.88, 43.46]},
        "bbox": [11.87, 43.45, 11.89, 43.47],
        "properties": {"datetime": when, "platform": "sentinel-2a"},
        "links": [],
        "assets": {"visual": {"href": href, "type": "image/tiff; application=geotiff",
                              "roles": ["visual"]}},
    }
    path.write_text(json.dumps(item))
    return path


def test_stac_item_with_missing_asset(tmp_path, settings, encoder):
    _good(tmp_path)
    _stac_item(tmp_path / "archive" / "item.json", "missing.tif")
    report = _job(tmp_path, settings, encoder, [tmp_path / "archive"])
    line = _only_problem(report, "item.json")
    assert "asset file" in line and "missing.tif" in line and "is missing" in line
    assert _sources(tmp_path) == {"good.tif"}


def test_stac_item_indexes_its_asset_with_its_time_and_platform(tmp_path, settings, encoder):
    raster = make_raster(tmp_path / "archive" / "data" / "s2.tif", size=160)
    _stac_item(tmp_path / "archive" / "s2.json", "data/s2.tif")
    report = _job(tmp_path, settings, encoder, [tmp_path / "archive"])
    assert report.rasters_indexed == 1 and not report.problems  # not indexed twice
    rows = IndexSnapshot.open(tmp_path / "idx").tiles().to_pylist()
    assert {r["source"] for r in rows} == {str(raster)}
    assert {r["acquired"].isoformat() for r in rows} == {"2021-05-06T07:08:09+00:00"}
    assert {r["sensor"] for r in rows} == {"sentinel-2a"}


def test_band_out_of_range(tmp_path, settings, encoder):
    make_raster(tmp_path / "archive" / "rgb.tif", size=160, bands=3)
    make_raster(tmp_path / "archive" / "rgbn.tif", size=160, bands=5, lon=12.0)
    s = dataclasses.replace(settings, tiling=dataclasses.replace(settings.tiling,
                                                                 bands=(1, 2, 5)))
    report = _job(tmp_path, s, encoder, [tmp_path / "archive"])
    line = _only_problem(report, "rgb.tif")
    assert "band 5" in line and "3 band(s)" in line
    assert _sources(tmp_path) == {"rgbn.tif"}


def test_entirely_nodata(tmp_path, settings, encoder):
    _good(tmp_path)
    make_raster(tmp_path / "archive" / "empty.tif", size=160, nodata=0,
                data=np.zeros((3, 160, 160), dtype=np.uint8))
    report = _job(tmp_path, settings, encoder, [tmp_path / "archive"])
    assert "entirely nodata" in _only_problem(report, "empty.tif")
    assert _sources(tmp_path) == {"good.tif"}


def test_strict_stops_before_writing(tmp_path, settings, encoder):
    _good(tmp_path)
    make_raster(tmp_path / "archive" / "nocrs.tif", crs="NONE", size=64)
    report = _job(tmp_path, settings, encoder, [tmp_path / "archive"], strict=True)
    assert len(report.problems) == 1 and report.rasters_indexed == 0
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_cli_exit_codes_and_no_traceback(tmp_path):
    archive = tmp_path / "archive"
    make_raster(archive / "good.tif", size=160)
    (archive / "bad.tif").write_text("not a raster")
    cfg = ["--config", str(OFFLINE_CONFIG), "-q"]

    mixed, strict, only_bad = run_clis(  # three indexes: the runs go at once
        [str(archive), "--index", str(tmp_path / "a"), *cfg],
        [str(archive), "--index", str(tmp_path / "b"), "--strict", *cfg],
        [str(archive / "bad.tif"), str(tmp_path / "nothing"), "--index", str(tmp_path / "c"),
         *cfg])
    assert mixed.returncode == 0, mixed.stderr
    assert "bad.tif: not a raster" in mixed.stderr
    assert "rasters: 1 indexed, 0 already indexed, 1 skipped" in mixed.stdout

    assert strict.returncode == 1 and "--strict" in strict.stderr

    assert only_bad.returncode == 1
    assert "does not exist" in only_bad.stderr and "not a raster" in only_bad.stderr
    for r in (mixed, strict, only_bad):
        assert "Traceback" not in r.stderr + r.stdout


def test_strict_stops_at_the_batch_that_fails_while_streaming(tmp_path, settings, encoder):
    """A raster that fails mid-stream (its last row is cut off) stops a --strict run at that
    batch: the writer thread's report is waited for, so the raster after it gets no tile."""
    _truncated(tmp_path / "archive" / "a_cut.tif", 3000)  # 625 tiles: one batch of them
    make_raster(tmp_path / "archive" / "b_after.tif", size=1500, seed=7)
    s = dataclasses.replace(settings, job=dataclasses.replace(settings.job, batch_size=625))
    report = _job(tmp_path, s, encoder, [tmp_path / "archive"], strict=True)
    assert "cannot read tile" in _only_problem(report, "a_cut.tif")
    assert report.rasters_indexed == 0
    snap = IndexSnapshot.open(tmp_path / "idx")
    assert all("b_after.tif" not in e.path for e in snap.sources.values())
    assert snap.ntotal == 0
