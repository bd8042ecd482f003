"""The explorer's API connection: the client (short timeouts), and cached reads."""

from __future__ import annotations

import argparse
import json
import os

import streamlit as st

from search.client import SatfindClient, SatfindError
from ui.views import rank_with_labels, run_query

DEFAULT_API = "http://127.0.0.1:8000"


def timeout_s() -> float:
    """Seconds before a call to a hung API becomes an error (SATFIND_UI_TIMEOUT, 5)."""
    return float(os.environ.get("SATFIND_UI_TIMEOUT", "5"))


def api_urls() -> tuple[str, str]:
    """(the API for Python, the API as the browser reaches it, for map tiles)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--api", default=None)
    p.add_argument("--public-api", default=None)
    args, _ = p.parse_known_args()
    api = args.api or os.environ.get("SATFIND_API") or DEFAULT_API
    return api, args.public_api or os.environ.get("SATFIND_PUBLIC_API") or api


@st.cache_resource
def client(url: str) -> SatfindClient:
    return SatfindClient(url, api_key=os.environ.get("SATFIND_API_KEY") or None,
                         timeout=timeout_s())


def timed_out(error: SatfindError) -> bool:
    return error.status is None and "Timeout" in str(error)


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail(url: str, tile_id: int) -> bytes:
    return client(url).thumbnail(tile_id)


@st.cache_data(show_spinner=False, max_entries=4096)
def tile(url: str, tile_id: int) -> dict | None:
    try:
        return client(url).tile(tile_id)
    except SatfindError as e:
        if e.status == 404:
            return None
        raise


@st.cache_data(show_spinner=False, max_entries=256)
def where_overlay(url: str, tile_id: int, ref: tuple) -> bytes:
    """The where-in-tile PNG for a query (`ref`: its q / tile parameter as items), fetched
    once, not on every rerun while its card's toggle is on."""
    return client(url).where(tile_id, format="png", **dict(ref))


@st.cache_data(show_spinner=False, max_entries=8)
def label_file(url: str, name: str, fmt: str, positives: tuple, negatives: tuple) -> bytes:
    """A label set's export (re-fetched only when the set changed: its labels are the
    key)."""
    got = client(url).labels(name, format=fmt)
    return json.dumps(got).encode() if isinstance(got, dict) else got


@st.cache_data(show_spinner=False, ttl=60, max_entries=64)
def query(url: str, q: dict, k: int, filters: dict) -> dict:
    """A query's answer, reused while only the map or a card changes (60 s)."""
    if q["kind"] == "labels":
        return rank_with_labels(client(url), q["labels"], k, filters)
    return run_query(client(url), q, k, filters)
