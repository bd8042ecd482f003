"""The explorer's map: a Leaflet component (ui/map/, vendored, offline) and the pure
functions that turn results, filters and the query into its layers, and its replies into
events. The browser fetches imagery and heat-map tiles from the API itself (`public_api`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

FRONTEND = Path(__file__).with_name("map")
HEIGHT = 560


def ring(bounds) -> list[list[float]]:
    """A tile's footprint as Leaflet's [lat, lon] ring."""
    w, s, e, n = bounds
    return [[s, w], [s, e], [n, e], [n, w]]


def fit_bounds(rows: list[dict]) -> list[list[float]] | None:
    """[[south, west], [north, east]] around every footprint, so no result is cut off."""
    if not rows:
        return None
    b = [r["bounds"] for r in rows]
    return [[min(x[1] for x in b), min(x[0] for x in b)],
            [max(x[3] for x in b), max(x[2] for x in b)]]


def result_shapes(results: list[dict], positives=(), negatives=()) -> list[dict]:
    pos, neg = set(positives), set(negatives)
    return [{"id": r["id"], "rank": i + 1, "ring": ring(r["bounds"]),
             "score": f"{r['score']:.3f}", "when": (r.get("acquired") or "")[:10],
             "label": "pos" if r["id"] in pos else "neg" if r["id"] in neg else None}
            for i, r in enumerate(results)]


def labelled_shapes(tiles: dict[int, dict], positives, negatives, shown=()) -> list[dict]:
    """The label set's tiles not already drawn as results (`tiles`: id -> tile record)."""
    skip = set(shown)
    out = []
    for ids, label in ((positives, "pos"), (negatives, "neg")):
        for i in ids:
            if i not in skip and i in tiles:
                out.append({"id": i, "ring": ring(tiles[i]["bounds"]), "label": label})
    return out


def _query_string(params: dict) -> str:
    items = [(k, v) for k, v in params.items() if v not in (None, "", [], False)]
    flat = [(k, x) for k, v in items for x in (v if isinstance(v, list) else [v])]
    return ("?" + urlencode(flat)) if flat else ""


def imagery_url(public_api: str, start=None, end=None, sensors=()) -> str:
    """The archive's own imagery as an XYZ template: PNG, transparent where nothing is
    indexed (a JPEG map tile half-covered by imagery would be half black)."""
    return (f"{public_api.rstrip('/')}/map/{{z}}/{{x}}/{{y}}.png" + _query_string(
        {"start": start, "end": end, "sensor": list(sensors)}))


def heat_url(public_api: str, params: dict, threshold: float | None = None, start=None,
             end=None, sensors=()) -> str:
    return (f"{public_api.rstrip('/')}/map/scores/{{z}}/{{x}}/{{y}}.png" + _query_string(
        {**params, "threshold": None if threshold is None else f"{threshold:.4f}",
         "start": start, "end": end, "sensor": list(sensors)}))


def new_events(value, done: set[str]) -> list[dict]:
    """The map's events not acted on yet (each once), oldest first; marks them done."""
    out = []
    for ev in (value or {}).get("events", []) if isinstance(value, dict) else []:
        seq = ev.get("seq") if isinstance(ev, dict) else None
        if seq and seq not in done:
            done.add(seq)
            out.append(ev)
    return out


def view_to_param(view: dict | None) -> str | None:
    if not view:
        return None
    return f"{view['lat']:.5f},{view['lon']:.5f},{int(view['zoom'])}"


def view_from_param(text: str) -> dict | None:
    """'lat,lon,zoom' from a link, or None when it does not parse."""
    try:
        lat, lon, zoom = (float(v) for v in str(text).split(","))
    except ValueError:
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 0 <= zoom <= 22):
        return None
    return {"lat": lat, "lon": lon, "zoom": int(zoom)}


def bbox_text(bbox) -> str:
    """The area box's text for a drawn / viewed bbox, clamped to valid degrees."""
    w, s, e, n = bbox
    w, e = max(-180.0, w), min(180.0, e)
    s, n = max(-90.0, s), min(90.0, n)
    return f"{w:.5f},{s:.5f},{e:.5f},{n:.5f}"


_component = None


def leaflet_map(key: str, **args):
    """Draw the map; its reply: {"view": ..., "events": [...]}, or None before any."""
    global _component
    if _component is None:
        import streamlit.components.v1 as components

        _component = components.declare_component("satfind_map", path=str(FRONTEND))
    return _component(key=key, default=None, **args)
