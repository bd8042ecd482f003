"""search.client and `satfind-search` against a real satfind-serve on 127.0.0.1: every
endpoint of the beyond-top-k API through the client, and the scripted CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from search.client import SatfindClient, SatfindError
from tests import chaos
from tests.conftest import OFFLINE_CONFIG, ROOT

NAIP = (-99.186, 47.004, -99.124, 47.037)


@pytest.fixture(scope="module")
def api(real_index, tmp_path_factory):
    idx = tmp_path_factory.mktemp("client") / "idx"
    shutil.copytree(real_index[0], idx)  # label sets are written into it
    shutil.rmtree(idx / "labels", ignore_errors=True)  # (other tests may have left some)
    port = chaos.free_port()
    proc = chaos.start_server(idx, OFFLINE_CONFIG, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_client_covers_every_new_endpoint(api):
    with SatfindClient(api) as c:
        sc = c.region_scores("farmland", bbox=NAIP)
        assert sc["count"] == len(sc["id"]) == len(sc["score"]) > 50
        pqt = pq.read_table(io.BytesIO(c.region_scores(tile=sc["id"][0], bbox=NAIP,
                                                       format="parquet")))
        assert pqt.num_rows == sc["count"]
        ids = sc["id"]
        made = c.put_labels("fields", positives=ids[:4], negatives=ids[-4:])
        assert made["positives"] == sorted(ids[:4])
        assert c.label_sets() == [{"name": "fields", "positives": 4, "negatives": 4}]
        assert c.labels("fields")["negatives"] == sorted(ids[-4:])
        assert len(c.labels("fields", format="geojson")["features"]) == 8
        ranked = c.classify("fields", k=5, bbox=NAIP)
        assert len(ranked["results"]) == 5 and "auc" in ranked["cv"]
        refined = c.region_scores(labels="fields", bbox=NAIP)
        assert refined["count"] == sc["count"]
        ch = c.change(("2009-01-01", "2009-12-31"), ("2014-01-01", "2014-12-31"), q="farmland",
                      k=3)
        assert len(ch["id"]) == 3 and ch["delta"][0] >= ch["delta"][1]
        hist = c.history(ch["id"][0], q="farmland")
        assert [a["acquired"][:4] for a in hist["acquisitions"]] == ["2009", "2014"]
        where = c.where(ch["id"][0], q="farmland")
        assert where["peak"]["score"] is not None
        assert c.where(ch["id"][0], q="farmland", format="png")[:4] == b"\x89PNG"
        t = c.tile(ch["id"][0])
        assert c.map_tile(t["z"] - 1, t["x"] // 2, t["y"] // 2)[:4] == b"\x89PNG"
        assert c.map_tile(t["z"] - 1, t["x"] // 2, t["y"] // 2, format="jpg")[:2] == b"\xff\xd8"
        assert c.score_tile(t["z"], t["x"], t["y"], q="farmland")[:4] == b"\x89PNG"
        c.delete_labels("fields")
        with pytest.raises(SatfindError) as e:
            c.labels("fields")
        assert e.value.status == 404


def test_the_client_covers_the_map_explorer_endpoints(api):
    """tiles_at, score_tile's threshold and filters, score_legend: through a real server."""
    with SatfindClient(api) as c:
        sc = c.region_scores("farmland", bbox=NAIP)
        t = c.tile(sc["id"][0])
        lon, lat = t["centre"]
        at = c.tiles_at(lon, lat)
        assert at["count"] == at["total"] == 2 and t in at["results"]
        assert [r["acquired"][:4] for r in at["results"]] == ["2014", "2009"]
        assert c.tiles_at(lon, lat, limit=1)["results"] == at["results"][:1]
        assert [r["acquired"][:4] for r in c.tiles_at(lon, lat, end="2010-01-01",
                                                       sensor="NAIP")["results"]] == ["2009"]
        assert c.tiles_at(0.0, 0.0) == {**at, "count": 0, "total": 0, "results": []}
        with pytest.raises(SatfindError) as e:
            c.tiles_at(200, lat)
        assert e.value.status == 422 and "lon" in str(e.value)
        with pytest.raises(SatfindError) as e:
            c.tiles_at(lon, lat, bbox=NAIP)  # not a filter of this route: named
        assert e.value.status == 400 and "bbox" in str(e.value)
        leg = c.score_legend("farmland")
        assert leg["count"] == sum(leg["histogram"]["counts"]) and len(leg["ramp"]) == 9
        assert c.score_legend("farmland", end="2010-01-01")["count"] < leg["count"]
        z, x, y = t["z"] - 1, t["x"] // 2, t["y"] // 2
        plain = c.score_tile(z, x, y, q="farmland")
        assert c.score_tile(z, x, y, q="farmland", threshold=-1.0) == plain
        assert c.score_tile(z, x, y, q="farmland", threshold=1.0) != plain
        assert c.score_tile(z, x, y, q="farmland", end="2010-01-01") != plain


def _search(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.query_cli", *args], cwd=ROOT,
                          capture_output=True, timeout=60)


def test_satfind_search_scripts_queries(api):
    r = _search("--api", api, "farmland", "--bbox", ",".join(map(str, NAIP)), "--k", "7",
                "--format", "geojson")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["features"]) == 7
    r = _search("--api", api, "farmland", "--k", "3", "--format", "csv")
    lines = r.stdout.decode().strip().splitlines()
    assert lines[0].startswith("id,score,z,x,y") and len(lines) == 4
    r = _search("--api", api, "farmland", "--all", "--bbox", ",".join(map(str, NAIP)),
                "--format", "parquet")
    assert r.returncode == 0 and pq.read_table(io.BytesIO(r.stdout)).num_rows > 50
    bad = _search("--api", api, "farmland", "--bbox", "1,2")
    assert bad.returncode == 2 and bad.stderr.decode().count("\n") == 1
    down = _search("--api", "http://127.0.0.1:9", "farmland")
    assert down.returncode == 2 and b"cannot reach" in down.stderr
