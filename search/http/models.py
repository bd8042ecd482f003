"""Pydantic request/response models of the HTTP API (they make /docs a complete spec)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# json / geojson: the response models below; csv / arrow / parquet: files (search.exports)
# with the query, encoder and index commit in their metadata.
Format = Literal["json", "geojson", "csv", "arrow", "parquet"]
# Fixed-length arrays (not tuples: those become `prefixItems`, which OpenAPI 3.0 tools reject).
Bounds = Annotated[list[float], Field(min_length=4, max_length=4,
                                      description="west, south, east, north (degrees)")]
LonLat = Annotated[list[float], Field(min_length=2, max_length=2, description="lon, lat")]


# Tile ids the new routes accept: exact in a JSON number (a float); larger are never issued.
JSON_MAX_ID = 2**53


def _integral(v):
    """JSON has one number type: 5.0 is the integer 5 (JSON Schema agrees); booleans and
    strings stay refused (strict models)."""
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) <= JSON_MAX_ID else v


# A tile id in a JSON body.
TileIdIn = Annotated[int, Field(ge=0, le=JSON_MAX_ID), BeforeValidator(_integral)]


class TileResult(BaseModel):
    id: int
    score: float = Field(description="inner product with the query (cosine similarity)")
    z: int
    x: int
    y: int
    bounds: Bounds
    centre: LonLat
    acquired: datetime | None
    source: str
    sensor: str
    gsd_m: float = Field(description="ground size of one tile pixel, metres")
    thumbnail_url: str


class SearchResponse(BaseModel):
    count: int
    took_ms: float = Field(description="server time for the whole query")
    embed_ms: float = Field(description="of which: embedding the query (text/image model)")
    search_ms: float = Field(description="of which: filters, ANN, re-rank, metadata")
    generation: int = Field(description="index commit the answer comes from")
    results: list[TileResult]


class Geometry(BaseModel):
    type: Literal["Polygon"] = "Polygon"
    coordinates: list[list[LonLat]]


class Feature(BaseModel):
    type: Literal["Feature"] = "Feature"
    id: int
    geometry: Geometry
    properties: dict[str, Any]


class FeatureCollection(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[Feature]


class SearchRequest(BaseModel):
    """One of text / image_base64 / tile_id, and/or positive tile ids; optional negatives."""

    # Strict: JSON `false` is not tile id 0, `"5"` is not k = 5.
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | None = Field(None, min_length=1, max_length=1000, pattern=r"\S",
                             description="text query (must contain a non-space character)")
    image_base64: str | None = Field(None, description="PNG, JPEG or GeoTIFF bytes, base64")
    tile_id: int | None = None
    positives: list[int] = Field(default_factory=list, max_length=100)
    negatives: list[int] = Field(default_factory=list, max_length=100)
    k: int | None = None
    bbox: Bounds | None = Field(None, description=(
        "west, south, east, north (degrees); west > east is a box across the antimeridian"))
    start: str | None = Field(None, description="ISO date or datetime (UTC if no zone)")
    end: str | None = Field(None, description="ISO date (inclusive: the whole day) or datetime")
    sensor: list[str] = Field(default_factory=list, max_length=50)
    source: list[str] = Field(default_factory=list, max_length=50)
    collapse: bool = Field(False, description="keep only the best date per z/x/y tile")
    undated: bool = Field(False, description="with start/end: keep tiles without a date too")
    format: Format = "json"


class TileInfo(BaseModel):
    id: int
    z: int
    x: int
    y: int
    bounds: Bounds
    centre: LonLat
    acquired: datetime | None
    source: str
    sensor: str
    gsd_m: float
    native_gsd_m: float
    nodata_fraction: float
    thumbnail_url: str


class TilesAt(BaseModel):
    count: int = Field(description="tiles in `results`")
    total: int = Field(description="tiles under the point passing the filters (count is "
                                   "at most `limit` of them)")
    generation: int = Field(description="index commit the answer comes from")
    results: list[TileInfo] = Field(description="newest acquisition first, undated last")


class Histogram(BaseModel):
    edges: list[float] = Field(description="bin edges, lowest to highest score "
                                           "(one more than counts)")
    counts: list[int]


class ScoreLegend(BaseModel):
    vmin: float = Field(description="the score tiles' default low end (dark blue): the "
                                    "archive's median score, as in X-Satfind-Vmin")
    vmax: float = Field(description="the default high end (yellow): the best score, as in "
                                    "X-Satfind-Vmax")
    ramp: list[str] = Field(description="the colour ramp from vmin to vmax, evenly spaced "
                                        "stops, #rrggbb")
    histogram: Histogram = Field(description="the scores of every tile scored")
    count: int = Field(description="tiles scored (those passing start/end/sensor)")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    tiles: int
    generation: int


class Stats(BaseModel):
    tiles: int
    sources: int
    generation: int
    encoder: dict[str, Any]
    index: dict[str, Any]
    search: dict[str, Any]
    sensors: dict[str, int]
    acquired_min: datetime | None
    acquired_max: datetime | None
    undated: int = Field(0, description="tiles without an acquisition time (a start/end "
                                        "filter drops them unless undated=true)")
    limits: dict[str, int] = Field(default_factory=dict, description=(
        "what a client must respect: max_upload_bytes (query images), max_k, "
        "max_score_tiles"))


class ErrorBody(BaseModel):
    detail: str
