"""Faults between GDAL and the server: an asyncio proxy in front of nginx answers some range
requests with a 500, cuts some bodies half-way, delays some. Transient faults: the job ends
with the same tiles and vectors as without faults. Persistent faults on one asset: exactly
that asset is reported, in one line, and none of its tiles is in the index."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest

from tests.helpers import SHARED_GEOTIFF
from tests.servers import FaultProxy, Nginx, make_cogs, nginx_binary
from tests.test_remote import _index, tiles_by_key

pytestmark = [
    pytest.mark.skipif(nginx_binary() is None,
                       reason="Debian's nginx is not installed (.ci/run installs it)"),
    pytest.mark.skipif(not SHARED_GEOTIFF.is_dir(),
                       reason="../shared/data/geotiff is absent (no real rasters to serve)"),
]

NAMES = ["bahamas_cog.tif", "korea_cog.tif", "naip_2009_cog.tif"]
MAX_ATTEMPTS = 200  # a bound on the proxy's work per test (every loop here is bounded)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = make_cogs(tmp_path_factory.mktemp("www"))
    with Nginx(root, tmp_path_factory.mktemp("nginx")) as server:
        yield server


def _quick(settings):
    """GDAL retries fast (the proxy's faults are immediate), our own retries too."""
    gdal = {"GDAL_HTTP_RETRY_DELAY": "0.05", "GDAL_HTTP_MAX_RETRY": "3",
            "GDAL_HTTP_TIMEOUT": "5"}
    return dataclasses.replace(settings, remote=dataclasses.replace(
        settings.remote, gdal=gdal, retry_delay_s=0.05, read_retries=4))


def test_transient_faults_give_identical_results(tmp_path, web, settings, encoder):
    reference = _index(tmp_path / "ref", settings, encoder, [f"{web.url}/{n}" for n in NAMES])
    attempts: dict[tuple[str, str], int] = {}
    kinds = ["error", "cut", ("delay", 0.3)]

    def decide(method: str, path: str, rng: str):
        if method != "GET" or len(attempts) > MAX_ATTEMPTS:
            return "pass"
        key = (path, rng)
        attempts[key] = attempts.get(key, 0) + 1
        # Two in three ranges fail (or stall) on their first request; the retry passes.
        pick = zlib.crc32(f"{path}{rng}".encode()) % 3
        if attempts[key] == 1 and pick < 2:
            return kinds[zlib.crc32(rng.encode()) % 3]
        return "pass"

    with FaultProxy(web.port, decide) as proxy:
        report = _index(tmp_path / "faulty", _quick(settings), encoder,
                        [f"{proxy.url}/{n}" for n in NAMES])
        actions = [a for *_, a in proxy.seen]
    assert report.problems == [] and report.rasters_indexed == len(NAMES)
    assert actions.count("error") >= 1 and actions.count("cut") >= 1
    assert any(isinstance(a, tuple) for a in actions)
    a, b = tiles_by_key(tmp_path / "ref"), tiles_by_key(tmp_path / "faulty")
    assert a.keys() == b.keys() and len(a) == reference.tiles_written
    for k in a:
        assert a[k][1] == b[k][1]
        np.testing.assert_array_equal(a[k][2], b[k][2])


def test_persistent_faults_fail_exactly_that_asset(tmp_path, web, settings, encoder):
    bad = "/korea_cog.tif"
    served: dict[str, int] = {"n": 0}

    def decide(method: str, path: str, rng: str):
        served["n"] += 1
        if served["n"] > 20 * MAX_ATTEMPTS:
            return "pass"
        # Every pixel range of one asset fails (its header, the first range, reads fine).
        if path == bad and method == "GET" and not rng.startswith("bytes=0-"):
            return "error" if served["n"] % 2 else "cut"
        return "pass"

    _index(tmp_path / "ref", settings, encoder, [f"{web.url}/{n}" for n in NAMES
                                                 if n != bad[1:]])
    with FaultProxy(web.port, decide) as proxy:
        report = _index(tmp_path / "faulty", _quick(settings), encoder,
                        [f"{proxy.url}/{n}" for n in NAMES])
    assert report.rasters_indexed == len(NAMES) - 1
    assert len(report.problems) == 1
    line = str(report.problems[0])
    assert line.startswith(f"{proxy.url}{bad}: ") and "\n" not in line
    assert "HTTP 500" in line or "cannot" in line
    got = tiles_by_key(tmp_path / "faulty")
    assert not [k for k in got if k[0] == bad[1:]]
    want = tiles_by_key(tmp_path / "ref")
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(want[k][2], got[k][2])
