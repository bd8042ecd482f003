"""The explorer's flows through Streamlit's AppTest, against a real satfind-serve."""

from __future__ import annotations

import re
from datetime import date

import pytest

from search.client import SatfindClient
from tests import chaos
from tests.conftest import OFFLINE_CONFIG, ROOT

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(ROOT / "ui" / "app.py")


@pytest.fixture(scope="module")
def api(real_index):
    port = chaos.free_port()
    proc = chaos.start_server(real_index[0], OFFLINE_CONFIG, port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def _app(monkeypatch, url: str) -> AppTest:
    monkeypatch.setenv("SATFIND_API", url)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def _cards(at: AppTest) -> list[int]:
    """Tile ids of the result cards, in order (each card has a 'More like this' button)."""
    return [int(b.key.split("_")[1]) for b in at.button if (b.key or "").startswith("similar_")]


def _heading(at: AppTest) -> str:
    """The results' heading ('Results for ...')."""
    return next(m.value for m in at.markdown if m.value.startswith("**Results for"))


def _dates(at: AppTest) -> set[str]:
    """The acquisition dates on the result cards ('#rank · score · date · sensor')."""
    return {m.value.split(" · ")[2] for m in at.markdown if re.match(r"#\d+ · \*\*", m.value)}


def _text_search(at: AppTest, text: str, k: int) -> AppTest:
    at.slider(key="k").set_value(k)
    at.text_input(key="text").input(text)
    at.button(key="search_text").click()
    at.run()
    assert not at.exception, at.exception
    return at


def test_text_query_renders_k_cards(monkeypatch, api):
    at = _text_search(_app(monkeypatch, api), "farmland", 6)
    assert len(_cards(at)) == 6
    assert "Results for “farmland”" in _heading(at)
    assert len(at.get("download_button")) == 2  # GeoJSON and CSV export


def test_more_like_this_changes_the_query(monkeypatch, api):
    at = _text_search(_app(monkeypatch, api), "farmland", 5)
    target = _cards(at)[3]
    at.button(key=f"similar_{target}").click()
    at.run()
    assert f"more like tile {target}" in _heading(at)
    assert _cards(at)[0] == target  # the tile itself ranks first
    assert at.text_input(key="text").value == ""  # the box no longer names the old query


def test_thumbs_up_reruns_with_feedback(monkeypatch, api):
    at = _text_search(_app(monkeypatch, api), "farmland", 5)
    target = _cards(at)[4]
    at.button(key=f"up_{target}").click()
    at.run()
    assert ":material/thumb_up: 1" in _heading(at)
    assert target in _cards(at)[:4]


def test_date_filter_narrows(monkeypatch, api):
    at = _text_search(_app(monkeypatch, api), "farmland", 30)
    dates = _dates(at)
    assert len(dates) > 1  # several acquisition dates (and unknown) without a filter
    at.checkbox(key="use_dates").check()
    at.run()
    at.date_input(key="start").set_value(date(2014, 1, 1))
    at.date_input(key="end").set_value(date(2014, 12, 31))
    at.run()
    assert at.date_input(key="start").value == date(2014, 1, 1)
    assert not at.exception
    dates = _dates(at)
    assert dates == {"2014-07-20"} and len(_cards(at)) == 30


def test_the_date_filter_counts_undated_tiles_and_can_include_them(monkeypatch, api):
    from search.client import SatfindClient

    undated = SatfindClient(api).stats()["undated"]
    assert undated > 0  # the shared rasters without a date in their name or tags
    at = _text_search(_app(monkeypatch, api), "farmland", 100)
    at.checkbox(key="use_dates").check()
    at.run()
    at.date_input(key="start").set_value(date(2014, 1, 1))
    at.date_input(key="end").set_value(date(2014, 12, 31))
    at.run()
    assert any(f"{undated:,} of" in c.value and "no acquisition date" in c.value
               for c in at.caption)
    dates = _dates(at)
    assert dates == {"2014-07-20"}
    at.checkbox(key="undated").check()
    at.run()
    assert not at.exception
    dates = _dates(at)
    assert dates == {"2014-07-20", "no date"}


def test_api_down_shows_the_error_state(monkeypatch):
    at = _app(monkeypatch, f"http://127.0.0.1:{chaos.free_port()}")
    assert len(at.error) == 1 and "not reachable" in at.error[0].value
    assert not at.exception


def test_no_results_state(monkeypatch, api):
    at = _app(monkeypatch, api)
    at.text_input(key="area").input("0,0,1,1")  # the Gulf of Guinea: nothing indexed there
    at = _text_search(at, "farmland", 5)
    assert len(at.warning) == 1 and "No tiles match" in at.warning[0].value
    assert _cards(at) == []
    at.text_input(key="area").input("1,2,3")
    at.run()
    assert "west,south,east,north" in at.error[0].value and not at.exception


def test_empty_index_state(monkeypatch, tmp_path, encoder):
    from indexer.config import StoreSettings
    from indexer.store.writer import IndexWriter

    with IndexWriter(tmp_path / "empty", encoder.identity, StoreSettings()) as w:
        w.commit()
    port = chaos.free_port()
    proc = chaos.start_server(tmp_path / "empty", OFFLINE_CONFIG, port)
    try:
        at = _app(monkeypatch, f"http://127.0.0.1:{port}")
        assert len(at.info) == 1 and "index is empty" in at.info[0].value
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_upload_limit_is_the_apis(monkeypatch, api):
    from search.client import SatfindClient
    from ui.cli import streamlit_command, upload_limit_mb

    limit = SatfindClient(api).stats()["limits"]["max_upload_bytes"]
    assert upload_limit_mb(api) == -(-limit // 2**20) == 10  # the default 10 MiB
    cmd = streamlit_command(api, "127.0.0.1", 8501, upload_limit_mb(api))
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == "10"
    assert upload_limit_mb(f"http://127.0.0.1:{chaos.free_port()}") is None  # API down
    at = _app(monkeypatch, api)
    assert at.session_state["max_upload_bytes"] == limit


def test_the_url_carries_the_query_and_a_shared_link_shows_the_same(monkeypatch, api):
    at = _app(monkeypatch, api)
    at.text_input(key="area").input("-99.19,47.0,-99.12,47.04")
    at = _text_search(at, "farmland", 7)
    first = _cards(at)
    assert len(first) == 7
    at.button(key=f"up_{first[2]}").click()  # relevance feedback travels too
    at.run()
    fed = _cards(at)
    link = dict(at.query_params)
    assert link["q"] == "farmland" and link["k"] == "7" and link["pos"] == str(first[2])
    assert link["area"] == "-99.19,47.0,-99.12,47.04"
    # a fresh session opening that link shows the same results
    monkeypatch.setenv("SATFIND_API", api)
    fresh = AppTest.from_file(APP, default_timeout=60)
    fresh.query_params = {k: v for k, v in link.items()}
    fresh.run()
    assert not fresh.exception, fresh.exception
    assert _cards(fresh) == fed
    assert fresh.text_input(key="text").value == "farmland"
    assert fresh.slider(key="k").value == 7
    assert not fresh.warning  # no widget-value clash warnings


def test_an_edited_link_never_breaks_the_page():
    from ui.views import query_to_params, state_from_params

    q, w = state_from_params({"q": "  ", "k": "x", "start": "2014-13-40", "tile": "-3",
                              "pos": "1,a,2", "sensor": "NAIP"})
    assert q is None and w == {"sensors": ["NAIP"]}
    q, w = state_from_params({"tile": "42", "pos": "1,a,2", "k": "500", "end": "2014-12-31"})
    assert q == {"kind": "similar", "tile_id": 42, "positives": [1, 2], "negatives": []}
    assert w["k"] == 100 and w["use_dates"] is True
    back = query_to_params(q, 100, None, date(2014, 12, 31), [], "", False)
    assert state_from_params(back)[0] == q
    assert "q" not in query_to_params({"kind": "image", "image": b"x"}, 5, None, None, [], "",
                                      False)


def test_enter_in_the_query_box_searches(monkeypatch, api):
    at = _app(monkeypatch, api)
    at.slider(key="k").set_value(5)
    at.text_input(key="text").input("farmland")  # typed, then Enter: no button click
    at.run()
    assert not at.exception and len(_cards(at)) == 5
    assert "Results for “farmland”" in _heading(at)


def test_a_click_on_the_map_searches_like_the_tile_there(monkeypatch, api):
    from search.client import SatfindClient

    at = _text_search(_app(monkeypatch, api), "farmland", 5)
    lon, lat = -99.15, 47.0125  # the North Dakota NAIP imagery
    under = SatfindClient(api).tiles_at(lon, lat, limit=1)["results"][0]["id"]
    at.session_state["pending_events"] = [{"type": "click", "lon": lon, "lat": lat,
                                           "seq": "t:1"}]
    at.run()
    assert not at.exception, at.exception
    assert f"more like tile {under}" in _heading(at) and _cards(at)[0] == under
    assert at.query_params["tile"] == str(under) and at.text_input(key="text").value == ""
    # a click where nothing is indexed says so and keeps the query
    at.session_state["pending_events"] = [{"type": "click", "lon": 0.0, "lat": 0.0,
                                           "seq": "t:2"}]
    at.run()
    assert any("No indexed tile" in w.value for w in at.warning)
    assert f"more like tile {under}" in _heading(at)


def test_a_drawn_area_becomes_the_area_filter(monkeypatch, api):
    at = _text_search(_app(monkeypatch, api), "farmland", 5)
    at.session_state["pending_events"] = [{"type": "area", "seq": "t:3",
                                           "bbox": [-99.19, 47.0, -99.12, 47.04]}]
    at.run()
    assert at.text_input(key="area").value == "-99.19000,47.00000,-99.12000,47.04000"
    assert _dates(at) <= {"2014-07-20", "2009-08-18"}  # the North Dakota rasters only


def test_labels_are_kept_by_the_api_ranked_and_shown_after_a_reload(monkeypatch, api):
    from search.client import SatfindClient

    c = SatfindClient(api)
    at = _app_with_link(monkeypatch, api, {"labels": "apptest", "q": "farmland", "k": "6"})
    ids = _cards(at)
    at.button(key=f"up_{ids[0]}").click()
    at.run()
    at.button(key=f"down_{_cards(at)[-1]}").click()
    at.run()
    assert not at.exception, at.exception
    kept = c.labels("apptest")
    assert kept["positives"] == [ids[0]] and len(kept["negatives"]) == 1
    # a new session (a reload) sees the same set; rank the archive with it
    at = _app_with_link(monkeypatch, api, dict(at.query_params))
    assert any("1 relevant · 1 irrelevant" in cap.value for cap in at.caption)
    assert len(at.get("download_button")) == 4  # results GeoJSON/CSV, labels GeoJSON/Parquet
    at.button(key="rank_labels").click()
    at.run()
    assert not at.exception, at.exception
    assert "label set “apptest”" in _heading(at)
    assert any("spatially blocked CV" in cap.value and "precision" in cap.value
               for cap in at.caption)
    assert at.query_params["rank"] == "1" and len(_cards(at)) == 6
    c.delete_labels("apptest")


def test_change_mode_shows_before_and_after(monkeypatch, api):
    at = _app_with_link(monkeypatch, api, {"q": "farmland", "k": "4", "mode": "change",
                                           "before_start": "2009-01-01",
                                           "before_end": "2009-12-31",
                                           "after_start": "2014-01-01",
                                           "after_end": "2014-12-31"})
    assert not at.exception, at.exception
    rows = [m.value for m in at.markdown if "Δ" in m.value]
    assert len(rows) == 4
    befores = [cap.value for cap in at.caption if cap.value.startswith("before · tile")]
    afters = [cap.value for cap in at.caption if cap.value.startswith("after · 2014")]
    assert len(befores) == len(afters) == 4
    assert at.query_params["mode"] == "change"


def _app_with_link(monkeypatch, url: str, link: dict) -> AppTest:
    monkeypatch.setenv("SATFIND_API", url)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params = {k: v for k, v in link.items()}
    at.run()
    assert not at.exception, at.exception
    return at


def test_a_hung_api_is_an_error_in_seconds_and_the_page_recovers(monkeypatch, real_index):
    import os
    import signal
    import time

    port = chaos.free_port()
    proc = chaos.start_server(real_index[0], OFFLINE_CONFIG, port)
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("SATFIND_UI_TIMEOUT", "1")
    # The page's calls have 1 s: a patient client makes the server's first search, and
    # waits out the queue the hang left, so that no call of the page meets either.
    patient = SatfindClient(url, timeout=60)
    try:
        patient.search_text("farmland", k=4)
        at = _text_search(_app(monkeypatch, url), "farmland", 4)
        assert len(_cards(at)) == 4
        os.kill(proc.pid, signal.SIGSTOP)  # hung: connections queue, nothing answers
        try:
            t0 = time.monotonic()
            at.text_input(key="text").input("forest")
            at.run()
            took = time.monotonic() - t0
            assert not at.exception, at.exception
            assert any("did not answer within 1 s" in e.value for e in at.error)
            assert took < 15 and _cards(at) == []  # not the 121 s of before
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        patient.search_text("forest", k=4)
        at.run()  # what the banner's timer does every 2 s in a browser
        assert not at.error and "Results for “forest”" in _heading(at)
        assert len(_cards(at)) == 4
    finally:
        patient.close()
        proc.terminate()
        proc.wait(timeout=30)
