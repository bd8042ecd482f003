"""A STAC API item search (`pystac-client`) -> raster sources: collections, bbox, datetime,
query / CQL2 filter, a cap on items, pages of a chosen size."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from indexer.config import DiscoverySettings
from indexer.errors import InputError
from indexer.rasters.remote import public, redact
from indexer.rasters.sources import RasterSource
from indexer.rasters.stac import collection_sources


@dataclass(frozen=True)
class StacSearch:
    url: str  # the API's landing page
    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None  # west, south, east, north
    datetime: str | None = None  # "2023-06-01/2023-08-31", RFC 3339 instant or interval
    query: tuple[str, ...] = ()  # query extension: "eo:cloud_cover<20"
    filter: str | None = None  # CQL2 text, or CQL2 JSON when it starts with "{"
    max_items: int | None = None
    page_size: int | None = None  # items per page ("limit")

    def describe(self) -> str:
        parts = [f"collections={','.join(self.collections)}" if self.collections else "",
                 f"bbox={','.join(f'{v:g}' for v in self.bbox)}" if self.bbox else "",
                 f"datetime={self.datetime}" if self.datetime else "",
                 *(f"query {q}" for q in self.query),
                 f"filter {self.filter}" if self.filter else ""]
        return " ".join(p for p in parts if p) or "no criteria"


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """'W,S,E,N' in degrees -> floats; ValueError with the reason."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--bbox {text!r}: expected four numbers W,S,E,N") from None
    if len(vals) != 4:
        raise ValueError(f"--bbox {text!r}: expected four numbers W,S,E,N")
    w, s, e, n = vals
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s < n <= 90):
        raise ValueError(f"--bbox {text!r}: longitudes in [-180, 180], latitudes in [-90, 90], "
                         "south < north")
    return vals  # type: ignore[return-value]


def _why(e: BaseException) -> str:
    msg = str(e).splitlines()[0].strip() if str(e).strip() else type(e).__name__
    return redact(msg)[:300]


_QUERY = re.compile(r"^\s*([^<>=!\s]+)\s*(<=|>=|!=|<>|=|<|>)\s*(.+?)\s*$")
_QUERY_OPS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte", "=": "eq", "!=": "neq",
              "<>": "neq"}


def query_object(expressions: tuple[str, ...], where: str) -> dict:
    """'eo:cloud_cover<20' ... -> the query extension's object, numbers as numbers
    ({"eo:cloud_cover": {"lt": 20}}; pystac-client would send "20", a string, which an API
    compares as text or refuses)."""
    out: dict[str, dict] = {}
    for text in expressions:
        m = _QUERY.match(text)
        if m is None:
            raise InputError(where, f"--query {text!r}: expected PROPERTY OP VALUE with OP one "
                             "of < <= > >= = !=, e.g. 'eo:cloud_cover<20'")
        prop, op, raw = m.groups()
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw.strip("'\"")
        out.setdefault(prop, {})[_QUERY_OPS[op]] = value
    return out


def search_arguments(search: StacSearch) -> dict:
    """pystac-client's `Client.search` arguments for a StacSearch (InputError for a filter
    that is not CQL2 JSON though it starts with '{')."""
    kwargs: dict = {}
    if search.collections:
        kwargs["collections"] = list(search.collections)
    if search.bbox:
        kwargs["bbox"] = list(search.bbox)
    if search.datetime:
        kwargs["datetime"] = search.datetime
    if search.query:
        kwargs["query"] = query_object(search.query, public(search.url))
    if search.filter:
        text = search.filter.strip()
        try:
            kwargs["filter"] = json.loads(text) if text.startswith("{") else text
        except ValueError as e:
            raise InputError(public(search.url), f"--filter is not CQL2 JSON: {e}") from None
        kwargs["filter_lang"] = "cql2-json" if text.startswith("{") else "cql2-text"
    if search.max_items:
        kwargs["max_items"] = search.max_items
    if search.page_size:
        kwargs["limit"] = search.page_size
    return kwargs


def search_sources(search: StacSearch, settings: DiscoverySettings
                   ) -> tuple[list[RasterSource], list[InputError]]:
    """The sources of every item the search returns (paged by pystac-client), each item's
    asset chosen as for item files. InputError when the API cannot be reached or the
    search matches nothing."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    where = public(search.url)
    # urllib3 logs each retry of a dead connection as a warning: the one line below says it.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        client = Client.open(search.url, timeout=(10, 60))
    except Exception as e:  # requests' and pystac's errors for a dead or non-STAC URL
        raise InputError(where, f"cannot open the STAC API: {_why(e)}") from None
    from pystac_client.conformance import ConformanceClasses

    for asked, cls, what in ((search.query, ConformanceClasses.QUERY, "--query"),
                             (search.filter, ConformanceClasses.FILTER, "--filter")):
        if asked and not client.conforms_to(cls):
            raise InputError(where, f"{what}: this STAC API does not declare the "
                             f"{cls.name.lower()} extension (its items would be unfiltered)")
    kwargs = search_arguments(search)
    items_url = f"{where.rstrip('/')}/search"
    try:
        found = client.search(**kwargs)
        features = list(found.items_as_dicts())
    except (APIError, ValueError, NotImplementedError) as e:
        raise InputError(where, f"the search failed: {_why(e)}") from None
    except Exception as e:  # a connection lost while paging
        raise InputError(where, f"the search failed: {_why(e)}") from None
    if not features:
        raise InputError(where, f"the search matched no items ({search.describe()})")
    data = {"type": "FeatureCollection", "features": features}
    return collection_sources(data, items_url, items_url, settings)
