"""The explorer's view logic, importable and testable without Streamlit: result exports,
the query the API gets, feedback updates, result captions, the query in the URL."""

from __future__ import annotations

import base64
import csv
import io

from search.client import SatfindClient


def to_geojson(results: list[dict]) -> dict:
    feats = []
    for r in results:
        w, s, e, n = r["bounds"]
        feats.append({"type": "Feature", "id": r["id"],
                      "geometry": {"type": "Polygon",
                                   "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
                      "properties": {k: v for k, v in r.items() if k not in ("bounds",)}})
    return {"type": "FeatureCollection", "features": feats}


def to_csv(results: list[dict]) -> str:
    buf = io.StringIO()
    cols = ["id", "score", "z", "x", "y", "west", "south", "east", "north", "lon", "lat",
            "acquired", "sensor", "source", "gsd_m"]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in results:
        west, south, east, north = r["bounds"]
        w.writerow({"id": r["id"], "score": r["score"], "z": r["z"], "x": r["x"], "y": r["y"],
                    "west": west, "south": south, "east": east, "north": north,
                    "lon": r["centre"][0], "lat": r["centre"][1], "acquired": r["acquired"],
                    "sensor": r["sensor"], "source": r["source"], "gsd_m": r["gsd_m"]})
    return buf.getvalue()


def parse_bbox(text: str) -> tuple[float, float, float, float] | None:
    text = text.strip()
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError("area: give west,south,east,north in degrees")
    return tuple(float(p) for p in parts)  # type: ignore[return-value]


def run_query(c: SatfindClient, q: dict, k: int, filters: dict) -> dict:
    """q: {"kind": "text"|"image"|"similar", ...}, plus positives / negatives."""
    body: dict = {"k": k, **filters}
    if q.get("positives") or q.get("negatives"):
        body.update(positives=q.get("positives", []), negatives=q.get("negatives", []))
        if q["kind"] == "text":
            body["text"] = q["text"]
        elif q["kind"] == "similar":
            body["tile_id"] = q["tile_id"]
        elif q["kind"] == "image":
            body["image_base64"] = base64.b64encode(q["image"]).decode()
        return c.search(**body)
    if q["kind"] == "text":
        return c.search_text(q["text"], k=k, **_client_filters(filters))
    if q["kind"] == "image":
        return c.search_image(q["image"], k=k, **_client_filters(filters))
    return c.similar(q["tile_id"], k=k, **_client_filters(filters))


def rank_with_labels(c: SatfindClient, name: str, k: int, filters: dict) -> dict:
    """The classifier's ranking in the shape of a search answer (score = probability)."""
    import time

    t0 = time.perf_counter()
    f = {key: filters[key] for key in ("bbox", "start", "end") if key in filters}
    res = c.classify(name, k=k, **f)
    took = (time.perf_counter() - t0) * 1000
    rows = []
    for r in res["results"]:
        bounds, centre = _place(r)
        rows.append({"id": r["id"], "score": r["probability"], "bounds": bounds,
                     "centre": centre, "acquired": r.get("acquired"),
                     "sensor": "", "z": r["z"], "x": r["x"], "y": r["y"], "source": "",
                     "gsd_m": None, "label": r.get("label")})
    return {"results": rows, "count": len(rows), "took_ms": took, "cv": res["cv"],
            "generation": res["generation"]}


def query_ref(q: dict) -> dict | None:
    """The query as the API's q / tile / labels parameters (score overlay, where-in-tile,
    change search), or None: an uploaded image cannot be named in a URL, and feedback is
    not part of them."""
    if q.get("kind") == "text":
        return {"q": q["text"]}
    if q.get("kind") == "similar":
        return {"tile": q["tile_id"]}
    if q.get("kind") == "labels":
        return {"labels": q["labels"]}
    return None


def _client_filters(f: dict) -> dict:
    return {k: v for k, v in f.items() if v not in (None, [], "")}


def with_feedback(q: dict, tile_id: int, relevant: bool) -> dict:
    """The query with `tile_id` marked relevant (positive) or not (negative)."""
    mine, other = ("positives", "negatives") if relevant else ("negatives", "positives")
    return {**q, mine: sorted({*q[mine], tile_id}), other: [i for i in q[other] if i != tile_id]}


def describe(q: dict) -> str:
    """'Results for ...' heading of a query, with its feedback counts."""
    what = {"text": lambda: f"“{q['text']}”", "image": lambda: f"image {q.get('name', '')}",
            "similar": lambda: f"more like tile {q['tile_id']}",
            "labels": lambda: f"label set “{q['labels']}” (linear classifier)"}[q["kind"]]()
    fb = (f" · :material/thumb_up: {len(q['positives'])} · :material/thumb_down: "
          f"{len(q['negatives'])}") if (q.get("positives") or q.get("negatives")) else ""
    return f"Results for {what}{fb}"


def request_filters(bbox, start, end, sensors: list[str], undated: bool = False) -> dict:
    """The API filter fields that are set."""
    f = {"bbox": list(bbox) if bbox else None, "start": start.isoformat() if start else None,
         "end": end.isoformat() if end else None, "sensor": sensors,
         "undated": bool(undated and (start or end))}
    return {k: v for k, v in f.items() if v}


# --- the query in the URL ---------------------------------------------------------------
def query_to_params(q: dict, k: int, start, end, sensors: list[str], area: str,
                    undated: bool) -> dict[str, str | list[str]]:
    """The URL query string of the current search (image queries cannot travel in a link:
    only their filters do)."""
    p: dict[str, str | list[str]] = {"k": str(k)}
    if q.get("kind") == "text":
        p["q"] = q["text"]
    elif q.get("kind") == "similar":
        p["tile"] = str(q["tile_id"])
    if q.get("kind") in ("text", "similar"):
        if q.get("positives"):
            p["pos"] = ",".join(str(i) for i in q["positives"])
        if q.get("negatives"):
            p["neg"] = ",".join(str(i) for i in q["negatives"])
    if start or end:
        p["start"], p["end"] = start.isoformat() if start else "", end.isoformat() if end else ""
    if undated:
        p["undated"] = "1"
    if sensors:
        p["sensor"] = list(sensors)
    if area.strip():
        p["area"] = area.strip()
    return p


def _ids(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip().isdigit()]


def state_from_params(params) -> tuple[dict | None, dict]:
    """(query or None, widget values by key) from a URL's query string; values that do not
    parse are ignored, so an edited link never breaks the page."""
    from datetime import date

    widgets: dict = {}
    if str(params.get("k", "")).isdigit():
        widgets["k"] = max(1, min(100, int(params["k"])))
    for key in ("start", "end"):
        try:
            widgets[key] = date.fromisoformat(str(params.get(key, "")))
            widgets["use_dates"] = True
        except ValueError:
            pass
    if params.get("undated") == "1":
        widgets["undated"] = True
    sensors = params.get("sensor")
    if sensors:
        widgets["sensors"] = [sensors] if isinstance(sensors, str) else list(sensors)
    if params.get("area"):
        widgets["area"] = str(params["area"])
    fb = {"positives": _ids(str(params.get("pos", ""))),
          "negatives": _ids(str(params.get("neg", "")))}
    q = None
    if str(params.get("q", "")).strip():
        widgets["text"] = str(params["q"])
        q = {"kind": "text", "text": str(params["q"]).strip(), **fb}
    elif str(params.get("tile", "")).isdigit():
        q = {"kind": "similar", "tile_id": int(params["tile"]), **fb}
    return q, widgets


def _place(r: dict) -> tuple[list[float], list[float]]:
    """(bounds, centre) of a row holding west / south / east / north, as a search result
    gives them."""
    w, s, e, n = r["west"], r["south"], r["east"], r["north"]
    return [w, s, e, n], [(w + e) / 2, (s + n) / 2]


def rows_from_columns(res: dict) -> list[dict]:
    """Columnar JSON (the API's compact default for region, change and label answers) as
    result rows, with bounds and centre like a search result's."""
    ids = res.get("id", [])
    cols = [k for k, v in res.items() if isinstance(v, list) and len(v) == len(ids)]
    rows = []
    for i in range(len(ids)):
        r = {k: res[k][i] for k in cols}
        r["bounds"], r["centre"] = _place(r)
        rows.append(r)
    return rows
