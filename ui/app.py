"""satfind explorer: type a query or drop an image, see matching tiles on a map, refine.

Run with `satfind-ui --api http://127.0.0.1:8000` (or `streamlit run ui/app.py -- --api URL`;
the SATFIND_API environment variable works too). Talks to the API only through
`search.client.SatfindClient`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from datetime import date

import pydeck as pdk
import streamlit as st

from search.client import SatfindClient, SatfindError

DEFAULT_API = "http://127.0.0.1:8000"
COLUMNS = 4


def api_url() -> str:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--api", default=None)
    args, _ = p.parse_known_args()
    return args.api or os.environ.get("SATFIND_API") or DEFAULT_API


@st.cache_resource
def client(url: str) -> SatfindClient:
    return SatfindClient(url, api_key=os.environ.get("SATFIND_API_KEY") or None, timeout=120)


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail(url: str, tile_id: int) -> bytes:
    return client(url).thumbnail(tile_id)


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
            import base64

            body["image_base64"] = base64.b64encode(q["image"]).decode()
        return c.search(**body)
    if q["kind"] == "text":
        return c.search_text(q["text"], k=k, **_client_filters(filters))
    if q["kind"] == "image":
        return c.search_image(q["image"], k=k, **_client_filters(filters))
    return c.similar(q["tile_id"], k=k, **_client_filters(filters))


def _client_filters(f: dict) -> dict:
    return {k: v for k, v in f.items() if v not in (None, [], "")}


def show_map(results: list[dict], tile_url: str) -> None:
    polys = [{"polygon": [[r["bounds"][0], r["bounds"][1]], [r["bounds"][2], r["bounds"][1]],
                          [r["bounds"][2], r["bounds"][3]], [r["bounds"][0], r["bounds"][3]]],
              "id": r["id"], "score": round(r["score"], 3), "when": r["acquired"] or "?"}
             for r in results]
    lons = [r["centre"][0] for r in results]
    lats = [r["centre"][1] for r in results]
    layers = []
    if tile_url:  # a basemap for connected users; offline: footprints on a plain background
        layers.append(pdk.Layer("TileLayer", data=tile_url, min_zoom=0, max_zoom=19,
                                tile_size=256))
    layers.append(pdk.Layer("PolygonLayer", data=polys, get_polygon="polygon",
                            get_fill_color=[230, 80, 30, 90], get_line_color=[230, 80, 30, 255],
                            line_width_min_pixels=2, pickable=True, stroked=True))
    span = max(max(lons) - min(lons), max(lats) - min(lats), 1e-4)
    import math

    zoom = max(1, min(18, math.log2(360 / span) + 0.5))
    st.pydeck_chart(pdk.Deck(
        layers=layers, map_style=None,
        initial_view_state=pdk.ViewState(longitude=sum(lons) / len(lons),
                                         latitude=sum(lats) / len(lats), zoom=zoom),
        tooltip={"text": "tile {id}\nscore {score}\n{when}"}))


def main() -> None:
    st.set_page_config(page_title="satfind", layout="wide")
    url = api_url()
    c = client(url)
    state = st.session_state
    state.setdefault("query", None)

    st.title("satfind")
    try:
        stats = c.stats()
    except SatfindError as e:
        st.error(f"The satfind API is not reachable at {url}: {e}. Start it with "
                 "`satfind-serve --index DIR` (or `satfind-demo --index DIR`).", icon="🚫")
        return
    if stats["tiles"] == 0:
        st.info("The index is empty: add imagery with `satfind-index ARCHIVE --index DIR`.")
        return

    with st.sidebar:
        st.caption(f"{stats['tiles']:,} tiles from {stats['sources']} rasters · "
                   f"encoder {stats['encoder']['architecture']} · {stats['index']['factory']}")
        k = st.slider("results (k)", 1, 100, 12, key="k")
        use_dates = st.checkbox("filter by acquisition date", key="use_dates")
        start = end = None
        if use_dates:
            # Explicit bounds: Streamlit's default allows only +-10 years around the value.
            lo, hi = date(1960, 1, 1), date(date.today().year + 1, 12, 31)
            start = st.date_input("from", value=date(2000, 1, 1), min_value=lo, max_value=hi,
                                  key="start")
            end = st.date_input("to", value=date.today(), min_value=lo, max_value=hi,
                                key="end")
        sensors = st.multiselect("sensor", sorted(stats.get("sensors", {})), key="sensors")
        area = st.text_input("area: west,south,east,north (degrees)", key="area")
        tile_url = st.text_input("basemap tile URL (blank = offline: footprints only)",
                                 value=os.environ.get("SATFIND_TILE_URL", ""), key="tile_url")

    text = st.text_input("Describe what you are looking for", key="text",
                         placeholder="solar farm next to a river")
    upload = st.file_uploader("…or drop an image", type=["png", "jpg", "jpeg", "tif", "tiff"],
                              key="upload")
    go_text, go_image = st.columns(2)
    if go_text.button("Search text", key="search_text", type="primary") and text.strip():
        state.query = {"kind": "text", "text": text.strip(), "positives": [], "negatives": []}
    if go_image.button("Search image", key="search_image") and upload is not None:
        state.query = {"kind": "image", "image": upload.getvalue(), "name": upload.name,
                       "positives": [], "negatives": []}
    q = state.query
    if q is None:
        st.info("Type a query (e.g. *farmland*) or drop an image, then search.")
        return

    try:
        bbox = parse_bbox(area)
    except ValueError as e:
        st.error(str(e))
        return
    filters = {"bbox": list(bbox) if bbox else None,
               "start": start.isoformat() if start else None,
               "end": end.isoformat() if end else None,
               "sensor": sensors}
    what = {"text": lambda: f"“{q['text']}”", "image": lambda: f"image {q.get('name', '')}",
            "similar": lambda: f"more like tile {q['tile_id']}"}[q["kind"]]()
    fb = f" · 👍 {len(q['positives'])} · 👎 {len(q['negatives'])}" if (
        q["positives"] or q["negatives"]) else ""
    st.subheader(f"Results for {what}{fb}")
    try:
        with st.spinner("Searching…"):
            res = run_query(c, q, k, {k_: v for k_, v in filters.items() if v})
    except SatfindError as e:
        st.error(f"Query failed: {e}")
        return
    results = res["results"]
    if not results:
        st.warning("No tiles match this query and these filters: widen the area or dates.")
        return
    st.caption(f"{res['count']} results in {res['took_ms']:.0f} ms (index commit "
               f"{res['generation']})")

    show_map(results, tile_url)
    gj, cs = st.columns(2)
    gj.download_button("Export GeoJSON", json.dumps(to_geojson(results)),
                       file_name="satfind-results.geojson", mime="application/geo+json",
                       key="export_geojson")
    cs.download_button("Export CSV", to_csv(results), file_name="satfind-results.csv",
                       mime="text/csv", key="export_csv")

    for row in range(0, len(results), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, r in zip(cols, results[row:row + COLUMNS], strict=False):
            box = col.container(border=True)
            try:
                box.image(thumbnail(url, r["id"]), width="stretch")
            except SatfindError:
                box.caption("(no thumbnail)")
            when = r["acquired"][:10] if r["acquired"] else "no date"
            box.markdown(f"**{r['score']:.3f}** · {when} · {r['sensor']}  \n"
                         f"{r['centre'][1]:.4f}, {r['centre'][0]:.4f}")
            a, b = box.columns(2)
            if a.button("Relevant", key=f"up_{r['id']}", width="stretch",
                        help="thumbs up: re-run this query with this tile as a positive"):
                q["positives"] = sorted({*q["positives"], r["id"]})
                q["negatives"] = [i for i in q["negatives"] if i != r["id"]]
                st.rerun()
            if b.button("Irrelevant", key=f"down_{r['id']}", width="stretch",
                        help="thumbs down: re-run this query with this tile as a negative"):
                q["negatives"] = sorted({*q["negatives"], r["id"]})
                q["positives"] = [i for i in q["positives"] if i != r["id"]]
                st.rerun()
            if box.button("More like this", key=f"similar_{r['id']}", width="stretch",
                          help="a new query: tiles that look like this one"):
                state.query = {"kind": "similar", "tile_id": r["id"], "positives": [],
                               "negatives": []}
                st.rerun()
            with box.expander("details"):
                st.json(r)


main()
