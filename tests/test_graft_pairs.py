"""Pair building on the real geotagged photos (real EXIF), inside a raster made around them."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from encoder.graft.pairs import build_samples, photos_from_folder, read_patch, write_manifest
from tests.conftest import SHARED_DATA, make_raster

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


def test_samples_contain_their_photos_and_read_from_a_raster(photos, tmp_path):
    lat = float(np.mean([p.lat for p in photos]))
    lon = float(np.mean([p.lon for p in photos]))
    span_m = max(np.ptp([p.lat for p in photos]) * 111_000,
                 np.ptp([p.lon for p in photos]) * 111_000 * np.cos(np.radians(lat)))
    raster = make_raster(tmp_path / "around.tif", lon=lon, lat=lat, res=5.0,
                         size=int(span_m / 5) + 800, seed=4)
    samples = build_samples(photos, size=64, gsd_m=5.0, seed=1)
    assert len(samples) == len(photos)
    shared = 0
    for s in samples:
        assert s.anchor in s.photos
        assert all(0 <= r < 64 and 0 <= c < 64 for r, c in zip(s.rows, s.cols, strict=True))
        shared += len(s.photos) > 1
        patch = read_patch(str(raster), s)
        assert patch.shape == (3, 64, 64) and patch.dtype == np.uint8
        assert (patch.max(axis=0) > 0).all()  # inside the raster: no empty pixels
    assert shared > 0  # several photos were taken close together: patches share them
    write_manifest(samples, photos, tmp_path / "pairs.parquet")
    t = pq.read_table(tmp_path / "pairs.parquet")
    assert t.num_rows == len(samples)
    assert sum(len(x) for x in t["photos"].to_pylist()) == sum(len(s.photos) for s in samples)
