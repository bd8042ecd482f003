"""Shared fixtures: the offline test config and model, synthetic GeoTIFFs, the shared data."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_CONFIG = ROOT / "tests" / "offline.toml"
SHARED_DATA = ROOT.parent / "shared" / "data"
SHARED_GEOTIFF = SHARED_DATA / "geotiff"


@pytest.fixture(scope="session")
def shared_geotiff() -> Path:
    if not SHARED_GEOTIFF.is_dir():
        pytest.skip(f"real rasters not available: {SHARED_GEOTIFF} is absent")
    return SHARED_GEOTIFF


@pytest.fixture(scope="session")
def settings():
    from indexer.config import load_settings

    s = load_settings(OFFLINE_CONFIG)
    # In-process tests read tiles in the main process: worker start-up would dominate.
    return dataclasses.replace(s, job=dataclasses.replace(s.job, workers=0))


@pytest.fixture(scope="session")
def encoder(settings):
    from encoder.model import SatelliteEncoder

    return SatelliteEncoder(settings.encoder)


@pytest.fixture(scope="session")
def real_index(tmp_path_factory, shared_geotiff, settings, encoder):
    """The six shared rasters indexed once per session (read-only for tests: copy it to
    change it). Returns (index dir, JobReport)."""
    from indexer.job.pipeline import IndexJob

    idx = tmp_path_factory.mktemp("real") / "idx"
    report = IndexJob(idx, settings, encoder, progress=False).run([str(shared_geotiff)])
    return idx, report


@pytest.fixture(scope="module")
def engine(real_index, settings, encoder):
    """A search engine over the shared rasters' index (one per test module)."""
    from search.engine import SearchEngine
    from search.settings import ServeConfig

    return SearchEngine(real_index[0], ServeConfig(settings), encoder=encoder)


@pytest.fixture(scope="module")
def client(engine):
    """The API app over `engine`, through FastAPI's TestClient (no network)."""
    from fastapi.testclient import TestClient

    from search.http.app import create_app

    with TestClient(create_app(engine)) as c:
        yield c


def make_raster(path: Path, *, lon: float = 11.88, lat: float = 43.46, crs: str = "EPSG:32632",
                size: int = 256, res: float = 5.0, bands: int = 3, dtype: str = "uint8",
                nodata: float | None = None, data: np.ndarray | None = None,
                tags: dict | None = None, seed: int = 0, **creation) -> Path:
    """A GeoTIFF of `size` x `size` pixels of `res` CRS units, centred on lon/lat."""
    if crs.upper() == "NONE":
        crs_obj = None
        transform = None
    else:
        xs, ys = warp_transform("EPSG:4326", crs, [lon], [lat])
        transform = from_origin(xs[0] - size * res / 2, ys[0] + size * res / 2, res, res)
        crs_obj = crs
    if data is None:
        rng = np.random.default_rng(seed)
        hi = 255 if dtype == "uint8" else 4000
        data = rng.integers(1, hi, size=(bands, size, size)).astype(dtype)
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": data.dtype.name}
    if crs_obj is not None:
        profile.update(crs=crs_obj, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    profile.update(creation)  # GDAL creation options, e.g. blockysize=1
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
    return path


@pytest.fixture
def raster_factory(tmp_path):
    def factory(name: str = "scene.tif", **kw) -> Path:
        return make_raster(tmp_path / "archive" / name, **kw)

    return factory


def load_bench(name: str):
    """A bench/ script as a module, without putting bench/ on sys.path (its search.py would
    shadow the search package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """satfind-index in a real subprocess with the offline config."""
    cmd = [sys.executable, "-m", "indexer.cli", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
