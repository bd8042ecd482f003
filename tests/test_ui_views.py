"""The explorer's view helpers, without Streamlit."""

from __future__ import annotations

import csv
import io
from datetime import date

from ui import views

R = [{"id": 7, "score": 0.5, "z": 14, "x": 1, "y": 2, "bounds": (10.0, 40.0, 10.2, 40.1),
      "centre": (10.1, 40.05), "acquired": None, "sensor": "s", "source": "/a.tif",
      "gsd_m": 5.0},
     {"id": 9, "score": 0.25, "z": 14, "x": 3, "y": 2, "bounds": (12.0, 41.0, 12.2, 41.1),
      "centre": (12.1, 41.05), "acquired": "2020-01-01T00:00:00Z", "sensor": "s",
      "source": "/b.tif", "gsd_m": 5.0}]


def test_feedback_moves_a_tile_between_positives_and_negatives():
    q = {"kind": "text", "text": "farm", "positives": [], "negatives": [7]}
    up = views.with_feedback(q, 7, relevant=True)
    assert up["positives"] == [7] and up["negatives"] == []
    assert q["negatives"] == [7]  # the old query is left as it was
    assert views.describe(up) == ("Results for “farm” · :material/thumb_up: 1 · "
                                  ":material/thumb_down: 0")


def test_exports():
    gj = views.to_geojson(R)
    assert [f["id"] for f in gj["features"]] == [7, 9]
    assert gj["features"][0]["geometry"]["coordinates"][0][0] == [10.0, 40.0]
    rows = list(csv.DictReader(io.StringIO(views.to_csv(R))))
    assert rows[1]["lat"] == "41.05" and rows[0]["acquired"] == ""
    from ui.mapview import result_shapes

    shapes = result_shapes(R, positives=[9])
    assert [(s["rank"], s["label"], s["when"]) for s in shapes] == [(1, None, ""),
                                                                    (2, "pos", "2020-01-01")]


def test_request_filters_keep_what_is_set():
    assert views.request_filters(None, None, None, []) == {}
    f = views.request_filters((1.0, 2.0, 3.0, 4.0), date(2020, 1, 1), None, ["naip"])
    assert f == {"bbox": [1.0, 2.0, 3.0, 4.0], "start": "2020-01-01", "sensor": ["naip"]}
    assert views.parse_bbox(" ") is None


def test_the_map_frames_every_result_not_the_mean_of_their_centres():
    from ui import mapview

    # two clusters far apart, and a wide tile: the old framing cut footprints off
    rows = [{"bounds": [-99.2, 47.0, -99.1, 47.1]}, {"bounds": [-78.6, 24.0, -78.0, 24.9]},
            {"bounds": [-99.3, 46.9, -99.25, 46.95]}]
    (s, w), (n, e) = mapview.fit_bounds(rows)
    for bw, bs, be, bn in (r["bounds"] for r in rows):
        assert w <= bw and s <= bs and e >= be and n >= bn
    assert (s, w, n, e) == (24.0, -99.3, 47.1, -78.0)
    assert mapview.fit_bounds([]) is None


def test_map_events_are_acted_on_once_each():
    from ui import mapview

    done: set[str] = set()
    value = {"view": None, "events": [{"type": "click", "seq": "a:1"},
                                      {"type": "select", "id": 3, "seq": "a:2"}]}
    assert [e["seq"] for e in mapview.new_events(value, done)] == ["a:1", "a:2"]
    value["events"].append({"type": "area", "bbox": [0, 0, 1, 1], "seq": "a:3"})
    assert [e["seq"] for e in mapview.new_events(value, done)] == ["a:3"]
    assert mapview.new_events(value, done) == []
    assert mapview.new_events(None, done) == [] and mapview.new_events("junk", done) == []


def test_the_view_travels_in_the_link_and_bad_views_are_ignored():
    from ui import mapview

    v = {"lat": 47.0125, "lon": -99.15, "zoom": 14, "bbox": [0, 0, 1, 1]}
    assert mapview.view_from_param(mapview.view_to_param(v)) == {"lat": 47.0125,
                                                                 "lon": -99.15, "zoom": 14}
    for bad in ("", "1,2", "a,b,c", "91,0,3", "0,181,3", "0,0,30"):
        assert mapview.view_from_param(bad) is None
    assert mapview.bbox_text([-200, -95, 10, 20]) == "-180.00000,-90.00000,10.00000,20.00000"


def test_tile_url_templates_keep_the_xyz_slots_and_encode_the_query():
    from ui import mapview

    url = mapview.heat_url("http://h:1/", {"q": "solar farm & river"}, 0.25, "2014-01-01",
                           None, ["NAIP", "Landsat"])
    assert url.startswith("http://h:1/map/scores/{z}/{x}/{y}.png?")
    assert "q=solar+farm+%26+river" in url and "threshold=0.2500" in url
    assert "sensor=NAIP&sensor=Landsat" in url and "end=" not in url
    assert mapview.imagery_url("http://h:1") == "http://h:1/map/{z}/{x}/{y}.png"
    assert views.query_ref({"kind": "image", "image": b"x"}) is None
    assert views.query_ref({"kind": "similar", "tile_id": 7}) == {"tile": 7}


def test_labels_toggle_and_columnar_answers_become_rows():
    from ui.labelling import toggled
    from ui.views import rows_from_columns

    s = {"positives": [1], "negatives": [2]}
    assert toggled(s, 2, relevant=True) == {"positives": [1, 2], "negatives": []}
    assert toggled(s, 1, relevant=True) == {"positives": [], "negatives": [2]}
    assert toggled(s, 3, relevant=False) == {"negatives": [2, 3], "positives": [1]}
    rows = rows_from_columns({"count": 2, "id": [5, 6], "west": [0, 2], "south": [0, 0],
                              "east": [2, 4], "north": [2, 2], "score": [0.5, 0.4],
                              "satfind": {"q": "x"}})
    assert [r["id"] for r in rows] == [5, 6] and rows[1]["bounds"] == [2, 0, 4, 2]
    assert rows[0]["centre"] == [1, 1] and "satfind" not in rows[0]
