"""Search beyond top-k, through the real ASGI app: the archive as XYZ map tiles, the score of
every tile in an area, score overlays, label sets (persisted, stable ids), the linear
classifier, change between two dates, a place's history, and where in a tile a query
matches. On the real shared rasters where the test is about them; on synthetic rasters
where a known answer has to be planted."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from indexer.job.pipeline import IndexJob
from search import classifier
from search.engine import SearchEngine
from search.http.app import create_app
from search.mosaic import downsample, rgba_thumbnail
from search.settings import ServeConfig
from tests.helpers import make_raster

NAIP_BBOX = "-99.186,47.004,-99.124,47.037"


def _png(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))


def _newest_per_cell(engine):
    t = engine.snapshot.tiles(["id", "z", "x", "y", "acquired"]).to_pylist()
    newest = {}
    for r in sorted(t, key=lambda r: (r["acquired"] is not None, r["acquired"] or 0, r["id"])):
        newest[(r["z"], r["x"], r["y"])] = r["id"]
    return newest


def test_map_tiles_are_the_stored_thumbnails_and_lower_zooms_their_mosaic(client, engine):
    """At one zoom above the index tiles a 256 px map tile holds 2x2 index tiles at their
    128 px thumbnails: the newest one of each cell, pixel for pixel. One zoom further up
    is the 2x box-downsampled mosaic of its four children."""
    newest = _newest_per_cell(engine)
    checked = 0
    for (z, x, y), tid in list(newest.items())[::7][:6]:
        img = _png(client.get(f"/map/{z - 1}/{x // 2}/{y // 2}.png"))
        thumb = np.asarray(rgba_thumbnail(engine.thumbnail(tid)))
        assert thumb.shape == (128, 128, 4)
        qy, qx = (y % 2) * 128, (x % 2) * 128
        quad = img[qy:qy + 128, qx:qx + 128]
        shown = thumb[..., 3] == 255
        np.testing.assert_array_equal(quad[shown], thumb[shown])
        checked += 1
        # one zoom up: the children, downsampled
        zz, xx, yy = z - 2, x // 4, y // 4
        parent = _png(client.get(f"/map/{zz}/{xx}/{yy}.png"))
        canvas = np.zeros((512, 512, 4), np.uint8)
        for dy in (0, 1):
            for dx in (0, 1):
                r = client.get(f"/map/{zz + 1}/{2 * xx + dx}/{2 * yy + dy}.png")
                canvas[dy * 256:(dy + 1) * 256, dx * 256:(dx + 1) * 256] = _png(r)
        diff = np.abs(parent.astype(int) - downsample(canvas).astype(int))
        assert diff.max() <= 1, diff.max()
    assert checked == 6
    # JPEG: the same imagery; nothing indexed -> PNG transparent, JPEG 404
    z, x, y = next(iter(newest))
    r = client.get(f"/map/{z - 1}/{x // 2}/{y // 2}.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert _png(client.get("/map/3/0/0.png"))[..., 3].max() == 0
    assert client.get("/map/3/0/0.jpg").status_code == 404
    assert client.get("/map/3/9/0.png").status_code == 404  # x beyond the zoom's range


def test_map_tiles_filtered_by_time_show_the_older_date(client, engine):
    newest = _newest_per_cell(engine)
    rows = engine.snapshot.tiles(["id", "z", "x", "y", "acquired"]).to_pylist()
    old = [r for r in rows if r["acquired"] is not None and r["acquired"].year == 2009]
    r = old[len(old) // 2]
    assert newest[(r["z"], r["x"], r["y"])] != r["id"]  # 2014 is on top by default
    url = f"/map/{r['z'] - 1}/{r['x'] // 2}/{r['y'] // 2}.png"
    img = _png(client.get(url, params={"end": "2010-01-01"}))
    thumb = np.asarray(rgba_thumbnail(engine.thumbnail(r["id"])))
    quad = img[(r["y"] % 2) * 128:][:128, (r["x"] % 2) * 128:][:, :128]
    shown = thumb[..., 3] == 255
    np.testing.assert_array_equal(quad[shown], thumb[shown])


def _brute_scores(engine, v, bbox):
    w, s, e, n = bbox
    t = engine.snapshot.tiles(["id", "west", "south", "east", "north"]).to_pylist()
    f32 = np.float32
    ids = [r["id"] for r in t if f32(r["east"]) > f32(w) and f32(r["west"]) < f32(e)
           and f32(r["north"]) > f32(s) and f32(r["south"]) < f32(n)]
    return dict(zip(ids, (engine.snapshot.get_vectors(ids) @ v).tolist(), strict=True))


def test_region_scores_equal_brute_force_in_every_format(client, engine):
    r = client.get("/search/scores", params={"q": "center pivot irrigation",
                                             "bbox": NAIP_BBOX})
    assert r.status_code == 200, r.text
    body = r.json()
    want = _brute_scores(engine, engine.text_vector("center pivot irrigation"),
                         tuple(float(v) for v in NAIP_BBOX.split(",")))
    assert body["count"] == len(want) > 50
    got = dict(zip(body["id"], body["score"], strict=True))
    assert set(got) == set(want)
    np.testing.assert_allclose([got[i] for i in want], list(want.values()), atol=1e-5)
    assert body["satfind"]["query"]["q"] == "center pivot irrigation"
    assert body["satfind"]["generation"] == engine.snapshot.generation
    assert set(body) == {"count", "satfind", "id", "score", "z", "x", "y", "acquired"}
    full = client.get("/search/scores", params={"q": "center pivot irrigation",
                                                "bbox": NAIP_BBOX, "columns": "full"}).json()
    assert full["id"] == body["id"] and {"west", "source", "sensor", "gsd_m"} <= set(full)
    assert full["thumbnail_url"][0] == f"/tiles/{full['id'][0]}/thumbnail.jpg"
    # GeoParquet: geometry + "geo" metadata; Arrow, CSV and GeoJSON carry the same rows
    r = client.get("/search/scores", params={"q": "center pivot irrigation", "bbox": NAIP_BBOX,
                                             "format": "parquet"})
    t = pq.read_table(io.BytesIO(r.content))
    geo = json.loads(t.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and t.num_rows == len(want)
    assert json.loads(t.schema.metadata[b"satfind"])["query"]["bbox"] == NAIP_BBOX
    arrow = pa.ipc.open_stream(client.get("/search/scores", params={
        "tile": body["id"][0], "bbox": NAIP_BBOX, "format": "arrow"}).content).read_all()
    assert arrow.num_rows == len(want) and max(arrow["score"].to_pylist()) == pytest.approx(
        1.0, abs=2e-3)
    csv = client.get("/search/scores", params={"q": "river", "bbox": NAIP_BBOX,
                                               "format": "csv"}).text
    assert csv.startswith("# query:") and len(csv.strip().splitlines()) > len(want)
    gj = client.get("/search/scores", params={"q": "river", "bbox": NAIP_BBOX,
                                              "format": "geojson"}).json()
    assert len(gj["features"]) == len(want) and "score" in gj["features"][0]["properties"]


@pytest.mark.parametrize("params, status", [
    ({}, 400), ({"q": "x", "tile": 1}, 400), ({"q": "x", "bbox": "1,2,3"}, 400),
    ({"q": "x", "format": "xml"}, 422), ({"tile": 10**9}, 404), ({"q": "x", "bboxx": "1"}, 400),
])
def test_region_score_errors_are_4xx_with_a_detail(client, params, status):
    r = client.get("/search/scores", params=params)
    assert r.status_code == status and r.json()["detail"]


def test_score_overlay_colours_the_tiles(client, engine):
    newest = _newest_per_cell(engine)
    z, x, y = next(iter(newest))
    r = client.get(f"/map/scores/{z - 1}/{x // 2}/{y // 2}.png", params={"q": "a quarry"})
    img = _png(r)
    assert img[..., 3].max() > 0
    lo, hi = float(r.headers["X-Satfind-Vmin"]), float(r.headers["X-Satfind-Vmax"])
    assert lo < hi
    assert _png(client.get("/map/scores/3/0/0.png", params={"q": "x"}))[..., 3].max() == 0
    r = client.get(f"/map/scores/{z}/{x}/{y}.png", params={"q": "x", "vmin": 0.5, "vmax": 0.1})
    assert r.status_code == 400


def _newest_first(infos: dict, ids) -> list[int]:
    """Tile ids by acquisition, newest first, undated last, equal times highest id first."""
    def key(i):
        t = infos[i]["acquired"]
        return (t is not None, datetime.fromisoformat(t).timestamp() if t else 0.0, i)
    return sorted(ids, key=key, reverse=True)


def _under(infos: dict, lon: float, lat: float) -> list[int]:
    """Brute force: the tiles whose footprint (GET /tiles/{id} bounds) holds the point, an
    edge shared by two cells going to the east / south one."""
    hit = [i for i, t in infos.items() if t["bounds"][0] <= lon < t["bounds"][2]
           and t["bounds"][1] < lat <= t["bounds"][3]]
    return _newest_first(infos, hit)


@pytest.fixture(scope="module")
def tile_infos(client, engine) -> dict:
    ids = engine.snapshot.tiles(["id"])["id"].to_pylist()
    return {i: client.get(f"/tiles/{i}").json() for i in ids}


def test_tiles_at_a_point_are_the_footprints_that_hold_it_newest_first(client, tile_infos):
    infos = tile_infos
    by_cell = {(t["z"], t["x"], t["y"]): i for i, t in infos.items()}
    points = [tuple(t["centre"]) for t in list(infos.values())[::5]]
    # a NAIP cell with its east and south neighbours: points on the shared edges and corner
    a = next(t for t in infos.values() if t["sensor"] == "NAIP" and (
        t["z"], t["x"] + 1, t["y"]) in by_cell and (t["z"], t["x"], t["y"] + 1) in by_cell
        and (t["z"], t["x"] + 1, t["y"] + 1) in by_cell)
    w, s, e, n = a["bounds"]
    east = infos[by_cell[(a["z"], a["x"] + 1, a["y"])]]
    south = infos[by_cell[(a["z"], a["x"], a["y"] + 1)]]
    corner = infos[by_cell[(a["z"], a["x"] + 1, a["y"] + 1)]]
    edges = [((e, (s + n) / 2), east), (((w + e) / 2, s), south), ((e, s), corner)]
    points += [p for p, _ in edges]
    seen_dates = 0
    for lon, lat in points:
        want = _under(infos, lon, lat)
        r = client.get("/tiles/at", params={"lon": lon, "lat": lat, "limit": 1000})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [t["id"] for t in body["results"]] == want, (lon, lat)
        assert body["results"] == [infos[i] for i in want]  # the fields of GET /tiles/{id}
        assert body["count"] == body["total"] == len(want) >= 1
        seen_dates = max(seen_dates, len({t["acquired"] for t in body["results"]}))
    assert seen_dates >= 2  # some point holds several dates: the order was checked
    for (lon, lat), owner in edges:  # an edge belongs to one cell only: east / south
        got = {t["id"] for t in client.get("/tiles/at", params={"lon": lon, "lat": lat})
               .json()["results"]}
        assert a["id"] not in got and owner["id"] in got
    # nothing indexed there (the ocean off Africa; above web mercator's last latitude)
    for lon, lat in ((0, 0), (10, 89.9)):
        r = client.get("/tiles/at", params={"lon": lon, "lat": lat})
        assert r.json() == {"count": 0, "total": 0, "generation": r.json()["generation"],
                            "results": []}


def test_tiles_at_takes_the_filters_and_a_limit(client, tile_infos):
    naip = next(t for t in tile_infos.values() if t["sensor"] == "NAIP")
    lon, lat = naip["centre"]

    def ids(**params):
        r = client.get("/tiles/at", params={"lon": lon, "lat": lat, **params})
        assert r.status_code == 200, r.text
        return [(t["acquired"][:4], t["sensor"]) for t in r.json()["results"]]

    assert ids() == [("2014", "NAIP"), ("2009", "NAIP")]
    assert ids(end="2010-01-01") == [("2009", "NAIP")]
    assert ids(start="2014-01-01", end="2014-12-31") == [("2014", "NAIP")]
    assert ids(sensor="NAIP") == ids() and ids(sensor="aerial") == []
    one = client.get("/tiles/at", params={"lon": lon, "lat": lat, "limit": 1}).json()
    assert (one["count"], one["total"]) == (1, 2) and one["results"][0]["acquired"][:4] == "2014"
    # undated tiles pass a time filter only with undated=true
    haiti = next(t for t in tile_infos.values() if t["acquired"] is None)
    lon, lat = haiti["centre"]
    assert ids(start="2014-01-01") == []
    got = client.get("/tiles/at", params={"lon": lon, "lat": lat, "start": "2014-01-01",
                                          "undated": True}).json()["results"]
    assert [t["id"] for t in got] == [haiti["id"]]


@pytest.mark.parametrize("params, status, word", [
    ({"lon": 181, "lat": 0}, 422, "lon"), ({"lon": 0, "lat": -90.5}, 422, "lat"),
    ({"lon": "east", "lat": 0}, 422, "lon"), ({"lat": 0}, 422, "lon"),
    ({"lon": "nan", "lat": 0}, 422, "lon"),
    ({"lon": 0, "lat": 0, "limit": 1001}, 422, "limit"),
    ({"lon": 0, "lat": 0, "limit": 0}, 422, "limit"),
    ({"lon": 0, "lat": 0, "bbox": "1,2,3,4"}, 400, "bbox"),
    ({"lon": 0, "lat": 0, "start": "2014-06-31"}, 400, "start"),
    ({"lon": 0, "lat": 0, "start": "2015-01-01", "end": "2014-01-01"}, 400, "start"),
])
def test_tiles_at_errors_are_one_line_4xx(client, params, status, word):
    r = client.get("/tiles/at", params=params)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert word in detail and "\n" not in detail


def test_tiles_at_edges_of_cells_and_of_the_world():
    """The footprint test itself, on a table made by hand: edges shared by two cells go to
    the east / south one; the world's east and south edges are inside; undated last."""
    import mercantile

    from indexer.store.layout import TILE_SCHEMA
    from indexer.store.tiles import Filters, TileTable
    from search.regions import tiles_at

    cells = [(1, 0, 0, 2010), (1, 1, 0, 2012), (1, 1, 0, None), (1, 1, 0, 2012),
             (1, 0, 1, 2010), (1, 1, 1, 2010), (0, 0, 0, None)]
    rows = []
    for i, (z, x, y, year) in enumerate(cells):
        b = mercantile.bounds(x, y, z)
        rows.append({"id": i, "z": z, "x": x, "y": y, "west": b.west, "south": b.south,
                     "east": b.east, "north": b.north, "source": "/a.tif", "source_key": "a",
                     "acquired": datetime(year, 1, 1, tzinfo=UTC) if year else None,
                     "sensor": "s", "gsd_m": 1.0, "native_gsd_m": 1.0, "nodata_fraction": 0.0})
    tiles = TileTable.from_table(pa.Table.from_pylist(rows, schema=TILE_SCHEMA), len(rows))
    bottom = mercantile.bounds(0, 1, 1).south
    top = mercantile.bounds(0, 0, 1).north
    for (lon, lat), want in [((90, 45), [3, 1, 6, 2]), ((0, 45), [3, 1, 6, 2]),
                             ((180, 45), [3, 1, 6, 2]), ((-90, 0), [4, 6]), ((0, 0), [5, 6]),
                             ((-180, bottom), [4, 6]), ((-180, top), [0, 6]), ((0, 89), [])]:
        got = tiles_at(tiles, lon, lat, Filters()).tolist()
        assert got == want, (lon, lat)
    since = datetime(2011, 1, 1, tzinfo=UTC)
    assert tiles_at(tiles, 90, 45, Filters(start=since)).tolist() == [3, 1]
    assert tiles_at(tiles, 90, 45, Filters(start=since, undated=True)).tolist() == [3, 1, 6, 2]


def _score_map_tile(engine):
    """A map tile one zoom above four NAIP cells: each a 128 px quadrant."""
    t = engine.snapshot.tiles(["z", "x", "y", "sensor"]).to_pylist()
    cells = {(r["z"], r["x"], r["y"]) for r in t if r["sensor"] == "NAIP"}
    return next((z - 1, x // 2, y // 2) for z, x, y in sorted(cells) if x % 2 == y % 2 == 0
                and {(z, x + 1, y), (z, x, y + 1), (z, x + 1, y + 1)} <= cells)


def test_score_overlay_threshold_hides_the_tiles_below_it(client, engine):
    """With `threshold`, a quadrant (one index cell, its best date wins) is drawn iff its
    best score reaches the threshold, in the same colour as without one."""
    mz, mx, my = _score_map_tile(engine)
    full = client.get("/search/scores", params={"q": "a quarry", "columns": "full"}).json()
    best: dict = {}
    for z, x, y, sc in zip(full["z"], full["x"], full["y"], full["score"], strict=True):
        if z == mz + 1 and (x // 2, y // 2) == (mx, my):
            best[(x % 2, y % 2)] = max(best.get((x % 2, y % 2), -2.0), sc)
    assert len(best) == 4 and len(set(best.values())) == 4
    lo, hi = sorted(best.values())[1:3]
    threshold = (lo + hi) / 2
    url = f"/map/scores/{mz}/{mx}/{my}.png"
    plain = _png(client.get(url, params={"q": "a quarry"}))
    cut = _png(client.get(url, params={"q": "a quarry", "threshold": threshold}))
    for (qx, qy), sc in best.items():
        quad = np.s_[qy * 128:(qy + 1) * 128, qx * 128:(qx + 1) * 128]
        assert (plain[quad][..., 3] > 0).all()
        if sc >= threshold:
            np.testing.assert_array_equal(cut[quad], plain[quad])
        else:
            assert cut[quad][..., 3].max() == 0
    on = np.count_nonzero(cut[..., 3])
    assert 0 < on < np.count_nonzero(plain[..., 3])
    # above every score: nothing drawn; below every score: as without a threshold
    assert _png(client.get(url, params={"q": "a quarry", "threshold": 1}))[..., 3].max() == 0
    np.testing.assert_array_equal(
        _png(client.get(url, params={"q": "a quarry", "threshold": -1})), plain)
    assert client.get(url, params={"q": "a quarry", "threshold": 1.5}).status_code == 422


def test_score_legend_is_the_range_the_score_tiles_use(client, engine):
    from search.mosaic import RAMP

    mz, mx, my = _score_map_tile(engine)
    for params in ({"q": "a quarry"}, {"q": "farmland", "end": "2010-01-01"},
                   {"q": "farmland", "sensor": "NAIP", "start": "2014-01-01"}):
        r = client.get("/map/scores/legend", params=params)
        assert r.status_code == 200, r.text
        leg = r.json()
        assert set(leg) == {"vmin", "vmax", "ramp", "histogram", "count"}
        tile = client.get(f"/map/scores/{mz}/{mx}/{my}.png", params=params)
        assert tile.status_code == 200
        assert f"{leg['vmin']:.6f}" == tile.headers["X-Satfind-Vmin"]
        assert f"{leg['vmax']:.6f}" == tile.headers["X-Satfind-Vmax"]
        scores = client.get("/search/scores", params=params).json()["score"]
        assert leg["count"] == len(scores) == sum(leg["histogram"]["counts"]) > 0
        assert leg["vmin"] == pytest.approx(float(np.median(scores)), abs=1e-6)
        assert leg["vmax"] == pytest.approx(max(scores), abs=1e-6)
        edges = leg["histogram"]["edges"]
        assert len(edges) == len(leg["histogram"]["counts"]) + 1 == 21
        assert edges[0] == pytest.approx(min(scores)) and edges[-1] == pytest.approx(
            max(scores))
        assert counts_of(scores, edges) == leg["histogram"]["counts"]
    assert len(leg["ramp"]) == 9
    assert leg["ramp"][0] == "#{:02x}{:02x}{:02x}".format(*RAMP[0])
    assert leg["ramp"][-1] == "#{:02x}{:02x}{:02x}".format(*RAMP[255])
    one = client.get("/map/scores/legend", params={"q": "farmland", "end": "2010-01-01"})
    assert one.json()["count"] < client.get("/map/scores/legend", params={
        "q": "farmland"}).json()["count"]
    assert client.get("/map/scores/legend").status_code == 400
    assert client.get("/map/scores/legend", params={"q": "x", "vmin": 0}).status_code == 400


def counts_of(values, edges) -> list[int]:
    """Brute-force histogram: bins [a, b), the last one [a, b]."""
    out = [0] * (len(edges) - 1)
    for v in values:
        i = next(k for k in range(len(out)) if v < edges[k + 1] or k == len(out) - 1)
        out[i] += 1
    return out


def test_label_sets_survive_restarts_and_unrelated_indexing(tmp_path, shared_geotiff,
                                                            settings, encoder):
    idx = tmp_path / "idx"
    IndexJob(idx, settings, encoder, progress=False, log=lambda m: None).run(
        [str(shared_geotiff / "naip_nd_20090818.tif")])
    eng = SearchEngine(idx, ServeConfig(settings), encoder=encoder)
    ids = eng.snapshot.tiles(["id"])["id"].to_pylist()
    with TestClient(create_app(eng)) as c:
        r = c.post("/labels", json={"name": "fields", "positives": ids[:3],
                                    "negatives": ids[10:12],
                                    "points": [{"lon": -99.15, "lat": 47.02}]})
        assert r.status_code == 200, r.text
        first = r.json()
        assert first["positives"][:3] == sorted(ids[:3]) or set(ids[:3]) <= set(
            first["positives"])
        assert c.get("/labels").json()["label_sets"][0]["name"] == "fields"
        assert c.post("/labels", json={"name": "../x", "positives": [ids[0]]}).status_code == 422
        assert c.post("/labels", json={"name": "a", "positives": [10**9]}).status_code == 404
        assert c.get("/labels/nope").status_code == 404
    # another raster indexed into the same index: existing ids keep their tiles
    before = eng.snapshot.tiles(["id", "z", "x", "y", "source"]).to_pylist()
    IndexJob(idx, settings, encoder, progress=False, log=lambda m: None).run(
        [str(shared_geotiff / "haiti_rgbn_5m.tif")])
    eng2 = SearchEngine(idx, ServeConfig(settings), encoder=encoder)  # a restarted server
    after = {r["id"]: r for r in eng2.snapshot.tiles(["id", "z", "x", "y", "source"])
             .to_pylist()}
    assert all(after[r["id"]] == r for r in before)
    with TestClient(create_app(eng2)) as c:
        again = c.get("/labels/fields").json()
        assert again == {**first, "missing": []}
        gj = c.get("/labels/fields", params={"format": "geojson"}).json()
        labels = {f["id"]: f["properties"]["label"] for f in gj["features"]}
        assert {i for i, v in labels.items() if v == 1} == set(first["positives"])
        pqt = pq.read_table(io.BytesIO(c.get("/labels/fields",
                                             params={"format": "parquet"}).content))
        assert pqt.num_rows == len(labels)
        # a query refined by the label set
        r = c.get("/search/scores", params={"labels": "fields", "bbox": NAIP_BBOX})
        assert r.status_code == 200 and r.json()["count"] > 0
        assert c.delete("/labels/fields").status_code == 200
        assert c.get("/labels/fields").status_code == 404


def test_the_classifier_separates_held_out_blocks_of_a_separable_set():
    """Synthetic vectors: positives and negatives apart along one direction, spread over
    many spatial blocks. Held-out folds are ranked right and the report says so."""
    rng = np.random.default_rng(0)
    n, d = 400, 32
    y = (np.arange(n) % 2).astype(float)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += np.where(y > 0, 2.5, -2.5)
    z = np.full(n, 16)
    cx, cy = rng.integers(0, 4000, n), rng.integers(0, 4000, n)
    report = classifier.cross_validate(x, y, classifier.blocks(z, cx, cy))
    assert report.folds == classifier.FOLDS
    assert report.auc > 0.99 and report.precision > 0.95 and report.recall > 0.95
    # no signal: the report says so (near 0.5), it does not invent one
    noise = classifier.cross_validate(rng.normal(size=(n, d)), y,
                                      classifier.blocks(z, cx, cy))
    assert abs(noise.auc - 0.5) < 0.15


def test_low_zooms_built_from_children_equal_direct_drawing(real_index, settings, encoder,
                                                           monkeypatch):
    """The pyramid path (a map tile composed of its four children) and direct drawing of
    the thumbnails give the same picture: equal within rounding except where a newer
    tile's nodata edge meets an older tile (compositing before or after downsampling: a
    few % of pixels on the shared NAIP pair, whose 2014 footprint has diagonal edges)."""
    from search import mosaic

    direct = SearchEngine(real_index[0], ServeConfig(settings), encoder=encoder)
    newest = _newest_per_cell(direct)
    (z, x, y) = next(iter(newest))
    urls = [f"/map/{z - k}/{x >> k}/{y >> k}.png" for k in (2, 3, 4)]
    with TestClient(create_app(direct)) as c:
        want = [_png(c.get(u)) for u in urls]
    monkeypatch.setattr(mosaic, "DIRECT_MAX", 0)  # always from the children
    with TestClient(create_app(direct)) as c:
        got = [_png(c.get(u)) for u in urls]
    for a, b in zip(want, got, strict=True):
        assert a[..., 3].max() > 0
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.mean() < 1.0 and (diff.max(axis=2) > 2).mean() < 0.05


def test_the_classifier_route_ranks_the_archive(tmp_path, real_index, settings, encoder):
    shutil.copytree(real_index[0], tmp_path / "idx")  # it writes a label set
    engine = SearchEngine(tmp_path / "idx", ServeConfig(settings), encoder=encoder)
    client = TestClient(create_app(engine))
    rows = engine.snapshot.tiles(["id", "source"]).to_pylist()
    naip = [r["id"] for r in rows if "naip" in r["source"]]
    other = [r["id"] for r in rows if "landsat" in r["source"] or "korea" in r["source"]]
    assert client.post("/labels", json={"name": "naip", "positives": naip[::9],
                                        "negatives": other[::3], "replace": True}
                       ).status_code == 200
    r = client.get("/search/classifier", params={"labels": "naip", "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cv"]["labels"] == len(naip[::9]) + len(other[::3])
    assert len(body["results"]) == 10
    probs = [x["probability"] for x in body["results"]]
    assert probs == sorted(probs, reverse=True)
    assert client.get("/search/classifier", params={"labels": "nope"}).status_code == 404


def test_change_search_ranks_the_new_bright_field_first(tmp_path, settings, encoder):
    """Two dates of one synthetic scene; in the second a bright field appears inside one
    tile (planted at the centre of an indexed tile of the first date)."""
    import rasterio
    from rasterio.warp import transform as warp_transform

    rng = np.random.default_rng(5)
    base = rng.integers(20, 120, (3, 256, 256)).astype(np.uint8)
    kw = dict(lon=11.88, lat=43.46, size=256, res=5.0)
    first = make_raster(tmp_path / "arch" / "scene_20200601.tif", data=base, **kw)
    job = IndexJob(tmp_path / "idx", settings, encoder, progress=False, log=lambda m: None)
    job.run([str(first)])
    eng = SearchEngine(tmp_path / "idx", ServeConfig(settings), encoder=encoder)
    t = eng.snapshot.tiles(["west", "south", "east", "north"]).to_pylist()
    mid = t[len(t) // 2]
    lon, lat = (mid["west"] + mid["east"]) / 2, (mid["south"] + mid["north"]) / 2
    with rasterio.open(first) as src:
        (x,), (y,) = warp_transform("EPSG:4326", src.crs, [lon], [lat])
        row, col = src.index(x, y)
    later = base.copy()
    later[:, row - 8:row + 8, col - 8:col + 8] = 250  # 80 m: well inside a tile
    make_raster(tmp_path / "arch" / "scene_20210601.tif", data=later, **kw)
    IndexJob(tmp_path / "idx", settings, encoder, progress=False, log=lambda m: None).run(
        [str(tmp_path / "arch")])
    eng = SearchEngine(tmp_path / "idx", ServeConfig(settings), encoder=encoder)
    t = eng.snapshot.tiles(["id", "acquired"]).to_pylist()
    later = [r["id"] for r in t if r["acquired"].year == 2021]
    # the bright tile: the 2021 tile least like its 2020 self
    with TestClient(create_app(eng)) as c:
        dist = {i: c.get(f"/tiles/{i}/changes").json()["acquisitions"][-1]
                ["distance_to_previous"] for i in later}
        bright = max(dist, key=dist.get)
        unchanged = {i for i, d in dist.items() if d < 1e-4}
        assert dist[bright] > 5e-4 and len(unchanged) == len(dist) - 1  # only that tile
        r = c.get("/search/change", params={
            "tile": bright, "before_start": "2020-01-01", "before_end": "2020-12-31",
            "after_start": "2021-01-01", "after_end": "2021-12-31", "k": 5})
        assert r.status_code == 200, r.text
        rows = r.json()
        assert rows["id"][0] == bright and rows["delta"][0] > 0
        assert rows["score"][0] == pytest.approx(1.0, abs=2e-3)
        r = c.get("/search/change", params={
            "tile": bright, "before_start": "2020-01-01", "before_end": "2020-12-31",
            "after_start": "2021-01-01", "after_end": "2021-12-31", "k": 200})
        deltas = dict(zip(r.json()["id"], r.json()["delta"], strict=True))
        assert set(deltas) == set(dist)  # every place indexed at both dates
        assert all(abs(deltas[i]) < 1e-4 for i in unchanged)
        hist = c.get(f"/tiles/{bright}/changes", params={"q": "a bright field"}).json()
        assert [a["acquired"][:4] for a in hist["acquisitions"]] == ["2020", "2021"]
        assert all(a["score"] is not None for a in hist["acquisitions"])
        bad = c.get("/search/change", params={
            "q": "x", "before_start": "2021-01-01", "before_end": "2021-12-31",
            "after_start": "2020-01-01", "after_end": "2020-12-31"})
        assert bad.status_code == 400 and "before" in bad.json()["detail"]


def test_where_map_is_aligned_with_the_tile(client, engine):
    tid = next(iter(_newest_per_cell(engine).values()))
    tile = client.get(f"/tiles/{tid}").json()
    body = client.get(f"/tiles/{tid}/where.json", params={"q": "a river"}).json()
    g = np.asarray(body["grid"])
    assert g.shape == (4, 4)  # satfind-tiny: 64 px / 16 px patches
    w, s, e, n = tile["bounds"]
    assert w <= body["peak"]["lon"] <= e and s <= body["peak"]["lat"] <= n
    assert body["peak"]["score"] == pytest.approx(g.max(), abs=1e-5)
    assert body["pixels"] == "source"
    r = client.get(f"/tiles/{tid}/where.png", params={"q": "a river"})
    assert _png(r).shape == (128, 128, 4) and r.headers["X-Satfind-Pixels"] == "source"


def test_where_map_falls_back_to_the_thumbnail(tmp_path, settings, encoder):
    make_raster(tmp_path / "a" / "s.tif", size=128)
    IndexJob(tmp_path / "idx", settings, encoder, progress=False, log=lambda m: None).run(
        [str(tmp_path / "a")])
    shutil.rmtree(tmp_path / "a")  # the source is gone: the thumbnail is all there is
    eng = SearchEngine(tmp_path / "idx", ServeConfig(settings), encoder=encoder)
    tid = eng.snapshot.tiles(["id"])["id"][0].as_py()
    with TestClient(create_app(eng)) as c:
        r = c.get(f"/tiles/{tid}/where.png", params={"tile": tid})
        assert r.status_code == 200 and r.headers["X-Satfind-Pixels"] == "thumbnail"


def test_region_scores_for_an_uploaded_image(client, engine):
    import base64

    ids = engine.snapshot.tiles(["id"])["id"].to_pylist()
    tid = ids[len(ids) // 3]
    tile = client.get(f"/tiles/{tid}").json()
    jpeg = client.get(f"/tiles/{tid}/thumbnail.jpg").content
    w, s, e, n = tile["bounds"]
    pad = 0.01
    r = client.post("/search/scores", json={
        "image_base64": base64.b64encode(jpeg).decode(), "bbox": [w - pad, s - pad, e + pad,
                                                                  n + pad]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"][int(np.argmax(body["score"]))] == tid
    assert body["satfind"]["query"]["image"] is True
    for bad, status in (({"text": "x", "tile_id": 1}, 400), ({}, 400),
                        ({"image_base64": "!!"}, 400), ({"tile_id": "5"}, 422)):
        r = client.post("/search/scores", json=bad)
        assert r.status_code == status and r.json()["detail"], (bad, r.text)


def test_scores_of_any_id_order_equal_the_stored_vectors(engine):
    """score_ids reads runs of consecutive ids as one slice: ids in any order (a run's ends
    one length apart but shuffled inside) get their own vectors."""
    from search.regions import score_ids

    snap = engine.snapshot
    v = snap.get_vectors([5])[0]
    for ids in ([0, 2, 1, 3], [4, 6, 5, 7], [0, 1, 2, 3], [7, 5, 6, 4, 8], [9],
                list(range(40, 0, -1))):
        ids = np.asarray(ids, dtype=np.int64)
        np.testing.assert_allclose(score_ids(snap, v, ids), snap.get_vectors(ids) @ v,
                                   atol=1e-6)


def test_results_export_as_files_with_absolute_thumbnail_urls(real_index, settings, encoder):
    from search.settings import ApiSettings

    cfg = ServeConfig(settings, api=ApiSettings(public_url="https://maps.example.org/api/"))
    eng = SearchEngine(real_index[0], cfg, encoder=encoder)
    with TestClient(create_app(eng)) as c:
        want = c.get("/search", params={"q": "farmland", "k": 9}).json()["results"]
        r = c.get("/search", params={"q": "farmland", "k": 9, "format": "parquet"})
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "application/vnd.apache.parquet")
        t = pq.read_table(io.BytesIO(r.content))
        assert t["id"].to_pylist() == [x["id"] for x in want]
        np.testing.assert_allclose(t["score"].to_pylist(), [x["score"] for x in want],
                                   atol=1e-6)
        assert t["thumbnail_url"][0].as_py() == (
            f"https://maps.example.org/api/tiles/{want[0]['id']}/thumbnail.jpg")
        meta = json.loads(t.schema.metadata[b"satfind"])
        assert meta["query"]["text"] == "farmland" and meta["query"]["k"] == 9
        assert "geometry" in t.column_names
        csv = c.get("/search", params={"q": "farmland", "k": 3, "format": "csv"}).text
        assert csv.startswith("# query:") and "https://maps.example.org/api/tiles/" in csv
        arrow = pa.ipc.open_stream(c.post("/search", json={
            "text": "farmland", "k": 4, "format": "arrow"}).content).read_all()
        assert arrow.num_rows == 4


def test_a_polygon_labels_the_newest_tile_of_every_place_inside(tmp_path, real_index, settings,
                                                               encoder):
    from search.http.routes_labels import inside

    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], float)
    pts = np.array([[1, 1], [3, 1], [0.5, 1.9], [-0.1, 1], [1.99, 0.01]])
    assert inside(pts[:, 0], pts[:, 1], square).tolist() == [True, False, True, False, True]
    shutil.copytree(real_index[0], tmp_path / "idx")
    shutil.rmtree(tmp_path / "idx" / "labels", ignore_errors=True)
    eng = SearchEngine(tmp_path / "idx", ServeConfig(settings), encoder=encoder)
    w, s, e, n = (float(v) for v in NAIP_BBOX.split(","))
    ring = [[w, s], [e, s], [e, n], [w, n]]
    t = eng.snapshot.tiles(["id", "west", "south", "east", "north", "acquired"]).to_pylist()
    inner = [r for r in t if w < (r["west"] + r["east"]) / 2 < e
             and s < (r["south"] + r["north"]) / 2 < n]
    newest = {}
    for r in sorted(inner, key=lambda r: (r["acquired"], r["id"])):
        newest[((r["west"] + r["east"]) / 2, (r["south"] + r["north"]) / 2)] = r["id"]
    with TestClient(create_app(eng)) as c:
        r = c.post("/labels", json={"name": "naip", "polygons": [{"coordinates": ring}]})
        assert r.status_code == 200, r.text
        assert r.json()["positives"] == sorted(newest.values()) and len(newest) > 20
        r = c.post("/labels", json={"name": "x", "polygons": [{"coordinates": [
            [0, 0], [0.001, 0], [0.001, 0.001]]}]})
        assert r.status_code == 404 and "polygon" in r.json()["detail"]


@pytest.mark.parametrize("start, end", [("2014-01-01", None), (None, "2010-01-01"),
                                        ("2009-01-01", "2014-12-31")])
def test_undated_tiles_join_a_time_filter_when_asked(client, engine, start, end):
    """`undated=true`: tiles without a date pass a start/end filter too; the engine's mask
    and the SQL statement of the filter (DuckDB over the Parquet parts) agree."""
    from indexer.store.tiles import Filters
    from search.http.params import make_filters
    from tests.helpers import snapshot_sql

    snap = engine.snapshot
    stats = client.get("/stats").json()
    for undated in (False, True):
        f = make_filters(None, start, end, [], [], undated)
        where, params = f.sql()
        want = set(snapshot_sql(snap, f"SELECT id FROM tiles WHERE {where}", params)["id"]
                   .to_pylist())
        got = set(np.flatnonzero(engine.loaded.tiles.mask(f)).tolist())
        assert got == want
        if undated:
            dated = set(np.flatnonzero(engine.loaded.tiles.mask(
                make_filters(None, start, end, [], []))).tolist())
            assert len(got - dated) == stats["undated"] > 0
    params = {"q": "farmland", "k": 200, "start": start or "", "end": end or ""}
    plain = client.get("/search", params=params).json()["results"]
    more = client.get("/search", params={**params, "undated": True}).json()["results"]
    assert all(r["acquired"] for r in plain)
    assert any(r["acquired"] is None for r in more)
    assert {r["id"] for r in more if r["acquired"]} <= {r["id"] for r in plain}
    assert Filters(undated=True).active is False  # on its own it filters nothing
