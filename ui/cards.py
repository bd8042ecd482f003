"""The explorer's result cards (beside the map, numbered like the map's footprints), their
exports, and the change view's before/after cards."""

from __future__ import annotations

import io
import json
from datetime import date

import streamlit as st

from search.client import SatfindClient, SatfindError
from ui import labelling
from ui.api import client, thumbnail, where_overlay
from ui.views import query_ref, rows_from_columns, to_csv, to_geojson, with_feedback

LIST_HEIGHT = 640


def exports(results: list[dict]) -> None:
    gj, cs = st.columns(2)
    gj.download_button("Export GeoJSON", json.dumps(to_geojson(results)),
                       file_name="satfind-results.geojson", mime="application/geo+json",
                       key="export_geojson", width="stretch")
    cs.download_button("Export CSV", to_csv(results), file_name="satfind-results.csv",
                       mime="text/csv", key="export_csv", width="stretch")


def _image(url: str, tile_id: int, where: bytes | None = None, box=st):
    try:
        img = thumbnail(url, tile_id)
    except SatfindError:
        box.caption("(no thumbnail)")
        return
    if where:
        from PIL import Image

        base = Image.open(io.BytesIO(img)).convert("RGBA")
        over = Image.open(io.BytesIO(where)).convert("RGBA").resize(base.size)
        out = io.BytesIO()
        Image.alpha_composite(base, over).convert("RGB").save(out, "JPEG", quality=90)
        img = out.getvalue()
    box.image(img, width="stretch")


def result_list(url: str, state, q: dict, results: list[dict], labels: dict) -> None:
    """Cards in a scrolling column, numbered like the map: thumbnail, score, date, place,
    label buttons (kept in the label set), more like this, where-in-tile on demand."""
    c = client(url)
    name = state.get("label_set") or labelling.DEFAULT_SET
    selected = state.get("selected")
    if state.get("label_error"):
        st.error(state.pop("label_error"))
    with st.container(height=LIST_HEIGHT, border=False):
        for rank, r in enumerate(results, 1):
            card(c, url, state, q, r, rank, labels, name, selected == r["id"])


def card(c: SatfindClient, url: str, state, q: dict, r: dict, rank: int, labels: dict,
         name: str, selected: bool) -> None:
    tid = r["id"]
    box = st.container(border=True, key=f"card_{tid}")  # the map finds it to sync hovers
    pic, text = box.columns([2, 3])
    where = None
    wp = query_ref(q) if q["kind"] != "labels" else None  # where-in-tile takes q or tile
    if wp and state.get(f"where_{tid}"):
        try:
            where = where_overlay(url, tid, tuple(wp.items()))
        except SatfindError as e:
            text.caption(f"where-in-tile failed: {e}")
    _image(url, tid, where, pic)
    when = r["acquired"][:10] if r.get("acquired") else "no date"
    mark = (":green[:material/thumb_up: relevant]" if tid in labels["positives"] else
            ":red[:material/thumb_down: irrelevant]" if tid in labels["negatives"] else "")
    head = f":blue-background[:material/location_on: #{rank}]" if selected else f"#{rank}"
    text.markdown(f"{head} · **{r['score']:.3f}** · {when} · {r['sensor'] or 'tile'}  \n"
                  f"{r['centre'][1]:.4f}, {r['centre'][0]:.4f} · tile {tid}"
                  + (f"  \n{mark}" if mark else ""))
    # Callbacks, not `if st.button(...): ...; st.rerun()`: the state changes before the
    # click's run, so the page runs once, not twice (bench/ui_click.py).
    a, b, s, m = text.columns(4, gap="small")
    a.button("", key=f"up_{tid}", icon=":material/thumb_up:", width="stretch",
             type=_type(tid in labels["positives"]), on_click=_label,
             args=(c, q, name, labels, tid, True),
             help="Relevant: kept in the label set, and this query re-ranked with it")
    b.button("", key=f"down_{tid}", icon=":material/thumb_down:", width="stretch",
             type=_type(tid in labels["negatives"]), on_click=_label,
             args=(c, q, name, labels, tid, False),
             help="Irrelevant: kept in the label set, and this query re-ranked with it")
    s.button("", key=f"similar_{tid}", icon=":material/image_search:", width="stretch",
             on_click=_similar, args=(tid,),
             help="More like this: a new query, tiles that look like this one")
    m.button("", key=f"select_{tid}", icon=":material/location_on:", width="stretch",
             type=_type(selected), on_click=_select, args=(None if selected else tid,),
             help="Show on the map")
    if wp:
        text.toggle("where in the tile", key=f"where_{tid}",
                    help="the parts of the tile that match the query")


def _type(on: bool) -> str:
    return "primary" if on else "secondary"


def _similar(tid: int) -> None:
    st.session_state.query = {"kind": "similar", "tile_id": tid, "positives": [],
                              "negatives": []}
    st.session_state["selected"] = tid
    st.session_state["text"] = ""  # the box shows the query: no longer that text


def _select(tid: int | None) -> None:
    st.session_state["selected"] = tid


def _label(c: SatfindClient, q: dict, name: str, labels: dict, tid: int,
           relevant: bool) -> None:
    state = st.session_state
    new = labelling.toggled(labels, tid, relevant)
    try:
        labelling.save(c, name, new)
    except SatfindError as e:
        state["label_error"] = f"Saving the label failed: {e}"
        return
    if q.get("kind") in ("text", "similar", "image"):
        if tid in new["positives" if relevant else "negatives"]:
            state.query = with_feedback(q, tid, relevant)
        else:  # unlabelled: out of the query's feedback too
            state.query = {**q, "positives": [i for i in q["positives"] if i != tid],
                           "negatives": [i for i in q["negatives"] if i != tid]}


# --- change mode --------------------------------------------------------------------------
PERIODS = (("before_start", date(2010, 1, 1)), ("before_end", date(2012, 12, 31)),
           ("after_start", date(2013, 1, 1)), ("after_end", date.today()))


def restore_change(state, params) -> None:
    for key, _ in PERIODS:
        try:
            state[key] = date.fromisoformat(str(params.get(key, "")))
        except ValueError:
            pass
    if params.get("direction") in ("rose", "fell"):
        state["direction"] = params["direction"]


def change_panel(c: SatfindClient, url: str, state, q: dict | None, bbox, sensors,
                 labels: dict, shown: dict) -> None:
    """Two periods and the query: the places whose match rose (fell) most, before | after."""
    lo, hi = date(1960, 1, 1), date(date.today().year + 1, 12, 31)
    cols = st.columns(2)
    values = {}
    for i, (key, default) in enumerate(PERIODS):
        col = cols[i // 2]
        label = key.replace("_", " ")
        values[key] = col.date_input(label, min_value=lo, max_value=hi, key=key,
                                     **({} if key in state else {"value": default}))
    direction = st.radio("the match", ["rose", "fell"], horizontal=True, key="direction")
    what = query_ref(q) if q is not None and q["kind"] != "labels" else None
    if what is None:
        st.info("Change mode needs a text query (or a 'more like this' tile).")
        return
    link = {k: v.isoformat() for k, v in values.items()}
    st.query_params.update(link | {"direction": direction})
    try:
        res = c.change((link["before_start"], link["before_end"]),
                       (link["after_start"], link["after_end"]), k=int(state.get("k", 12)),
                       direction=direction, bbox=bbox, **what)
    except SatfindError as e:
        st.error(f"Change search failed: {e}")
        return
    rows = rows_from_columns(res)
    if not rows:
        st.warning("No place was indexed in both periods (with these filters): widen them.")
        return
    st.caption(f"{len(rows)} places whose match {direction} most")
    shown.update(rows=rows, fit_key=repr(("change", link, direction, what, bbox)))
    with st.container(height=LIST_HEIGHT, border=False):
        for rank, r in enumerate(rows, 1):
            box = st.container(border=True)
            box.markdown(f"#{rank} · tile {r['id']} · Δ **{r['delta']:+.3f}** "
                         f"({r['before_score']:.3f} → {r['score']:.3f})")
            before, after = box.columns(2)
            _image(url, r["before_id"], box=before)
            before.caption(f"before · tile {r['before_id']}")
            _image(url, r["id"], box=after)
            after.caption(f"after · {(r.get('acquired') or '')[:10]}")
