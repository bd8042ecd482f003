"""Shared fixtures: the offline test config and model, synthetic GeoTIFFs, the shared data."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.helpers import (  # noqa: F401  (re-exported for the tests)
    OFFLINE_CONFIG,
    ROOT,
    SHARED_DATA,
    SHARED_GEOTIFF,
    make_raster,
    mark_complete,
    snapshot_sql,
    tile_rows,
)

# The suite runs on two pytest-xdist workers, a file at a time (pyproject.toml's addopts:
# most files wait on subprocesses, servers and browsers half the time). These files take
# the longest (measured on the 2-core VM: a minute or more each under the other worker's
# load); they are handed out first so that the two workers finish together, not one of
# them alone with the Ray cluster at the end.
LONGEST_FIRST = ("test_ray_runner.py", "test_ui_browser.py", "test_reliability.py",
                 "test_crash.py", "test_hardening_index.py", "test_ui_app.py")


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's own order is kept


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


@pytest.fixture
def raster_factory(tmp_path):
    def factory(name: str = "scene.tif", **kw) -> Path:
        return make_raster(tmp_path / "archive" / name, **kw)

    return factory


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """satfind-index in a real subprocess with the offline config."""
    return run_clis(list(args), timeout=timeout)[0]


def run_clis(*commands: list[str], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Several satfind-index runs (each its arguments), each a real subprocess, all at once
    (a run is mostly its interpreter's imports): their results in order. Each is killed if
    it takes over `timeout` s (TimeoutExpired raised, as subprocess.run does)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "indexer.cli", *args], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in commands]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out
