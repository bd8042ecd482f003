"""The indexing job on synthetic rasters: time, scaling, bands, archives, replacement."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from indexer import cli
from indexer.job.pipeline import IndexJob
from indexer.store.snapshot import IndexSnapshot
from tests.conftest import OFFLINE_CONFIG
from tests.helpers import snapshot_sql


def _with(settings, **sections):
    """settings with some fields of some sections replaced: _with(s, tiling={"zoom": 15})."""
    return dataclasses.replace(settings, **{
        name: dataclasses.replace(getattr(settings, name), **fields)
        for name, fields in sections.items()})


def _run(tmp_path, settings, encoder, archives, idx="idx"):
    return IndexJob(tmp_path / idx, settings, encoder, progress=False).run(
        [str(a) for a in archives])


def _thumb_means(snap):
    """Per tile, the median colour of its valid pixels (nodata is filled black)."""
    out = []
    for i in snap.tiles(["id"])["id"].to_pylist():
        img = np.asarray(Image.open(io.BytesIO(snap.thumbnail(i))).convert("RGB"), dtype=float)
        px = img.reshape(-1, 3)
        valid = px[px.sum(axis=1) > 15]
        out.append(np.median(valid, axis=0) if len(valid) else np.full(3, np.nan))
    return np.array(out)


def test_time_from_tiff_tag_then_file_name(tmp_path, settings, encoder, raster_factory):
    raster_factory("a.tif", tags={"TIFFTAG_DATETIME": "2021:06:03 10:20:30"}, size=128)
    raster_factory("scene_20190102.tif", size=128, lon=11.95)
    raster_factory("nodate.tif", size=128, lon=12.05)
    report = _run(tmp_path, settings, encoder, [tmp_path / "archive"])
    assert report.rasters_indexed == 3
    times = snapshot_sql(IndexSnapshot.open(tmp_path / "idx"),
        "SELECT DISTINCT regexp_extract(source, '[^/]+$') AS f, acquired FROM tiles").to_pylist()
    got = {r["f"]: r["acquired"] for r in times}
    assert got == {"a.tif": datetime(2021, 6, 3, 10, 20, 30, tzinfo=UTC),
                   "scene_20190102.tif": datetime(2019, 1, 2, tzinfo=UTC),
                   "nodate.tif": None}


def test_uint16_reflectance_scaling(tmp_path, settings, encoder, raster_factory):
    data = np.full((3, 256, 256), 1500, dtype=np.uint16)  # 15 % reflectance
    data[:, :, 128:] = 3000
    raster_factory("s2.tif", data=data)
    s = _with(settings, tiling={"scaling": "divisor", "reflectance_divisor": 10000.0})
    _run(tmp_path, s, encoder, [tmp_path / "archive"])
    means = _thumb_means(IndexSnapshot.open(tmp_path / "idx"))
    # 1500/10000*255 = 38, 3000/10000*255 = 76: every tile sits between, none saturates
    assert means.min() >= 30 and means.max() <= 85
    # percentile stretch spreads the same data over the full range
    _run(tmp_path, _with(s, tiling={"scaling": "percentile"}), encoder,
         [tmp_path / "archive"], idx="idx2")
    means2 = _thumb_means(IndexSnapshot.open(tmp_path / "idx2"))
    assert np.nanmax(means2) > 200  # 3000 -> 255 (and 1500 -> 0)


def test_band_selection(tmp_path, settings, encoder, raster_factory):
    data = np.full((4, 128, 128), 10, dtype=np.uint8)
    data[3] = 240  # a bright NIR band
    raster_factory("rgbn.tif", data=data)
    _run(tmp_path, settings, encoder, [tmp_path / "archive"])
    assert _thumb_means(IndexSnapshot.open(tmp_path / "idx")).max() < 30
    _run(tmp_path, _with(settings, tiling={"bands": (4, 2, 1)}), encoder,
         [tmp_path / "archive"], idx="nir")
    means = _thumb_means(IndexSnapshot.open(tmp_path / "nir"))
    assert means[:, 0].min() > 200 and means[:, 1].max() < 30


def test_list_file_archive(tmp_path, settings, encoder, raster_factory):
    raster_factory("one.tif", size=128)
    raster_factory("sub/two.tif", size=128, lon=12.0)
    lst = tmp_path / "archive" / "rasters.txt"
    lst.write_text("# my rasters\none.tif\n\nsub/two.tif\n")
    report = _run(tmp_path, settings, encoder, [lst])
    assert report.rasters_indexed == 2 and not report.problems


def test_changed_file_replaces_its_tiles(tmp_path, settings, encoder, raster_factory):
    path = raster_factory("scene.tif", size=128, seed=1)
    first = _run(tmp_path, settings, encoder, [path])
    snap1 = IndexSnapshot.open(tmp_path / "idx")
    raster_factory("scene.tif", size=128, seed=2)  # same path, new pixels
    second = _run(tmp_path, settings, encoder, [path])
    assert second.rasters_replaced == 1 and second.rasters_indexed == 1
    snap2 = IndexSnapshot.open(tmp_path / "idx")
    assert snap2.ntotal == first.tiles_written == second.tiles_written
    assert len(snap2.sources) == 1
    old_ids = set(snap1.tiles(["id"])["id"].to_pylist())
    assert old_ids.isdisjoint(snap2.tiles(["id"])["id"].to_pylist())


def test_workers_give_the_same_index_as_in_process(tmp_path, settings, encoder,
                                                   raster_factory):
    raster_factory("w.tif", size=384, seed=5)
    _run(tmp_path, settings, encoder, [tmp_path / "archive"], idx="serial")
    _run(tmp_path, _with(settings, job={"workers": 2, "batch_size": 7}), encoder,
         [tmp_path / "archive"], idx="workers")
    a, b = IndexSnapshot.open(tmp_path / "serial"), IndexSnapshot.open(tmp_path / "workers")
    ta, tb = a.tiles().sort_by("id"), b.tiles().sort_by("id")
    assert ta.drop(["id"]).equals(tb.drop(["id"]))
    assert np.allclose(a.get_vectors(ta["id"]), b.get_vectors(tb["id"]), atol=1e-3)


def test_cli_remove(tmp_path, settings, encoder, raster_factory, capsys):
    keep = raster_factory("keep.tif", size=128)
    drop = raster_factory("drop.tif", size=128, lon=12.0)
    _run(tmp_path, settings, encoder, [keep, drop])
    idx = str(tmp_path / "idx")
    assert cli.main(["--remove", str(drop), "--index", idx, "--config", str(OFFLINE_CONFIG),
                     "-q"]) == 0
    assert "removed" in capsys.readouterr().out
    snap = IndexSnapshot.open(idx)
    assert {s.path for s in snap.sources.values()} == {str(keep)}
    assert set(snap.tiles(["source"])["source"].to_pylist()) == {str(keep)}
    assert cli.main(["--remove", str(drop), "--index", idx, "--config", str(OFFLINE_CONFIG),
                     "-q"]) == 1
    assert "not a source" in capsys.readouterr().err


@pytest.mark.parametrize("toml,needle", [
    ("[tiling]\nbands = [1, 2]\n", "tiling.bands"),
    ("[tiling]\ntarget_gsd_m = 'ten'\n", "tiling.target_gsd_m: expected a number"),
    ("[job]\nworkerz = 2\n", "unknown key 'workerz'"),
    ("[tiles]\n", "unknown section [tiles]"),
    ("[encoder]\nmodel = 'no-such-model'\nrandom_weights = true\n", "unknown open_clip model"),
    ("[encoder]\nmodel = 'satfind-tiny'\ncheckpoint = 'missing.pt'\n", "does not exist"),
    ("[encoder]\nmodel = 'satfind-tiny'\n", "set encoder.checkpoint to a local weights file"),
])
def test_bad_config_is_one_line(tmp_path, capsys, toml, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    assert cli.main(["x.tif", "--index", str(tmp_path / "idx"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("satfind-index: error")
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("crs,res", [("EPSG:4326", 0.00005), ("EPSG:3857", 6.9),
                                     ("EPSG:32632", 5.0), ("EPSG:3035", 5.0)])
def test_any_crs_in(tmp_path, settings, encoder, raster_factory, crs, res):
    raster_factory("r.tif", crs=crs, res=res, size=256)
    report = _run(tmp_path, settings, encoder, [tmp_path / "archive"])
    assert report.rasters_indexed == 1 and report.tiles_written >= 4
    (src,) = IndexSnapshot.open(tmp_path / "idx").sources.values()
    assert src.native_gsd_m == pytest.approx(5.0, rel=0.1)
    assert src.zoom == 16  # ~6.9 m tile pixels at 43.5 N: nearest to the 5 m target
