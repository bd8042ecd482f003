"""The API under hostile input (issue 10): decompression bombs and huge bodies, dates at the
calendar's edges, boxes across the antimeridian, what error details and caches may reveal,
damaged index files at start, and the error bodies the spec promises."""

from __future__ import annotations

import asyncio
import io
import json
import shutil

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.transform import from_origin

from indexer.config import TileRecipe
from indexer.job.pipeline import IndexJob
from search import cli as serve_cli
from search.engine import SearchEngine
from search.http.app import body_limit_bytes, create_app
from search.settings import ApiSettings, ServeConfig
from tests.bombs import bomb_corpus
from tests.conftest import OFFLINE_CONFIG

# --- 3: images are sized from their header before anything is decoded ----------------------

def test_bombs_are_refused_on_their_declared_size(client):
    for name, data in bomb_corpus().items():
        assert len(data) < 3_000_000, name
        r = client.post("/search/image", files={"file": (name, data)})
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert "api.max_image_pixels" in r.json()["detail"], name
        r = client.post("/search", json={"image_base64": __import__("base64").b64encode(
            data).decode()})
        assert r.status_code in (400, 413), (name, r.text)


def test_large_but_allowed_images_decode_cheaply(client, engine):
    tid = int(engine.snapshot.tiles(["id"])["id"][0].as_py())
    thumb = Image.open(io.BytesIO(client.get(f"/tiles/{tid}/thumbnail.jpg").content))
    big = thumb.convert("RGB").resize((6000, 6000))  # 36 MP, under the 50 MP cap
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=75)
    assert len(buf.getvalue()) < 10 * 2**20
    r = client.post("/search/image", files={"file": ("big.jpg", buf.getvalue())},
                    data={"k": "3"})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == tid
    buf = io.BytesIO()
    with rasterio.MemoryFile() as mem:
        arr = np.asarray(thumb.convert("RGB").resize((3000, 3000))).transpose(2, 0, 1)
        with mem.open(driver="GTiff", width=3000, height=3000, count=3, dtype="uint8",
                      compress="deflate", predictor=2) as dst:
            dst.write(arr)
        tif = mem.read()
    r = client.post("/search/image", files={"file": ("big.tif", tif)}, data={"k": "3"})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == tid


def test_decoding_is_bounded_to_the_tile(monkeypatch, engine, settings):
    """JPEGs are decoded at a reduced DCT scale, not at their full size."""
    from search import query_image as images

    seen = []
    real_load = Image.Image.load

    def spy(self):
        out = real_load(self)
        seen.append(self.size)
        return out

    monkeypatch.setattr(Image.Image, "load", spy)
    buf = io.BytesIO()
    Image.new("RGB", (4096, 3072), (10, 200, 30)).save(buf, format="JPEG")
    seen.clear()
    recipe = TileRecipe.from_tiling(settings.tiling, 64)
    tile = images.decode_query_image(buf.getvalue(), recipe, ("png", "jpeg", "tiff"), 16)
    assert tile.shape == (3, 64, 64)
    assert seen and max(w * h for w, h in seen) <= 512 * 384


def _asgi_call(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    """Drive the ASGI app directly: returns (status, body, how many chunks it read)."""
    sent, read = [], [0]

    async def receive():
        i = read[0]
        read[0] += 1
        if i < len(chunks):
            return {"type": "http.request", "body": chunks[i], "more_body": i + 1 < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "path": "/search", "raw_path": b"/search", "query_string": b"",
             "root_path": "", "scheme": "http", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         *headers]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, read[0]


def test_a_huge_body_is_refused_before_it_is_read(engine):
    app = create_app(engine)
    limit = body_limit_bytes(engine.api_settings.max_upload_bytes)
    status, body, read = _asgi_call(app, [(b"content-length", b"314572800")], [b"{}"] * 10)
    assert status == 413 and read == 0 and b"larger than" in body
    # without a Content-Length (chunked), reading stops at the cap
    chunk = b" " * (1 << 20)
    status, body, read = _asgi_call(app, [], [b"{"] + [chunk] * 300)
    assert status == 413 and read <= limit // len(chunk) + 3
    # a body under the cap goes through
    status, _, _ = _asgi_call(app, [], [json.dumps({"text": "farm"}).encode()])
    assert status == 200


def test_concurrent_decodes_are_bounded(engine):
    assert engine._decode_slots._value == engine.api_settings.max_concurrent_decodes == 2


# --- 4: dates at the edges of the calendar ----------------------------------------------------

EDGE_DATES = ["9999-12-31", "0001-01-01", "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z",
              "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00", "10000-01-01",
              "0000-01-01", "2014-02-30", "9999-12-31T24:00:00", "-0001-01-01"]


@pytest.mark.parametrize("field", ["start", "end"])
def test_dates_at_the_edges_are_4xx_or_results_on_every_route(client, field):
    tid = client.get("/search", params={"q": "x", "k": 1}).json()["results"][0]["id"]
    thumb = client.get(f"/tiles/{tid}/thumbnail.jpg").content
    for d in EDGE_DATES:
        responses = [
            client.get("/search", params={"q": "field", field: d}),
            client.post("/search", json={"text": "field", field: d}),
            client.post("/search/image", files={"file": ("q.jpg", thumb)}, data={field: d}),
            client.get(f"/tiles/{tid}/similar", params={field: d}),
        ]
        for r in responses:
            assert r.status_code in (200, 400), (d, r.request.url, r.status_code, r.text)
            if r.status_code == 400:
                assert field in r.json()["detail"]
        # the connection is still good for the next request
        assert client.get("/health").status_code == 200
    r = client.get("/search", params={"q": "field", "end": "9999-12-31", "start": "0001-01-01"})
    assert r.status_code == 200 and r.json()["count"] > 0


# --- 6: a box across the antimeridian -----------------------------------------------------------

@pytest.fixture(scope="module")
def dateline_client(tmp_path_factory, settings, encoder):
    d = tmp_path_factory.mktemp("dateline")
    data = np.random.default_rng(0).integers(20, 240, (3, 200, 200)).astype(np.uint8)
    (d / "a").mkdir()
    with rasterio.open(d / "a" / "ll.tif", "w", driver="GTiff", width=200, height=200, count=3,
                       dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(179.5, -16.0, 0.005, 0.005)) as dst:
        dst.write(data)
    s = __import__("dataclasses").replace(settings, tiling=__import__("dataclasses").replace(
        settings.tiling, zoom=10))
    IndexJob(d / "idx", s, encoder, progress=False).run([str(d / "a")])
    with TestClient(create_app(SearchEngine(d / "idx", ServeConfig(s), encoder=encoder))) as c:
        yield c


def test_bbox_across_the_antimeridian(dateline_client):
    c = dateline_client
    r = c.get("/search", params={"q": "island", "k": 200, "bbox": "179.7,-17,-179.7,-16"})
    assert r.status_code == 200, r.text
    west = [x for x in r.json()["results"] if x["bounds"][0] > 0]
    east = [x for x in r.json()["results"] if x["bounds"][0] < 0]
    assert west and east, "a box across the antimeridian must see both sides"
    assert all(x["bounds"][2] > 179.7 for x in west) and all(x["bounds"][0] < -179.7 for x in east)
    one_side = c.get("/search", params={"q": "island", "k": 200, "bbox": "179.7,-17,180,-16"})
    assert all(x["bounds"][0] > 0 for x in one_side.json()["results"])
    body = {"text": "island", "k": 200, "bbox": [179.7, -17, -179.7, -16]}
    assert c.post("/search", json=body).json()["count"] == len(west) + len(east)


# --- 11: what responses reveal ------------------------------------------------------------------

def test_thumbnails_are_private_when_a_key_is_required(real_index, settings, encoder, client):
    tid = client.get("/search", params={"q": "x", "k": 1}).json()["results"][0]["id"]
    assert client.get(f"/tiles/{tid}/thumbnail.jpg").headers["cache-control"].startswith(
        "public")
    eng = SearchEngine(real_index[0], ServeConfig(settings, api=ApiSettings(api_key="k3y")),
                       encoder=encoder)
    with TestClient(create_app(eng)) as c:
        r = c.get(f"/tiles/{tid}/thumbnail.jpg", headers={"X-API-Key": "k3y"})
        assert r.status_code == 200 and r.headers["cache-control"].startswith("private")


def test_trusted_hosts(real_index, settings, encoder):
    eng = SearchEngine(real_index[0], ServeConfig(settings, api=ApiSettings(
        trusted_hosts=("search.example.org",))), encoder=encoder)
    with TestClient(create_app(eng), base_url="http://search.example.org") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"host": "evil.example"}).status_code == 400


def test_error_details_do_not_reveal_server_internals(tmp_path, real_index, settings, encoder):
    idx = tmp_path / "idx"
    shutil.copytree(real_index[0], idx)
    eng = SearchEngine(idx, ServeConfig(settings), encoder=encoder)
    with TestClient(create_app(eng)) as c:
        tid = c.get("/search", params={"q": "x", "k": 1}).json()["results"][0]["id"]
        for f in (idx / "thumbs").iterdir():
            f.write_bytes(b"damaged")
        bad = [
            c.get(f"/tiles/{tid}/thumbnail.jpg"),
            c.post("/search/image", files={"file": ("a.tif", b"II*\x00" + b"\x07" * 300)}),
            c.post("/search/image", files={"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"x" * 50)}),
            c.post("/search/image", files={"file": ("a.jpg", b"\xff\xd8\xff" + b"x" * 50)}),
        ]
    assert [r.status_code for r in bad] == [503, 400, 400, 400]
    for r in bad:
        detail = r.json()["detail"]
        assert str(tmp_path) not in detail and "/vsimem" not in detail
        assert " at 0x" not in detail and "/work/" not in detail, detail


# --- 12: a damaged index is one line at start -------------------------------------------------

@pytest.mark.parametrize("damage,needle", [
    ("truncate_vectors", "vectors.f16.npy is truncated"),
    ("truncate_codes", "is truncated"),
    ("garbage_part", "damaged Arrow part"),
    ("garbage_parquet_part", "damaged Parquet part"),
    ("duplicate_ids", "duplicate ids"),
    ("missing_part", "is missing"),
])
def test_serve_start_on_a_damaged_index_is_one_line(tmp_path, real_index, capsys, damage,
                                                    needle):
    idx = tmp_path / "idx"
    shutil.copytree(real_index[0], idx)
    m = json.loads((idx / "manifest.json").read_text())
    if damage == "truncate_vectors":
        v = idx / "vectors.f16.npy"
        v.write_bytes(v.read_bytes()[:-1000])
    elif damage == "truncate_codes":
        c = idx / m["index"]["codes"]
        c.write_bytes(c.read_bytes()[:-100])
    elif damage == "garbage_part":  # the rows the server maps
        (idx / "tiles" / m["parts"][0]["name"]).with_suffix(".arrow").write_bytes(b"ARROW1")
    elif damage == "garbage_parquet_part":  # a part from before the Arrow copies
        (idx / "tiles" / m["parts"][0]["name"]).write_bytes(b"PAR1 not really")
        del m["parts"][0]["arrow"]
        (idx / "manifest.json").write_text(json.dumps(m))
    elif damage == "duplicate_ids":
        m["parts"][1]["id_min"] = m["parts"][0]["id_min"]
        (idx / "manifest.json").write_text(json.dumps(m))
    elif damage == "missing_part":
        (idx / "thumbs" / m["parts"][0]["name"]).unlink()
    rc = serve_cli.main(["--index", str(idx), "--config", str(OFFLINE_CONFIG)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and needle in err, err


def test_the_writer_never_zero_extends_a_truncated_vector_file(tmp_path, real_index, capsys):
    from indexer import cli

    idx = tmp_path / "idx"
    shutil.copytree(real_index[0], idx)
    v = idx / "vectors.f16.npy"
    v.write_bytes(v.read_bytes()[:-1000])
    size = v.stat().st_size
    rc = cli.main([str(OFFLINE_CONFIG.parent), "--index", str(idx), "--config",
                   str(OFFLINE_CONFIG), "-q"])
    assert rc == 2 and "truncated" in capsys.readouterr().err
    assert v.stat().st_size == size


# --- 13: the spec describes the error bodies ----------------------------------------------------

def test_openapi_describes_the_422_bodies_the_api_returns(client):
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if op.get("parameters") or op.get("requestBody"):
                ref = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (method, path, ref)
    r = client.get("/search", params={"q": "x", "k": "many"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


def test_an_unknown_query_parameter_is_an_error(client):
    r = client.get("/search", params={"q": "x", "bboxx": "1,2,3,4"})
    assert r.status_code == 400 and "unknown query parameter 'bboxx'" in r.json()["detail"]
    assert client.get("/tiles/1", params={"k": 3}).status_code == 400
    assert client.get("/search", params={"q": "x", "sensor": ["a", "b"]}).status_code == 200
