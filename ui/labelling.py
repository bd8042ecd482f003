"""The explorer's label set: kept by the API (POST/GET/DELETE /labels), so it survives
queries, reloads and other browsers; ranked with the API's linear classifier; exported."""

from __future__ import annotations

import streamlit as st

from search.client import SatfindClient, SatfindError
from ui.api import label_file, tile

DEFAULT_SET = "my-labels"
MAX_DRAWN = 200  # labelled tiles drawn on the map (beyond the results)


def fetch(c: SatfindClient, name: str) -> dict:
    """{"positives": [...], "negatives": [...]} of the set; empty when it does not exist."""
    try:
        got = c.labels(name)
    except SatfindError as e:
        if e.status == 404:
            return {"positives": [], "negatives": []}
        raise
    return {"positives": list(got["positives"]), "negatives": list(got["negatives"])}


def toggled(labels: dict, tile_id: int, relevant: bool) -> dict:
    """The set after clicking Relevant (or Irrelevant) on a tile: labelled that way, or
    unlabelled when it already was."""
    mine, other = ("positives", "negatives") if relevant else ("negatives", "positives")
    now = set(labels[mine])
    now.symmetric_difference_update({tile_id})
    return {mine: sorted(now), other: [i for i in labels[other] if i != tile_id]}


def save(c: SatfindClient, name: str, labels: dict) -> None:
    if labels["positives"] or labels["negatives"]:
        c.put_labels(name, labels["positives"], labels["negatives"], replace=True)
    else:
        try:
            c.delete_labels(name)
        except SatfindError as e:
            if e.status != 404:
                raise


def link(name: str) -> dict:
    return {} if name == DEFAULT_SET else {"labels": name}


def tiles_of(url: str, labels: dict, skip) -> dict[int, dict]:
    """Tile records of the labelled tiles not in `skip`, for their footprints."""
    skip = set(skip)
    ids = [i for i in [*labels["positives"], *labels["negatives"]] if i not in skip]
    out = {}
    for i in ids[:MAX_DRAWN]:
        t = tile(url, i)
        if t is not None:
            out[i] = t
    return out


def show_cv(cv: dict) -> None:
    def pct(v):
        return "n/a" if v is None else f"{v:.0%}"

    st.caption(f"linear classifier on {cv['labels']} labels ({cv['positives']} relevant) · "
               f"spatially blocked CV over {cv['folds']} folds: precision {pct(cv['precision'])}"
               f", recall {pct(cv['recall'])}, AUC "
               f"{'n/a' if cv['auc'] is None else format(cv['auc'], '.2f')}")


def sidebar_panel(c: SatfindClient, url: str, state, name: str, labels: dict) -> None:
    with st.sidebar:
        st.divider()
        st.text_input("label set", key="label_set", **({} if "label_set" in state else
                                                       {"value": DEFAULT_SET}),
                      help="your Relevant / Irrelevant marks, kept by the API under this name")
        npos, nneg = len(labels["positives"]), len(labels["negatives"])
        st.caption(f"labelled: {npos} relevant · {nneg} irrelevant")
        st.button("Rank the archive with these labels", key="rank_labels",
                  disabled=not (npos and nneg), width="stretch", on_click=_rank, args=(name,),
                  help="a linear classifier trained on the labelled tiles' vectors "
                       "(needs at least one of each)")
        if npos or nneg:
            a, b = st.columns(2)
            for col, fmt, ext, mime in ((a, "geojson", "geojson", "application/geo+json"),
                                        (b, "parquet", "parquet",
                                         "application/vnd.apache.parquet")):
                try:
                    data = label_file(url, name, fmt, tuple(labels["positives"]),
                                      tuple(labels["negatives"]))
                except SatfindError as e:
                    col.caption(f"export failed: {e}")
                    continue
                col.download_button(f"Export {'GeoParquet' if fmt == 'parquet' else 'GeoJSON'}",
                                    data, file_name=f"{name}.{ext}", mime=mime,
                                    key=f"labels_{fmt}")
            st.button("Clear this label set", key="clear_labels", on_click=save,
                      args=(c, name, {"positives": [], "negatives": []}))


def _rank(name: str) -> None:
    st.session_state.query = {"kind": "labels", "labels": name, "positives": [],
                              "negatives": []}
