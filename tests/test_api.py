"""The search engine and HTTP API through the real ASGI app, on the real shared rasters."""

from __future__ import annotations

import io
import shutil
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from indexer.job.pipeline import IndexJob
from search.client import SatfindClient, SatfindError
from search.engine import SearchEngine
from search.http.app import create_app
from search.settings import ApiSettings, ServeConfig
from tests.conftest import make_raster

NAIP_BBOX = (-99.186, 47.004, -99.124, 47.037)


def _ids(r):
    assert r.status_code == 200, r.text
    return [x["id"] for x in r.json()["results"]]


def test_text_search(client):
    r = client.get("/search", params={"q": "center-pivot irrigation", "k": 7})
    body = r.json()
    assert r.status_code == 200 and body["count"] == 7 == len(body["results"])
    scores = [x["score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    res = body["results"][0]
    w, s, e, n = res["bounds"]
    assert res["centre"] == [(w + e) / 2, (s + n) / 2]
    assert res["thumbnail_url"] == f"/tiles/{res['id']}/thumbnail.jpg"
    assert client.get(res["thumbnail_url"]).headers["content-type"] == "image/jpeg"


def test_image_search_finds_the_uploaded_tile(client, engine):
    ids = engine.snapshot.tiles(["id"])["id"].to_numpy()
    for tid in ids[:: max(1, len(ids) // 6)][:6]:
        jpeg = client.get(f"/tiles/{tid}/thumbnail.jpg").content
        r = client.post("/search/image", files={"file": ("q.jpg", jpeg, "image/jpeg")},
                        data={"k": "5"})
        assert _ids(r)[0] == tid
    # PNG and GeoTIFF uploads go through the same preprocessing
    png = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(png, format="PNG")
    r = client.post("/search/image", files={"file": ("q.png", png.getvalue())})
    assert _ids(r)[0] == tid
    tif = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(tif, format="TIFF")
    r = client.post("/search/image", files={"file": ("q.tif", tif.getvalue())})
    assert _ids(r)[0] == tid


def test_similar_by_id(client):
    r = client.get("/tiles/42/similar", params={"k": 5})
    assert _ids(r)[0] == 42
    assert r.json()["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)


def test_bbox_filter_returns_only_naip(client):
    r = client.get("/search", params={"q": "farmland", "k": 50,
                                      "bbox": ",".join(map(str, NAIP_BBOX))})
    res = r.json()["results"]
    assert len(res) == 50
    assert all("naip_nd_" in x["source"] for x in res)
    for x in res:  # every result intersects the box
        w, s, e, n = x["bounds"]
        assert e > NAIP_BBOX[0] and w < NAIP_BBOX[2] and n > NAIP_BBOX[1] and s < NAIP_BBOX[3]


def test_date_filter_returns_only_2014(client):
    r = client.get("/search", params={"q": "farmland", "k": 100, "start": "2014-01-01",
                                      "end": "2014-12-31"})
    res = r.json()["results"]
    assert res and all(x["acquired"].startswith("2014-07-20") for x in res)
    # end as a date includes that whole day
    r = client.get("/search", params={"q": "farmland", "k": 5, "start": "2014-07-20",
                                      "end": "2014-07-20"})
    assert r.json()["count"] == 5


def test_sensor_filter_and_collapse(client):
    r = client.get("/search", params={"q": "fields", "k": 40, "sensor": "NAIP"})
    res = r.json()["results"]
    assert {x["sensor"] for x in res} == {"NAIP"}
    cells = [(x["z"], x["x"], x["y"]) for x in res]
    assert len(set(cells)) < len(cells)  # both dates of the same tiles come back...
    r = client.get("/search", params={"q": "fields", "k": 40, "sensor": "NAIP",
                                      "collapse": True})
    cells = [(x["z"], x["x"], x["y"]) for x in r.json()["results"]]
    assert len(set(cells)) == len(cells) == 40  # ...unless collapsed


def test_geojson(client):
    params = {"q": "river", "k": 5}
    js = client.get("/search", params=params).json()
    gj = client.get("/search", params={**params, "format": "geojson"}).json()
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 5
    assert [f["id"] for f in gj["features"]] == [x["id"] for x in js["results"]]
    for f, x in zip(gj["features"], js["results"], strict=True):
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        ring = f["geometry"]["coordinates"][0]
        assert len(ring) == 5 and ring[0] == ring[-1]
        w, s, e, n = x["bounds"]
        assert {tuple(p) for p in ring} == {(w, s), (e, s), (e, n), (w, n)}
        signed = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:], strict=False))
        assert signed > 0  # RFC 7946: exterior rings are counter-clockwise
        assert f["properties"]["score"] == pytest.approx(x["score"])


def test_relevance_feedback(client):
    base = _ids(client.get("/search", params={"q": "houses", "k": 10}))
    fed = _ids(client.post("/search", json={"text": "houses", "positives": [base[5]],
                                            "k": 10}))
    assert fed.index(base[5]) < 5  # a thumbs-up moves a tile up...
    fed = _ids(client.post("/search", json={"text": "houses", "negatives": [base[0]],
                                            "k": 10}))
    assert base[0] not in fed or fed.index(base[0]) > 0  # ...a thumbs-down moves it down
    only_pos = _ids(client.post("/search", json={"positives": [base[3], base[4]], "k": 3}))
    assert set(only_pos[:2]) == {base[3], base[4]}


def test_stats_and_health(client, real_index):
    s = client.get("/stats").json()
    assert s["tiles"] == real_index[1].tiles_written and s["sources"] == 6
    assert s["index"]["factory"] == "Flat" and s["encoder"]["architecture"] == "satfind-tiny"
    assert s["sensors"]["NAIP"] > 0
    assert client.get("/health").json()["tiles"] == s["tiles"]


def _png(w: int, h: int) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(b, format="PNG")
    return b.getvalue()


@pytest.mark.parametrize("method,url,kw,status,needle", [
    ("get", "/search", {"params": {"q": "x", "k": 0}}, 422, "greater than or equal to 1"),
    ("get", "/search", {"params": {"q": "x", "k": 100000}}, 422, "less than or equal"),
    ("get", "/search", {"params": {"q": "x", "bbox": "5,0,5,1"}}, 400, "west equals east"),
    ("get", "/search", {"params": {"q": "x", "bbox": "0,-95,1,1"}}, 400, "latitudes"),
    ("get", "/search", {"params": {"q": "x", "bbox": "0,1,2"}}, 400, "west,south,east,north"),
    ("get", "/search", {"params": {"q": "x", "start": "2015-01-01", "end": "2014-01-01"}}, 400,
     "start is after end"),
    ("get", "/search", {"params": {"q": "x", "start": "yesterday"}}, 400, "ISO date"),
    ("get", "/search", {"params": {"q": ""}}, 422, "q:"),
    ("get", "/search", {"params": {"q": "   "}}, 400, "empty query"),
    ("get", "/tiles/987654321", {}, 404, "unknown tile id 987654321"),
    ("get", "/tiles/987654321/similar", {}, 404, "unknown tile id"),
    ("get", "/tiles/987654321/thumbnail.jpg", {}, 404, "unknown tile id"),
    ("post", "/search", {"json": {"positives": [987654321]}}, 404, "unknown tile id"),
    ("post", "/search", {"json": {}}, 400, "empty query"),
    ("post", "/search", {"json": {"text": "a", "tile_id": 1}}, 400, "one of text"),
    ("post", "/search", {"json": {"image_base64": "***"}}, 400, "not valid base64"),
    ("post", "/search/image", {"files": {"file": ("a.txt", b"hello world")}}, 415,
     "unsupported image type"),
    ("post", "/search/image", {"files": {"file": ("a.png", b"\x89PNG\r\n\x1a\nbroken")}}, 400,
     "cannot decode PNG"),
    ("post", "/search/image", {"files": {"file": ("a.png", _png(1, 1))}}, 400, "1x1 pixels"),
])
def test_bad_input_gets_a_clear_4xx(client, method, url, kw, status, needle):
    r = getattr(client, method)(url, **kw)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_upload_limit_and_api_key(real_index, settings, encoder):
    api = ApiSettings(max_upload_bytes=2000, api_key="s3cret")
    eng = SearchEngine(real_index[0], ServeConfig(settings, api=api), encoder=encoder)
    with TestClient(create_app(eng)) as c:
        assert c.get("/health").status_code == 200  # open for load balancers
        r = c.get("/search", params={"q": "x"})
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        r = c.get("/search", params={"q": "x"}, headers={"X-API-Key": "wrong"})
        assert r.status_code == 401
        h = {"X-API-Key": "s3cret"}
        assert c.get("/search", params={"q": "x"}, headers=h).status_code == 200
        r = c.post("/search/image", files={"file": ("big.png", _png(600, 600))}, headers=h)
        assert r.status_code == 413 and "larger than 2000 bytes" in r.json()["detail"]


def test_python_client(client):
    from httpx import Client

    sc = SatfindClient.__new__(SatfindClient)
    sc._http = client if isinstance(client, Client) else client  # TestClient is an httpx.Client
    res = sc.search_text("lake", k=3, bbox=NAIP_BBOX, start="2009-01-01", end="2009-12-31")
    assert res["count"] == 3 and all("2009" in x["acquired"] for x in res["results"])
    tid = res["results"][0]["id"]
    assert sc.similar(tid, k=1)["results"][0]["id"] == tid
    assert sc.search_image(sc.thumbnail(tid), k=1)["results"][0]["id"] == tid
    assert sc.tile(tid)["id"] == tid
    with pytest.raises(SatfindError, match="unknown tile id") as e:
        sc.tile(987654321)
    assert e.value.status == 404
    with pytest.raises(SatfindError, match="cannot reach"):
        SatfindClient("http://127.0.0.1:9", timeout=2).health()


def test_new_commit_is_picked_up_without_restart(tmp_path, real_index, settings, encoder):
    idx = tmp_path / "idx"
    shutil.copytree(real_index[0], idx)
    eng = SearchEngine(idx, ServeConfig(settings), encoder=encoder)
    errors: list[str] = []
    stop = threading.Event()

    def hammer():
        with TestClient(create_app(eng)) as c:
            for _ in range(2000):  # bounded
                if stop.is_set():
                    return
                r = c.get("/search", params={"q": "roads", "k": 10})
                if r.status_code != 200:
                    errors.append(r.text)

    with TestClient(create_app(eng)) as c:
        before = c.get("/stats").json()
        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        make_raster(tmp_path / "new" / "new_20200101.tif", size=256)
        IndexJob(idx, settings, encoder, progress=False).run([str(tmp_path / "new")])
        after = c.get("/stats").json()
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        assert after["tiles"] > before["tiles"] and after["generation"] > before["generation"]
        r = c.get("/search", params={"q": "x", "k": 5, "start": "2020-01-01"})
        assert r.json()["count"] == 5
        assert all(x["acquired"].startswith("2020-01-01") for x in r.json()["results"])


def test_refuses_an_index_of_another_encoder(real_index, settings):
    from encoder.identity import EncoderSpec
    from encoder.model import SatelliteEncoder
    from indexer.errors import IndexError_

    other = SatelliteEncoder(EncoderSpec(model="satfind-tiny", random_weights=True, seed=99))
    with pytest.raises(IndexError_, match="query encoder"):
        SearchEngine(real_index[0], ServeConfig(settings), encoder=other)


def test_times_are_utc(engine):
    from indexer.store.tiles import Filters
    from search.query import Query

    rows = engine.search(Query(text="x", k=3, filters=Filters(
        start=datetime(2009, 1, 1, tzinfo=UTC), end=datetime(2009, 12, 31, tzinfo=UTC))))
    assert all(r["acquired"] == datetime(2009, 8, 18, tzinfo=UTC) for r in rows)
    assert np.isfinite([r["score"] for r in rows]).all()


def test_cors_origins(real_index, settings, encoder):
    api = ApiSettings(cors_origins=("http://explorer.example",))
    eng = SearchEngine(real_index[0], ServeConfig(settings, api=api), encoder=encoder)
    with TestClient(create_app(eng)) as c:
        ok = c.get("/health", headers={"Origin": "http://explorer.example"})
        assert ok.headers["access-control-allow-origin"] == "http://explorer.example"
        other = c.get("/health", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def test_concurrent_identical_text_queries_embed_once(real_index, settings, encoder):
    calls = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def encode_text(self, texts):
            calls.append(len(texts))
            time.sleep(0.3)  # a slow model: the other requests arrive while it runs
            return self.inner.encode_text(texts)

    eng = SearchEngine(real_index[0], ServeConfig(settings), encoder=Counting(encoder))
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(
        eng.text_vector("a brand new query about quarries"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 8 and all(np.array_equal(r, results[0]) for r in results)
    assert len(calls) == 1  # one prompt-ensemble forward for eight requests
