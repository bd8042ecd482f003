"""Pair building on the real geotagged photos (real EXIF), inside a raster made around them."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import SHARED_DATA, make_raster
from training.photos import photos_from_folder

GEOTAGGED = SHARED_DATA / "geotagged"


@pytest.fixture(scope="module")
def photos():
    if not GEOTAGGED.is_dir():
        pytest.skip(f"geotagged photos not available: {GEOTAGGED} is absent")
    return photos_from_folder(GEOTAGGED)


def test_exif_gps_is_parsed(photos):
    assert len(photos) == 9
    for p in photos:  # Arezzo, Italy
        assert 43.3 < p.lat < 43.6 and 11.7 < p.lon < 12.0
    first = next(p for p in photos if p.path.endswith("DSCN0010.jpg"))
    # 43 deg 28' 2.814" N, 11 deg 53' 6.456" E
    assert first.lat == pytest.approx(43 + 28 / 60 + 2.814 / 3600, abs=1e-9)
    assert first.lon == pytest.approx(11 + 53 / 60 + 6.456 / 3600, abs=1e-6)
    assert first.time is not None and first.time.year == 2008


def test_pairs_from_real_photos_in_a_generated_raster(photos, tmp_path):
    """The real EXIF positions, a UTM raster made around them with a bright marker at each
    photo: the training pipeline's patches show every photo's marker at the pixel position
    the manifest gives it."""
    import dataclasses

    from rasterio.warp import transform as warp_transform

    from indexer.config import Settings, TilingSettings
    from training.pairs import build_pairs, raster_catalogue
    from training.settings import TrainSettings

    lat = float(np.mean([p.lat for p in photos]))
    lon = float(np.mean([p.lon for p in photos]))
    size, res = 1200, 5.0
    xs, ys = warp_transform("EPSG:4326", "EPSG:32632", [p.lon for p in photos],
                            [p.lat for p in photos])
    (cx,), (cy,) = warp_transform("EPSG:4326", "EPSG:32632", [lon], [lat])
    data = np.full((3, size, size), 20, dtype=np.uint8)
    for x, y in zip(xs, ys, strict=True):
        r, c = int((cy + size * res / 2 - y) / res), int((x - (cx - size * res / 2)) / res)
        data[:, r - 1:r + 2, c - 1:c + 2] = 255
    make_raster(tmp_path / "around.tif", lon=lon, lat=lat, res=res, size=size, data=data)
    settings = dataclasses.replace(Settings(), tiling=TilingSettings(target_gsd_m=5.0))
    train = TrainSettings(photos=str(GEOTAGGED), rasters=(str(tmp_path),), seed=1)
    rasters, notes = raster_catalogue(list(train.rasters), settings)
    assert len(rasters) == 1 and not notes
    pairs = build_pairs(photos, rasters, settings, train, 64, tmp_path / "run")
    assert len(pairs.samples) == len(photos) and pairs.counts["nodata"] == 0
    shared = 0
    for s, patch in zip(pairs.samples, pairs.patches, strict=True):
        assert s.anchor in s.photos and patch.shape == (3, 64, 64)
        for r, c in zip(s.rows, s.cols, strict=True):
            assert 0 <= r < 64 and 0 <= c < 64
            r, c = int(r), int(c)
            assert patch[0, max(0, r - 1):r + 2, max(0, c - 1):c + 2].max() > 100
        shared += len(s.photos) > 1
    assert shared > 0  # several photos were taken close together: patches share them
    t = pq.read_table(tmp_path / "run" / "pairs.parquet")
    assert t.num_rows == len(photos)
    assert sum(len(x) for x in t["photos"].to_pylist()) == sum(
        len(s.photos) for s in pairs.samples)
    assert set(t["split"].to_pylist()) == {"train", "val"}
    # The same inputs again: the pairs on disk are reused, identical.
    again = build_pairs(photos, rasters, settings, train, 64, tmp_path / "run")
    np.testing.assert_array_equal(again.patches, pairs.patches)


def test_photo_table_csv_and_parquet(tmp_path):
    import pyarrow as pa

    from training.photos import load_photos

    (tmp_path / "img").mkdir()
    for n in ("a.jpg", "b.jpg"):
        (tmp_path / "img" / n).write_bytes(b"x")
    (tmp_path / "photos.csv").write_text(
        "path,lat,lon,time\nimg/a.jpg,45.1,9.2,2021-06-03T10:00:00\n"
        "img/b.jpg,-33.5,-70.6,2021-06-04T10:00:00+02:00\n")
    a, b = load_photos(tmp_path / "photos.csv")
    assert a.path == str((tmp_path / "img" / "a.jpg").resolve())
    assert (a.lat, a.lon) == (45.1, 9.2) and a.time.tzinfo is not None and a.time.hour == 10
    assert b.time.utcoffset().total_seconds() == 7200
    pq.write_table(pa.table({"path": [str(tmp_path / "img" / "a.jpg")], "lat": [1.0],
                             "lon": [2.0]}), tmp_path / "photos.parquet")
    (only,) = load_photos(tmp_path / "photos.parquet")
    assert only.time is None and (only.lat, only.lon) == (1.0, 2.0)


@pytest.mark.parametrize("text, needle", [
    ("path,lat\nimg/a.jpg,1\n", "missing lon"),
    ("path,lat,lon\nimg/zz.jpg,1,2\n", "row 2: photo"),
    ("path,lat,lon\nimg/a.jpg,95,2\n", "out of range"),
    ("path,lat,lon,time\nimg/a.jpg,1,2,last tuesday\n", "not an ISO 8601"),
    ("path,lat,lon\n", "no rows"),
])
def test_bad_photo_tables(tmp_path, text, needle):
    from training.photos import PairError, load_photos

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(PairError, match=needle) as e:
        load_photos(tmp_path / "p.csv")
    assert "\n" not in str(e.value)


def test_load_photos_reads_exif_folders(photos):
    from training.photos import PairError, load_photos

    assert [p.path for p in load_photos(GEOTAGGED)] == [p.path for p in photos]
    with pytest.raises(PairError, match="does not exist"):
        load_photos(GEOTAGGED / "nope")


def test_bucketed_sample_search_equals_brute_force():
    from training.photos import Photo
    from training.samples import build_samples

    rng = np.random.default_rng(3)
    # Clusters of photos, some within one patch width of each other, some far apart.
    centres = rng.uniform([-60, 10], [60, 70], (15, 2))
    photos = [Photo(f"p{i}.jpg", float(c[1] + d[1]), float(c[0] + d[0]))
              for i, (c, d) in enumerate(zip(centres[rng.integers(0, 15, 600)],
                                             rng.normal(0, 0.004, (600, 2)), strict=True))]
    samples = build_samples(photos, size=64, gsd_m=10.0, seed=2)
    import mercantile

    xy = np.array([mercantile.xy(p.lon, p.lat) for p in photos])
    multi = 0
    for s in samples:
        cols, rows = (xy[:, 0] - s.left) / s.res, (s.top - xy[:, 1]) / s.res
        brute = np.flatnonzero((cols >= 0) & (cols < 64) & (rows >= 0) & (rows < 64))
        assert list(s.photos) == brute.tolist()
        np.testing.assert_allclose(s.rows, rows[brute])
        multi += len(brute) > 1
    assert multi > 100  # the clusters do put several photos in one patch


def test_photos_without_a_position_are_left_out_with_a_reason(photos, tmp_path):
    import shutil

    from PIL import Image

    from training.photos import photos_from_folder

    shutil.copy(GEOTAGGED / "DSCN0010.jpg", tmp_path / "geo.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    skipped: list[str] = []
    found = photos_from_folder(tmp_path, skipped)
    assert [p.path for p in found] == [str((tmp_path / "geo.jpg").resolve())]
    assert sorted(skipped) == [f"{tmp_path / 'broken.jpg'}: not a readable image "
                               "(UnidentifiedImageError)",
                               f"{tmp_path / 'plain.jpg'}: no EXIF GPS position"]
