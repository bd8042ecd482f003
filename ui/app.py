"""satfind explorer: type a query or drop an image, see matching tiles on a map, refine.

Run with `satfind-ui --api http://127.0.0.1:8000` (or `streamlit run ui/app.py -- --api URL`;
the SATFIND_API environment variable works too). Talks to the API only through
`search.client.SatfindClient`.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import date

import pydeck as pdk
import streamlit as st

from search.client import SatfindClient, SatfindError
from ui.views import (
    describe,
    footprints,
    map_view,
    parse_bbox,
    query_to_params,
    request_filters,
    run_query,
    state_from_params,
    to_csv,
    to_geojson,
    with_feedback,
)

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


def show_map(results: list[dict], tile_url: str) -> None:
    polys = footprints(results)
    lon, lat, zoom = map_view(results)
    layers = []
    if tile_url:  # a basemap for connected users; offline: footprints on a plain background
        layers.append(pdk.Layer("TileLayer", data=tile_url, min_zoom=0, max_zoom=19,
                                tile_size=256))
    layers.append(pdk.Layer("PolygonLayer", data=polys, get_polygon="polygon",
                            get_fill_color=[230, 80, 30, 90], get_line_color=[230, 80, 30, 255],
                            line_width_min_pixels=2, pickable=True, stroked=True))
    st.pydeck_chart(pdk.Deck(
        layers=layers, map_style=None,
        initial_view_state=pdk.ViewState(longitude=lon, latitude=lat, zoom=zoom),
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
    state["max_upload_bytes"] = stats.get("limits", {}).get("max_upload_bytes")
    if stats["tiles"] == 0:
        st.info("The index is empty: add imagery with `satfind-index ARCHIVE --index DIR`.")
        return

    if not state.get("restored"):  # a shared link: its query and filters, once per session
        state["restored"] = True
        linked, widgets = state_from_params(st.query_params.to_dict() | {
            "sensor": st.query_params.get_all("sensor")})
        for key, value in widgets.items():
            state[key] = value
        if linked is not None:
            state.query = linked
    k, filters_in, tile_url = sidebar(stats)
    q = query_input(state)
    if q is None:
        st.info("Type a query (e.g. *farmland*) or drop an image, then search.")
        return
    start, end, sensors, area, undated = filters_in
    try:
        bbox = parse_bbox(area)
    except ValueError as e:
        st.error(str(e))
        return
    st.query_params.from_dict(query_to_params(q, k, start, end, sensors, area, undated))
    st.subheader(describe(q))
    try:
        with st.spinner("Searching…"):
            res = run_query(c, q, k, request_filters(bbox, start, end, sensors, undated))
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
    exports(results)
    result_grid(url, state, q, results)


def _default(key: str, value) -> dict:
    """`value=` for a widget unless a shared link already put its value in the session
    (Streamlit refuses both)."""
    return {} if key in st.session_state else {"value": value}


def sidebar(stats: dict):
    """k, (start, end, sensors, area, undated) and the basemap URL from the sidebar."""
    with st.sidebar:
        st.caption(f"{stats['tiles']:,} tiles from {stats['sources']} rasters · "
                   f"encoder {stats['encoder']['architecture']} · {stats['index']['factory']}")
        k = st.slider("results (k)", 1, 100, key="k", **_default("k", 12))
        use_dates = st.checkbox("filter by acquisition date", key="use_dates")
        start = end = None
        undated = False
        if use_dates:
            n_undated = int(stats.get("undated", 0))
            if n_undated:
                st.caption(f"{n_undated:,} of {stats['tiles']:,} tiles have no acquisition "
                           "date; a date filter leaves them out unless included here.")
                undated = st.checkbox(f"include the {n_undated:,} undated tiles",
                                      key="undated")
            # Explicit bounds: Streamlit's default allows only +-10 years around the value.
            lo, hi = date(1960, 1, 1), date(date.today().year + 1, 12, 31)
            start = st.date_input("from", min_value=lo, max_value=hi, key="start",
                                  **_default("start", date(2000, 1, 1)))
            end = st.date_input("to", min_value=lo, max_value=hi, key="end",
                                **_default("end", date.today()))
        sensors = st.multiselect("sensor", sorted(stats.get("sensors", {})), key="sensors")
        area = st.text_input("area: west,south,east,north (degrees)", key="area")
        tile_url = st.text_input("basemap tile URL (blank = offline: footprints only)",
                                 value=os.environ.get("SATFIND_TILE_URL", ""), key="tile_url")
    return k, (start, end, sensors, area, undated), tile_url


def _text_entered() -> None:
    """Enter in the query box searches (Streamlit calls this when the text changed)."""
    text = str(st.session_state.get("text", "")).strip()
    if text:
        st.session_state.query = {"kind": "text", "text": text, "positives": [],
                                  "negatives": []}


def query_input(state) -> dict | None:
    """The text box (Enter searches), the image drop and their buttons; the current query."""
    text = st.text_input("Describe what you are looking for", key="text",
                         placeholder="solar farm next to a river", on_change=_text_entered)
    limit = int(st.session_state.get("max_upload_bytes") or 0)
    upload = st.file_uploader("…or drop an image", type=["png", "jpg", "jpeg", "tif", "tiff"],
                              key="upload", help=(f"PNG, JPEG or GeoTIFF, at most "
                                                  f"{limit / 2**20:g} MB (the API's limit)"
                                                  if limit else None))
    if upload is not None and limit and upload.size > limit:
        st.error(f"{upload.name} is {upload.size / 2**20:.1f} MB; the API takes query images "
                 f"up to {limit / 2**20:g} MB.")
        upload = None
    go_text, go_image = st.columns(2)
    if go_text.button("Search text", key="search_text", type="primary") and text.strip():
        state.query = {"kind": "text", "text": text.strip(), "positives": [], "negatives": []}
    if go_image.button("Search image", key="search_image") and upload is not None:
        state.query = {"kind": "image", "image": upload.getvalue(), "name": upload.name,
                       "positives": [], "negatives": []}
    return state.query


def exports(results: list[dict]) -> None:
    gj, cs = st.columns(2)
    gj.download_button("Export GeoJSON", json.dumps(to_geojson(results)),
                       file_name="satfind-results.geojson", mime="application/geo+json",
                       key="export_geojson")
    cs.download_button("Export CSV", to_csv(results), file_name="satfind-results.csv",
                       mime="text/csv", key="export_csv")


def result_grid(url: str, state, q: dict, results: list[dict]) -> None:
    """Thumbnails with score, date, place and the feedback / more-like-this buttons."""
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
                state.query = with_feedback(q, r["id"], relevant=True)
                st.rerun()
            if b.button("Irrelevant", key=f"down_{r['id']}", width="stretch",
                        help="thumbs down: re-run this query with this tile as a negative"):
                state.query = with_feedback(q, r["id"], relevant=False)
                st.rerun()
            if box.button("More like this", key=f"similar_{r['id']}", width="stretch",
                          help="a new query: tiles that look like this one"):
                state.query = {"kind": "similar", "tile_id": r["id"], "positives": [],
                               "negatives": []}
                st.rerun()
            with box.expander("details"):
                st.json(r)


main()
