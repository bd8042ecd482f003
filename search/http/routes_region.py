"""Routes beyond top-k: the score of every tile in an area (columnar JSON, GeoJSON, CSV,
Arrow, GeoParquet), change search between two periods, and a place's history."""

import time
from typing import Annotated, Literal

import pyarrow as pa
from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi import Query as Q
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from search import exports
from search.engine import SearchEngine
from search.http.models import JSON_MAX_ID, Bounds, TileIdIn
from search.http.params import (
    BBOX_PATTERN,
    TIME_PATTERN,
    TIME_REQUIRED,
    image_from_base64,
    make_filters,
    parse_bbox,
    parse_time,
)
from search.query import Query, QueryError

ExportFormat = Literal["json", "geojson", "csv", "arrow", "parquet"]
Columns = Annotated[Literal["compact", "full"], Q(description="columnar JSON: compact (id, "
                                                            "score, z, x, y, acquired) or full")]

QueryText = Annotated[str | None, Q(min_length=1, max_length=1000, description="text query",
                                    examples=["center pivot irrigation"])]
TileParam = Annotated[int | None, Q(ge=0, le=JSON_MAX_ID, description="query by a tile's vector",
                                    examples=[42])]
Bbox = Annotated[str | None, Q(description="west,south,east,north in degrees",
                               json_schema_extra={"pattern": BBOX_PATTERN},
                               examples=["-99.19,47.0,-99.12,47.04"])]
LabelsParam = Annotated[str | None, Q(description="a label set: its positives and negatives "
                                                 "refine the query (or are the query)",
                                      examples=["quarries"])]
Time = Annotated[str | None, Q(description="ISO date or datetime",
                               json_schema_extra={"pattern": TIME_PATTERN})]
Period = Annotated[str, Q(description="ISO date (a bare end date includes that day) or datetime",
                          json_schema_extra={"pattern": TIME_REQUIRED}, examples=["2014-01-01"])]


class ScoresRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = Field(None, min_length=1, max_length=1000, pattern=r"\S")
    image_base64: str | None = Field(None, description="PNG, JPEG or GeoTIFF bytes, base64")
    tile_id: TileIdIn | None = None
    labels: str | None = Field(None, min_length=1, max_length=64,
                               pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    bbox: Bounds | None = None
    start: str | None = Field(None, pattern=TIME_PATTERN)
    end: str | None = Field(None, pattern=TIME_PATTERN)
    sensor: list[str] = Field(default_factory=list, max_length=50)
    undated: bool = False
    format: ExportFormat = "json"
    columns: Literal["compact", "full"] = "compact"


def base_query(q: str | None, tile: int | None, positives=(), negatives=(), **kw) -> Query:
    """The query vector's definition: text, a tile, and/or labelled examples."""
    if q is not None and not q.strip():
        raise QueryError("empty query: q must contain words")
    if q is not None and tile is not None:
        raise QueryError("give q or tile, not both")
    if q is None and tile is None and not positives:
        raise QueryError("give q (text), tile (a tile id) or labels (a label set)")
    return Query(text=q, tile_id=tile, positives=tuple(positives), negatives=tuple(negatives),
                 **kw)


def add_region_routes(app: FastAPI, engine: SearchEngine, deps: list, errors: dict,
                      labelled) -> None:
    """`labelled(name)` -> (positives, negatives) of a label set (search.labels)."""
    api = engine.api_settings

    def meta(query: dict, loaded) -> dict:
        return {"query": query, "encoder": loaded.snap.identity.short(),
                "generation": loaded.snap.generation, "index_tiles": loaded.snap.ntotal}

    def export(t, fmt: str, m: dict, compact: bool = False) -> Response:
        if not (compact and fmt == "json"):  # files carry links to the thumbnails
            t = t.append_column("thumbnail_url", pa.array(
                [exports.thumbnail_url(api.public_url, i) for i in t["id"].to_pylist()]))
        return Response(exports.encode(t, fmt, m, compact), media_type=exports.MEDIA[fmt])

    @app.get("/search/scores", dependencies=deps, responses={
        200: {"content": {exports.MEDIA[f]: {} for f in exports.FORMATS}}, **errors},
        response_class=Response)
    def scores(q: QueryText = None, tile: TileParam = None,
               labels: LabelsParam = None,
               bbox: Bbox = None, start: Time = None, end: Time = None,
               sensor: Annotated[list[str], Q()] = [],  # noqa: B006
               undated: Annotated[bool, Q(description="with start/end: keep tiles without "
                                                      "a date too")] = False,
               format: ExportFormat = "json", columns: Columns = "compact"):
        """The score of every tile passing the filters (not only the best k), for heat maps
        and exports: columnar JSON (one array per column; `columns=compact`, the default:
        id, score, z, x, y, acquired; `full`: bounds, source, sensor, gsd too), GeoJSON,
        CSV, Arrow IPC or GeoParquet (always full), with the query, encoder and index
        commit in the file's metadata."""
        t0 = time.perf_counter()
        pos, neg = labelled(labels) if labels else ((), ())
        f = make_filters(parse_bbox(bbox), start, end, sensor, [], undated)
        query = base_query(q, tile, pos, neg, filters=f)
        loaded, sc = engine.region_scores(query, api.max_score_tiles)
        compact = format == "json" and columns == "compact"
        t = exports.scored_table(loaded.tiles, sc.ids, {"score": sc.scores},
                                 compact)
        m = meta({"q": q, "tile": tile, "labels": labels, "bbox": bbox, "start": start,
                  "end": end, "sensor": sensor}, loaded)
        m["took_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return export(t, format, m, columns == "compact")

    @app.post("/search/scores", dependencies=deps, responses={
        200: {"content": {exports.MEDIA[f]: {} for f in exports.FORMATS}}, **errors},
        response_class=Response)
    def scores_body(body: ScoresRequest):
        """/search/scores for any query, an image included: JSON with one of `text`,
        `image_base64`, `tile_id` (and/or a label set) plus the filters."""
        t0 = time.perf_counter()
        image = None
        if body.image_base64 is not None:
            image = image_from_base64(body.image_base64, api.max_upload_bytes)
        given = [body.text is not None, image is not None, body.tile_id is not None]
        if sum(given) > 1:
            raise QueryError("give one of text, image_base64 or tile_id")
        if body.text is not None and not body.text.strip():
            raise QueryError("empty query: text must contain words")
        pos, neg = labelled(body.labels) if body.labels else ((), ())
        if not any(given) and not pos:
            raise QueryError("give text, image_base64, tile_id or labels")
        bbox = tuple(body.bbox) if body.bbox is not None else None
        f = make_filters(bbox, body.start, body.end, body.sensor, [], body.undated)
        query = Query(text=body.text, image=image, tile_id=body.tile_id, positives=tuple(pos),
                      negatives=tuple(neg), filters=f)
        loaded, sc = engine.region_scores(query, api.max_score_tiles)
        compact = body.format == "json" and body.columns == "compact"
        t = exports.scored_table(loaded.tiles, sc.ids, {"score": sc.scores},
                                 compact)
        m = meta({"text": body.text, "image": image is not None, "tile": body.tile_id,
                  "labels": body.labels, "bbox": body.bbox, "start": body.start,
                  "end": body.end, "sensor": body.sensor}, loaded)
        m["took_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return export(t, body.format, m, body.columns == "compact")

    @app.get("/search/change", dependencies=deps, responses={
        200: {"content": {exports.MEDIA[f]: {} for f in exports.FORMATS}}, **errors},
        response_class=Response)
    def change(before_start: Period, before_end: Period, after_start: Period, after_end: Period,
               q: QueryText = None, tile: TileParam = None, bbox: Bbox = None,
               sensor: Annotated[list[str], Q()] = [],  # noqa: B006
               direction: Literal["rose", "fell"] = "rose",
               k: Annotated[int, Q(ge=1, le=api.max_k)] = api.default_k,
               format: ExportFormat = "json"):
        """Places (same z/x/y) indexed in both periods whose match to the query rose (or
        fell) the most, from the latest acquisition in `before_*` to the latest in
        `after_*`. One row per place: the after tile with before_id, before_score, score,
        delta."""
        periods = []
        for a, b, name in ((before_start, before_end, "before"),
                           (after_start, after_end, "after")):
            start, end = parse_time(a, f"{name}_start"), parse_time(b, f"{name}_end", end=True)
            if start is None or end is None:
                raise QueryError(f"{name}_start and {name}_end are required")
            if start > end:
                raise QueryError(f"{name}_start is after {name}_end")
            periods.append((start, end))
        f = make_filters(parse_bbox(bbox), None, None, sensor, [])
        query = base_query(q, tile, filters=f, k=k)
        loaded, found = engine.change(query, periods[0], periods[1], fell=direction == "fell")
        t = exports.scored_table(loaded.tiles, [c.after_id for c in found], {
            "score": [c.after_score for c in found],
            "before_id": [c.before_id for c in found],
            "before_score": [c.before_score for c in found],
            "delta": [c.delta for c in found]})
        return export(t, format, meta({"q": q, "tile": tile, "bbox": bbox, "direction":
                                       direction, "before": [before_start, before_end],
                                       "after": [after_start, after_end]}, loaded))

    @app.get("/tiles/{tile_id}/changes", dependencies=deps, responses=errors)
    def changes(tile_id: Annotated[int, PathParam(ge=0, le=JSON_MAX_ID)], q: QueryText = None):
        """The tile's place at every acquisition, oldest first: its score with `q` (when
        given) and the embedding distance (1 - cosine) to the previous acquisition."""
        query = base_query(q, None) if q is not None else None
        loaded, rows = engine.history(tile_id, query)
        return {"tile_id": tile_id, "generation": loaded.snap.generation,
                "acquisitions": rows}
