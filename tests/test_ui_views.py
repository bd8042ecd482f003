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
    assert views.describe(up) == "Results for “farm” · 👍 1 · 👎 0"


def test_exports_and_map_view():
    gj = views.to_geojson(R)
    assert [f["id"] for f in gj["features"]] == [7, 9]
    assert gj["features"][0]["geometry"]["coordinates"][0][0] == [10.0, 40.0]
    rows = list(csv.DictReader(io.StringIO(views.to_csv(R))))
    assert rows[1]["lat"] == "41.05" and rows[0]["acquired"] == ""
    lon, lat, zoom = views.map_view(R)
    assert (lon, lat) == (11.1, 40.55) and 1 <= zoom <= 18
    assert views.footprints(R)[1]["when"] == "2020-01-01T00:00:00Z"


def test_request_filters_keep_what_is_set():
    assert views.request_filters(None, None, None, []) == {}
    f = views.request_filters((1.0, 2.0, 3.0, 4.0), date(2020, 1, 1), None, ["naip"])
    assert f == {"bbox": [1.0, 2.0, 3.0, 4.0], "start": "2020-01-01", "sensor": ["naip"]}
    assert views.parse_bbox(" ") is None
