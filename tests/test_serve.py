"""The real server: `satfind-serve` under uvicorn on 127.0.0.1, a short bounded load."""

from __future__ import annotations

from search.client import SatfindClient
from tests import chaos
from tests.conftest import OFFLINE_CONFIG
from tests.load import run_load


def test_serve_and_bounded_load(real_index):
    port = chaos.free_port()
    proc = chaos.start_server(real_index[0], OFFLINE_CONFIG, port)
    try:
        url = f"http://127.0.0.1:{port}"
        with SatfindClient(url) as c:
            assert c.health()["tiles"] == real_index[1].tiles_written
            res = c.search_text("river", k=3)
            assert res["count"] == 3
            tid = res["results"][0]["id"]
            assert c.similar(tid, k=1)["results"][0]["id"] == tid
        lat, errors, _ = run_load(url, clients=4, duration=3.0, max_requests=200)
        assert sum(len(v) for v in lat.values()) > 0
        assert sum(errors.values()) == 0
        assert set(lat) <= {"text_cached", "text_uncached", "similar", "text_filtered"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode in (0, -15)
