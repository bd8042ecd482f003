"""satfind explorer: a map of the archive's own imagery; type a query, drop an image, click
a place or draw an area, label tiles, rank the archive with the labels, see what changed.

Run with `satfind-ui --api http://127.0.0.1:8000` (or `streamlit run ui/app.py -- --api URL`;
the SATFIND_API environment variable works too). Talks to the API only through
`search.client.SatfindClient`; the browser fetches map tiles from the API (`--public-api`).
"""

from __future__ import annotations

import os
import time
from datetime import date

import streamlit as st

from search.client import SatfindClient, SatfindError
from ui import api, cards, labelling, mapview
from ui.api import api_urls, client, timed_out, timeout_s
from ui.views import (
    describe,
    parse_bbox,
    query_ref,
    query_to_params,
    request_filters,
    state_from_params,
)

# Widgets whose values outlive a run that does not draw them (Streamlit forgets those).
KEPT = ("k", "use_dates", "undated", "start", "end", "sensors", "area", "tile_url", "text",
        "label_set", "mode", "heat", "threshold", "direction", "before_start", "before_end",
        "after_start", "after_end")


def api_down(url: str, error: SatfindError) -> None:
    """The outage banner; it checks the API every 2 s and the page comes back by itself."""
    if timed_out(error):
        st.error(f"The satfind API at {url} did not answer within {timeout_s():g} s; this "
                 "page retries by itself.", icon="⏱️")
    else:
        st.error(f"The satfind API is not reachable at {url}: {error}. Start it with "
                 "`satfind-serve --index DIR` (or `satfind-demo --index DIR`); this page "
                 "reconnects by itself.", icon="🚫")

    @st.fragment(run_every=2)
    def watch() -> None:
        try:
            client(url).health()
        except SatfindError:
            st.caption(f"last checked {time.strftime('%H:%M:%S')}")
            return
        st.rerun(scope="app")

    watch()


def failed(error: SatfindError, what: str) -> None:
    """One line for a failed call, with a retry button (a hung API times out in seconds)."""
    if timed_out(error):
        st.error(f"{what}: the API did not answer within {timeout_s():g} s.", icon="⏱️")
    else:
        st.error(f"{what}: {error}")
    st.button("Retry", key="retry")  # a click reruns the page


def main() -> None:
    st.set_page_config(page_title="satfind", layout="wide")
    st.markdown("<style>.block-container{padding-top:2.2rem}</style>", unsafe_allow_html=True)
    url, public = api_urls()
    c = client(url)
    state = st.session_state
    state.setdefault("query", None)
    for key in KEPT:  # a run that stops early (API down) must not drop the filters
        if key in state:
            state[key] = state[key]
    try:
        stats = c.stats()
    except SatfindError as e:
        if e.status is None:
            api_down(url, e)
        else:
            failed(e, "The API's /stats failed")
        return
    state["max_upload_bytes"] = stats.get("limits", {}).get("max_upload_bytes")
    if stats["tiles"] == 0:
        st.info("The index is empty: add imagery with `satfind-index ARCHIVE --index DIR`.")
        return
    restore_link(state)
    apply_map_events(c, state)
    k, filters_in, basemap = sidebar(stats)
    start, end, sensors, area, undated = filters_in
    try:
        bbox = parse_bbox(area)
    except ValueError as e:
        st.error(str(e))
        return
    filters = request_filters(bbox, start, end, sensors, undated)
    name = state.get("label_set") or labelling.DEFAULT_SET
    try:
        labels = labelling.fetch(c, name)
    except SatfindError as e:
        failed(e, "Reading the label set failed")
        return
    mode = st.radio("mode", ["Search", "Change"], horizontal=True, key="mode",
                    label_visibility="collapsed")
    q = query_input(state)
    link = query_to_params(q or {}, k, start, end, sensors, area, undated)
    link.update(labelling.link(name), **mapview_link(state))
    if mode == "Change":
        link["mode"] = "change"
    st.query_params.from_dict(link)
    shown: dict = {"rows": [], "fit_key": None, "heat": None}
    left, right = st.columns([3, 2], gap="small")
    with right:
        if mode == "Change":
            cards.change_panel(c, url, state, q, bbox, sensors, labels, shown)
        elif q is None:
            st.info("Type a query (e.g. *farmland*) and press Enter, drop an image, click a "
                    "place on the map, or rank the archive with a label set.")
        else:
            search_panel(c, url, state, q, k, filters, labels, shown)
    with left:
        map_panel(c, url, public, state, q if mode == "Search" else None, shown, labels, basemap,
                  (start, end, sensors), bbox)
    labelling.sidebar_panel(c, url, state, name, labels)


def restore_link(state) -> None:
    """A shared link's query, filters, label set and view: once per session."""
    if state.get("restored"):
        return
    state["restored"] = True
    params = st.query_params.to_dict() | {"sensor": st.query_params.get_all("sensor")}
    linked, widgets = state_from_params(params)
    for key, value in widgets.items():
        state[key] = value
    if linked is not None:
        state.query = linked
    if params.get("labels"):
        state["label_set"] = str(params["labels"])
        if params.get("rank") == "1":
            state.query = {"kind": "labels", "labels": str(params["labels"]),
                           "positives": [], "negatives": []}
    view = mapview.view_from_param(params.get("view", ""))
    if view:
        state["link_view"] = state["view"] = view
    if params.get("mode") == "change":
        state["mode"] = "Change"
    cards.restore_change(state, params)


def mapview_link(state) -> dict:
    out = {}
    view = mapview.view_to_param(state.get("view"))
    if view:
        out["view"] = view
    q = state.get("query") or {}
    if q.get("kind") == "labels":
        out["rank"] = "1"
    return out


def apply_map_events(c: SatfindClient, state) -> None:
    """Act on what the user did on the map (before the widgets those events change)."""
    for ev in state.pop("pending_events", []):
        if ev["type"] == "click":
            _like_here(c, state, ev["lon"], ev["lat"])
        elif ev["type"] == "select":
            state["selected"] = int(ev["id"])
        elif ev["type"] == "area" and ev.get("bbox"):
            state["area"] = mapview.bbox_text(ev["bbox"])
    if state.pop("view_as_area", False) and state.get("view"):
        state["area"] = mapview.bbox_text(state["view"]["bbox"])
    if state.pop("clear_area", False):
        state["area"] = ""


def _like_here(c: SatfindClient, state, lon: float, lat: float) -> None:
    try:
        found = c.tiles_at(lon, lat, limit=1)
    except SatfindError as e:
        state["map_message"] = f"Looking up the tile under the click failed: {e}"
        return
    if not found["results"]:
        state["map_message"] = (f"No indexed tile at {lat:.4f}, {lon:.4f}: click on the "
                                "imagery.")
        return
    tile = found["results"][0]["id"]
    state.query = {"kind": "similar", "tile_id": tile, "positives": [], "negatives": []}
    state["selected"] = tile
    state["text"] = ""  # the box shows the query: no longer the text typed before


def _default(key: str, value) -> dict:
    """`value=` for a widget unless a shared link already put its value in the session
    (Streamlit refuses both)."""
    return {} if key in st.session_state else {"value": value}


def sidebar(stats: dict):
    """k, (start, end, sensors, area, undated) and the external basemap URL."""
    with st.sidebar:
        st.markdown("## satfind")
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
        area = st.text_input("area: west,south,east,north (degrees)", key="area",
                             help="or draw a rectangle on the map, or 'Search this view'")
        basemap = st.text_input("external basemap tile URL (optional)",
                                value=os.environ.get("SATFIND_TILE_URL", ""), key="tile_url",
                                help="an XYZ template such as https://…/{z}/{x}/{y}.png; "
                                     "the archive's own imagery draws over it")
    return k, (start, end, sensors, area, undated), basemap


def _text_entered() -> None:
    """Enter in the query box searches (Streamlit calls this when the text changed)."""
    text = str(st.session_state.get("text", "")).strip()
    if text:
        st.session_state.query = {"kind": "text", "text": text, "positives": [],
                                  "negatives": []}


def query_input(state) -> dict | None:
    """The text box (Enter searches), the image drop and their buttons; the current query."""
    box, go = st.columns([6, 1], vertical_alignment="bottom")
    text = box.text_input("Describe what you are looking for", key="text",
                          placeholder="solar farm next to a river", on_change=_text_entered)
    if go.button("Search text", key="search_text", type="primary") and text.strip():
        state.query = {"kind": "text", "text": text.strip(), "positives": [], "negatives": []}
    limit = int(st.session_state.get("max_upload_bytes") or 0)
    with st.expander("…or search with an image", expanded=False):
        upload = st.file_uploader("Drop an image", type=["png", "jpg", "jpeg", "tif", "tiff"],
                                  key="upload", help=(f"PNG, JPEG or GeoTIFF, at most "
                                                      f"{limit / 2**20:g} MB (the API's limit)"
                                                      if limit else None))
        if upload is not None and limit and upload.size > limit:
            st.error(f"{upload.name} is {upload.size / 2**20:.1f} MB; the API takes query "
                     f"images up to {limit / 2**20:g} MB.")
            upload = None
        if st.button("Search image", key="search_image") and upload is not None:
            state.query = {"kind": "image", "image": upload.getvalue(), "name": upload.name,
                           "positives": [], "negatives": []}
    return state.query


def search_panel(c, url: str, state, q: dict, k: int, filters: dict, labels: dict,
                 shown: dict) -> None:
    st.markdown(f"**{describe(q)}**")
    if q["kind"] == "labels":  # the cached ranking is the label set's as it is now
        q = {**q, "positives": labels["positives"], "negatives": labels["negatives"]}
    try:
        res = api.query(url, q, k, filters)
    except SatfindError as e:
        if e.status is None and not timed_out(e):
            api_down(url, e)
        else:
            failed(e, "Query failed")
        return
    results = res["results"]
    if "cv" in res:
        labelling.show_cv(res["cv"])
    if not results:
        st.warning("No tiles match this query and these filters: widen the area or dates.")
        return
    st.caption(f"{res['count']} results in {res['took_ms']:.0f} ms (index commit "
               f"{res['generation']})")
    shown.update(rows=results, fit_key=repr((q, k, filters)), heat=query_ref(q))
    cards.exports(results)
    cards.result_list(url, state, q, results, labels)


def map_panel(c, url: str, public: str, state, q, shown: dict, labels: dict, basemap: str,
              filters: tuple, bbox) -> None:
    """The map (imagery, footprints, label set, heat map), and what to do with the view."""
    start, end, sensors = filters
    heat = None
    legend = None
    # Fixed slots above the map: an element appearing there would move the map's iframe
    # in Streamlit's element tree, and Streamlit would rebuild it (losing the view).
    controls, note = st.container(), st.empty()
    if shown.get("heat"):
        on = controls.toggle("score heat map", key="heat",
                             help="every tile coloured by its score for this query")
        if on:
            try:
                legend = c.score_legend(**shown["heat"], start=start, end=end, sensor=sensors)
            except SatfindError as e:
                controls.caption(f"heat map unavailable: {e}")
            if legend and legend["count"]:
                lo, hi = legend["histogram"]["edges"][0], legend["histogram"]["edges"][-1]
                cut = controls.slider("hide tiles scoring below", float(lo), float(hi),
                                      float(lo), step=max((hi - lo) / 100, 1e-4),
                                      format="%.3f", key="threshold")
                heat = mapview.heat_url(public, shown["heat"], cut if cut > lo else None,
                                        start, end, sensors)
                legend = {**legend, "threshold": cut if cut > lo else None,
                          "title": describe(q).removeprefix("Results for ")}
    message = state.pop("map_message", None)
    if message:
        note.warning(message)
    rows = shown["rows"]
    ids = [r["id"] for r in rows]
    extra = labelling.tiles_of(url, labels, ids)
    map_fragment(dict(
        map_height=mapview.HEIGHT,
        basemap=basemap.strip() or "",
        imagery=mapview.imagery_url(public, start and start.isoformat(),
                                    end and end.isoformat(), sensors),
        heat=heat, heat_opacity=0.7, legend=legend if heat else None,
        results=mapview.result_shapes(rows, labels["positives"], labels["negatives"]),
        labelled=mapview.labelled_shapes(extra, labels["positives"], labels["negatives"], ids),
        selected=state.get("selected"), area=list(bbox) if bbox else None,
        fit=mapview.fit_bounds(rows), fit_key=shown.get("fit_key"),
        view=state.get("link_view"),
        hint="click: places like this · draw: area filter · numbers: results"))
    a, b, _ = st.columns([1, 1, 2])
    a.button("Search this view", key="search_view", disabled=not state.get("view"),
             on_click=_flag, args=("view_as_area",))
    b.button("Clear area", key="clear_area_button", disabled=bbox is None, on_click=_flag,
             args=("clear_area",))


def _flag(name: str) -> None:
    """A button's wish, acted on at the top of the run it starts (apply_map_events)."""
    st.session_state[name] = True


@st.fragment
def map_fragment(args: dict) -> None:
    """The map alone reruns when it is panned (its view goes to the URL); a click, a
    selection or a drawn area reruns the page."""
    state = st.session_state
    value = mapview.leaflet_map("map", **args)
    if isinstance(value, dict) and value.get("view"):
        state["view"] = value["view"]
        param = mapview.view_to_param(value["view"])
        if param and st.query_params.get("view") != param:
            st.query_params["view"] = param
    events = mapview.new_events(value, state.setdefault("done_events", set()))
    if events:
        state.setdefault("pending_events", []).extend(events)
        st.rerun(scope="app")


main()
