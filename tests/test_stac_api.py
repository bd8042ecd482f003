"""`--stac-api`: a real STAC API (`rustac serve`, in-memory backend) on 127.0.0.1 whose items
point at COGs on a real nginx; collection / bbox / datetime select exactly the expected
items, paging with a page smaller than the result, max items, and bad searches in one line."""

from __future__ import annotations

import pytest

from indexer.rasters import remote
from indexer.rasters.stac_api import StacSearch, parse_bbox, search_arguments, search_sources
from indexer.store.snapshot import IndexSnapshot
from tests.conftest import run_cli, run_clis
from tests.helpers import OFFLINE_CONFIG, SHARED_GEOTIFF
from tests.servers import Nginx, StacApi, free_port, make_cogs, nginx_binary, rustac_binary
from tests.test_remote import _index

pytestmark = [
    pytest.mark.skipif(nginx_binary() is None,
                       reason="Debian's nginx is not installed (.ci/run installs it)"),
    pytest.mark.skipif(rustac_binary() is None,
                       reason="rustac (the test extra) is not installed: no STAC API server"),
    pytest.mark.skipif(not SHARED_GEOTIFF.is_dir(),
                       reason="../shared/data/geotiff is absent (no real rasters to serve)"),
]

# (item id, collection, datetime, file, bbox): NAIP (North Dakota), Korea, Bahamas.
ND = (-99.17, 47.0, -99.13, 47.04)
ITEMS = [
    ("nd-2023-06", "naip", "2023-06-15T17:00:00Z", "naip_2009_cog.tif", ND),
    ("nd-2023-07", "naip", "2023-07-15T17:00:00Z", "korea_cog.tif", ND),
    ("nd-2023-08", "naip", "2023-08-15T17:00:00Z", "korea_flat.tif", ND),
    ("nd-2022-07", "naip", "2022-07-15T17:00:00Z", "naip_2009_cog.tif", ND),
    ("bahamas-2023-07", "naip", "2023-07-10T15:00:00Z", "bahamas_cog.tif",
     (-78.9, 23.0, -76.4, 25.2)),
    ("other-2023-07", "landsat", "2023-07-20T15:00:00Z", "bahamas_cog.tif", ND),
]


def _item(item_id, collection, when, name, bbox, base):
    w, s, e, n = bbox
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
        "bbox": [w, s, e, n],
        "geometry": {"type": "Polygon",
                     "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": {"datetime": when, "platform": f"test-{collection}"},
        "links": [],
        "assets": {
            "thumbnail": {"href": f"{base}/thumb-{item_id}.jpg", "type": "image/jpeg",
                          "roles": ["thumbnail"]},
            "visual": {"href": f"{base}/{name}",
                       "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["visual"]},
        },
    }


def _collection(cid):
    return {"type": "Collection", "stac_version": "1.0.0", "id": cid, "description": cid,
            "license": "MIT", "links": [],
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                       "temporal": {"interval": [[None, None]]}}}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = make_cogs(tmp_path_factory.mktemp("www"))
    with Nginx(root, tmp_path_factory.mktemp("nginx")) as web:
        items = [_item(*row, web.url) for row in ITEMS]
        with StacApi([_collection("naip"), _collection("landsat")], items,
                     tmp_path_factory.mktemp("stac")) as stac:
            yield stac, web


def test_search_selects_exactly_the_expected_items_across_pages(api, settings):
    stac, web = api
    search = StacSearch(stac.url, collections=("naip",), bbox=parse_bbox("-99.2,46.9,-99.0,47.1"),
                        datetime="2023-06-01/2023-08-31", page_size=1)
    sources, problems = search_sources(search, settings.discovery)
    assert problems == []
    # Three items over three pages of one; not the 2022 one, not Bahamas, not landsat.
    assert sorted(s.item_id for s in sources) == ["nd-2023-06", "nd-2023-07", "nd-2023-08"]
    from pystac_client import Client

    pages = Client.open(stac.url).search(collections=["naip"], bbox=list(search.bbox),
                                         datetime=search.datetime, limit=1).pages_as_dicts()
    assert [len(p["features"]) for p in pages] == [1, 1, 1]  # the server does page
    by_id = {s.item_id: s for s in sources}
    assert by_id["nd-2023-07"].path == f"{web.url}/korea_cog.tif"  # the visual asset
    assert by_id["nd-2023-06"].acquired.isoformat() == "2023-06-15T17:00:00+00:00"
    assert by_id["nd-2023-06"].sensor == "test-naip"
    capped = StacSearch(stac.url, collections=("naip",), max_items=2, page_size=1)
    assert len(search_sources(capped, settings.discovery)[0]) == 2


def test_stac_api_job_indexes_the_items_once(tmp_path, api, settings, encoder):
    stac, web = api
    search = StacSearch(stac.url, collections=("naip",), bbox=(-99.2, 46.9, -99.0, 47.1),
                        datetime="2023-06-01/2023-08-31", page_size=2)
    report = _index(tmp_path / "idx", settings, encoder, [], search=search)
    assert report.problems == [] and report.rasters_indexed == 3
    snap = IndexSnapshot.open(tmp_path / "idx")
    assert sorted(e.item_id for e in snap.sources.values()) == [
        "nd-2023-06", "nd-2023-07", "nd-2023-08"]
    assert {e.stac_item for e in snap.sources.values()} == {f"{stac.url}/search"}
    times = set(snap.tiles(["acquired"])["acquired"].to_pylist())
    assert {t.month for t in times} == {6, 7, 8}
    again = _index(tmp_path / "idx", settings, encoder, [], search=search)
    assert again.rasters_unchanged == 3 and again.tiles_written == 0


def test_command_line_search(tmp_path, api):
    stac, web = api
    r = run_cli("--stac-api", stac.url, "--collection", "naip", "--bbox", "-99.2,46.9,-99.0,47.1",
                "--datetime", "2023-07-01/2023-07-31", "--page-size", "1", "--asset", "visual",
                "--index", str(tmp_path / "idx"), "--config", str(OFFLINE_CONFIG), "-q")
    assert r.returncode == 0, r.stderr
    assert "rasters: 1 indexed" in r.stdout
    srcs = IndexSnapshot.open(tmp_path / "idx").sources.values()
    assert [e.item_id for e in srcs] == ["nd-2023-07"]


def test_bad_searches_each_one_line(tmp_path, api, settings):
    stac, web = api
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        (StacSearch(dead), "cannot open the STAC API"),
        (StacSearch(stac.url, collections=("naip",), bbox=(10.0, 10.0, 11.0, 11.0)),
         "the search matched no items (collections=naip bbox=10,10,11,11)"),
        (StacSearch(stac.url, query=("eo:cloud_cover<20",)),
         "--query: this STAC API does not declare the query extension"),
        (StacSearch(stac.url, filter="eo:cloud_cover < 20"),
         "--filter: this STAC API does not declare the filter extension"),
    ]
    for search, why in cases:
        with pytest.raises(remote.InputError) as e:
            search_sources(search, settings.discovery)
        assert why in str(e.value) and "\n" not in str(e.value), str(e.value)
    # An item without the asset asked for is one problem; the other items still count.
    s = settings.discovery.__class__(stac_asset="analytic")
    found, problems = search_sources(StacSearch(stac.url, collections=("landsat",)), s)
    assert found == [] and len(problems) == 1
    assert "STAC item 'other-2023-07' has no asset 'analytic' (has: thumbnail, visual)" in str(
        problems[0])
    # On the command line: exit status 1, one line, no traceback.
    r, bad, bad_bbox = run_clis(  # at once: three processes, three index directories
        ["--stac-api", dead, "--index", str(tmp_path / "i"), "--config", str(OFFLINE_CONFIG),
         "-q"],
        ["--collection", "x", "--index", str(tmp_path / "j")],
        ["--stac-api", stac.url, "--bbox", "1,2,3", "--index", str(tmp_path / "k")])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("skipped")] == [
        f"skipped {dead}: " + r.stderr.split(f"skipped {dead}: ", 1)[1].splitlines()[0]]
    assert bad.returncode == 2 and "--collection needs --stac-api URL" in bad.stderr
    assert bad_bbox.returncode == 2 and "expected four numbers W,S,E,N" in bad_bbox.stderr


def test_query_and_filter_reach_the_request_in_stac_api_form(api):
    """What pystac-client would send for --query / --filter (rustac's memory backend
    declares neither extension, so the request itself is checked, not an answer)."""
    import warnings

    from pystac_client import Client

    stac, _ = api
    client = Client.open(stac.url)
    cases = [
        (StacSearch(stac.url, query=("eo:cloud_cover<20", "eo:cloud_cover >= 2.5",
                                     "platform=test-naip")),
         {"query": {"eo:cloud_cover": {"lt": 20, "gte": 2.5}, "platform": {"eq": "test-naip"}}}),
        (StacSearch(stac.url, filter="eo:cloud_cover < 20"),
         {"filter": "eo:cloud_cover < 20", "filter-lang": "cql2-text"}),
        (StacSearch(stac.url, filter='{"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]}'),
         {"filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]},
          "filter-lang": "cql2-json"}),
    ]
    for search, expected in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DoesNotConformTo: known, see above
            params = client.search(**search_arguments(search)).get_parameters()
        assert {k: params[k] for k in expected} == expected
    with pytest.raises(remote.InputError, match="--filter is not CQL2 JSON"):
        search_arguments(StacSearch(stac.url, filter="{not json"))
    with pytest.raises(remote.InputError, match="expected PROPERTY OP VALUE"):
        search_arguments(StacSearch(stac.url, query=("cloud cover less than 20",)))
