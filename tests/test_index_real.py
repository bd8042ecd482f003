"""Indexing the real shared rasters (EPSG:26913, 26914, 32618, 3857) offline."""

from __future__ import annotations

import io
import shutil
from datetime import UTC, datetime

import mercantile
import numpy as np
import pytest
from PIL import Image

from indexer.job.pipeline import IndexJob
from indexer.store.snapshot import IndexSnapshot
from tests.helpers import slow_hashes, snapshot_sql

NAIP_2009 = "naip_nd_20090818.tif"
NAIP_2014 = "naip_nd_20140720.tif"


def test_all_six_rasters_index(real_index, shared_geotiff):
    idx, report = real_index
    assert report.problems == []
    assert report.rasters_indexed == 6
    snap = IndexSnapshot.open(idx)
    tiles = snap.tiles()
    assert snap.ntotal == tiles.num_rows == report.tiles_written > 0
    per_source = {}
    for src in tiles["source"].to_pylist():
        per_source[src] = per_source.get(src, 0) + 1
    expected = {str(p.resolve()) for p in shared_geotiff.glob("*.tif")}
    assert set(per_source) == expected
    assert all(e.complete for e in snap.sources.values())
    ids = tiles["id"].to_numpy()
    assert len(np.unique(ids)) == len(ids)


def test_parquet_bounds_equal_mercantile_bounds(real_index):
    snap = IndexSnapshot.open(real_index[0])
    for t in snap.tiles().to_pylist():
        b = mercantile.bounds(t["x"], t["y"], t["z"])
        assert (t["west"], t["south"], t["east"], t["north"]) == (b.west, b.south, b.east,
                                                                    b.north)


def test_metadata_time_sensor_gsd(real_index):
    snap = IndexSnapshot.open(real_index[0])
    rows = snapshot_sql(snap,
        "SELECT regexp_extract(source, '[^/]+$') AS f, any_value(acquired) AS t, "
        "any_value(sensor) AS sensor, min(gsd_m) AS g, min(native_gsd_m) AS ng, count(*) AS n "
        "FROM tiles GROUP BY f ORDER BY f").to_pylist()
    by_file = {r["f"]: r for r in rows}
    assert by_file[NAIP_2009]["t"] == datetime(2009, 8, 18, tzinfo=UTC)
    assert by_file[NAIP_2014]["t"] == datetime(2014, 7, 20, tzinfo=UTC)
    assert by_file["korea_0.6m_cogeo.tif"]["t"] is None  # no date anywhere: left empty
    assert by_file[NAIP_2009]["sensor"] == "NAIP"
    # native pixel sizes from the raster, in ground metres (3857 is scaled by cos(lat))
    assert by_file[NAIP_2009]["ng"] == pytest.approx(5.0, rel=1e-3)
    assert by_file["landsat_bahamas_RGB.byte.tif"]["ng"] == pytest.approx(300.0, rel=1e-3)
    assert by_file["korea_0.6m_cogeo.tif"]["ng"] == pytest.approx(0.597 * 0.7915, rel=1e-2)
    for r in rows:  # tile pixel size within the configured limits of the native size
        assert r["ng"] / 2 - 1e-9 <= r["g"] <= r["ng"] * 4 + 1e-9


def test_thumbnails_decode_and_search_finds_itself(real_index, encoder):
    snap = IndexSnapshot.open(real_index[0])
    snap.check_encoder(encoder.identity)
    ids = snap.tiles(["id"])["id"].to_numpy()[:20]
    for i in ids[:5]:
        img = Image.open(io.BytesIO(snap.thumbnail(int(i))))
        assert img.size == (128, 128)
    scores, found = snap.search(snap.get_vectors(ids), 1)
    assert (found[:, 0] == ids).all()
    assert np.allclose(scores[:, 0], 1.0, atol=2e-3)  # float16 copy of a unit vector


def test_rerun_adds_nothing(real_index, shared_geotiff, settings, encoder):
    idx, _ = real_index
    gen = IndexSnapshot.open(idx).generation
    report = IndexJob(idx, settings, encoder, progress=False).run([str(shared_geotiff)])
    assert report.tiles_written == 0 and report.rasters_unchanged == 6
    assert IndexSnapshot.open(idx).generation == gen  # not even a new commit


def test_new_acquisition_of_indexed_place(tmp_path, shared_geotiff, settings, encoder):
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(shared_geotiff / NAIP_2009, archive)
    idx = tmp_path / "idx"
    first = IndexJob(idx, settings, encoder, progress=False).run([str(archive)])
    assert first.rasters_indexed == 1
    shutil.copy(shared_geotiff / NAIP_2014, archive)
    second = IndexJob(idx, settings, encoder, progress=False).run([str(archive)])
    assert second.rasters_indexed == 1 and second.rasters_unchanged == 1
    assert second.tiles_written > 0
    rows = IndexSnapshot.open(idx).tiles().to_pylist()
    by_year: dict[int, set] = {2009: set(), 2014: set()}
    for r in rows:
        by_year[r["acquired"].year].add((r["z"], r["x"], r["y"]))
    assert len(rows) == first.tiles_written + second.tiles_written
    overlap = by_year[2009] & by_year[2014]
    assert len(overlap) >= 0.9 * len(by_year[2014])  # same place, same tile grid


def test_hashing_while_reading_gives_the_same_index(real_index, shared_geotiff, settings,
                                                    encoder, tmp_path, monkeypatch):
    """The six shared rasters with job.hash_while_reading = "yes", every hash held back
    until the last batch is embedded (so every tile is held until the job's end): the same
    sources, content hashes, tiles and vectors as hashing first."""
    import dataclasses
    import threading

    from indexer.job.commit import Committer

    gate = threading.Event()
    hashed = slow_hashes(monkeypatch, hold={p.name: gate for p in shared_geotiff.iterdir()})
    held_at_end: list[int] = []
    real_flush = Committer.flush

    def flush(self, wait=True):
        held_at_end.append(self._held_tiles)
        gate.set()
        return real_flush(self, wait)

    monkeypatch.setattr(Committer, "flush", flush)
    s = dataclasses.replace(settings, job=dataclasses.replace(settings.job,
                                                               hash_while_reading="yes"))
    report = IndexJob(tmp_path / "idx", s, encoder, progress=False).run([str(shared_geotiff)])
    assert report.problems == [] and report.rasters_indexed == 6
    assert sorted(hashed) == sorted(p.name for p in shared_geotiff.iterdir())
    # every tile read (written or nodata) was held: none went to the store before its hash
    assert held_at_end == [report.tiles_written + report.tiles_nodata]
    got, ref = IndexSnapshot.open(tmp_path / "idx"), IndexSnapshot.open(real_index[0])
    assert ({k: (e.path, e.content_sha256, e.tiles) for k, e in got.sources.items()}
            == {k: (e.path, e.content_sha256, e.tiles) for k, e in ref.sources.items()})

    def by_tile(snap):
        t = snap.tiles(["id", "source_key", "z", "x", "y"]).to_pylist()
        ids = np.array([r["id"] for r in t])
        return [(r["source_key"], r["z"], r["x"], r["y"]) for r in t], snap.get_vectors(ids)

    (keys_a, vec_a), (keys_b, vec_b) = by_tile(got), by_tile(ref)
    assert sorted(keys_a) == sorted(keys_b)
    order_a = sorted(range(len(keys_a)), key=keys_a.__getitem__)
    order_b = sorted(range(len(keys_b)), key=keys_b.__getitem__)
    np.testing.assert_allclose(vec_a[order_a], vec_b[order_b], atol=1e-3)
