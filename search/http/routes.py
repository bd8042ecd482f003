"""The API's routes over one SearchEngine: search by text, image, JSON body or tile id;
tile metadata and thumbnails; health and stats."""

import time
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, UploadFile
from fastapi import Path as PathParam
from fastapi import Query as Q
from fastapi.responses import Response

from search import exports
from search.engine import SearchEngine
from search.http.models import (
    Feature,
    FeatureCollection,
    Format,
    Geometry,
    Health,
    SearchRequest,
    SearchResponse,
    Stats,
    TileInfo,
    TileResult,
    TilesAt,
)
from search.http.params import (
    BBOX_PATTERN,
    TEXT_PATTERN,
    TIME_PATTERN,
    image_from_base64,
    make_filters,
    parse_bbox,
)
from search.query import NotFound, Query, QueryError, TooLarge

MAX_ID = 2**62
MAX_TILES_AT = 1000


def add_routes(app: FastAPI, engine: SearchEngine, deps: list, errors: dict) -> None:
    api = engine.api_settings
    K = Annotated[int | None, Q(ge=1, le=api.max_k, description=f"results (1..{api.max_k})")]
    TileId = Annotated[int, PathParam(ge=0, le=MAX_ID)]

    def thumb_url(i: int) -> str:
        return exports.thumbnail_url(api.public_url, i)

    def place(r: dict) -> dict:
        """Fields every tile answer shares, from an engine row."""
        return dict(
            id=r["id"], z=r["z"], x=r["x"], y=r["y"],
            bounds=(r["west"], r["south"], r["east"], r["north"]),
            centre=((r["west"] + r["east"]) / 2, (r["south"] + r["north"]) / 2),
            acquired=r["acquired"], source=r["source"], sensor=r["sensor"], gsd_m=r["gsd_m"],
            thumbnail_url=thumb_url(r["id"]))

    def to_result(r: dict) -> TileResult:
        return TileResult(score=r["score"], **place(r))

    def run(query: Query, fmt: Format):
        t0 = time.perf_counter()
        gen = engine.snapshot.generation
        timings: dict = {}
        rows = engine.search(query, timings)
        if fmt in ("csv", "arrow", "parquet"):
            return export_rows(rows, query, fmt, gen)
        results = [to_result(r) for r in rows]
        if fmt == "geojson":
            return FeatureCollection(features=[
                Feature(id=r.id, geometry=Geometry(coordinates=[[
                    (r.bounds[0], r.bounds[1]), (r.bounds[2], r.bounds[1]),
                    (r.bounds[2], r.bounds[3]), (r.bounds[0], r.bounds[3]),
                    (r.bounds[0], r.bounds[1])]]),
                    properties=r.model_dump(mode="json", exclude={"id", "bounds"}))
                for r in results])
        return SearchResponse(count=len(results), took_ms=(time.perf_counter() - t0) * 1000,
                              generation=gen, results=results, **timings)

    def export_rows(rows: list[dict], query: Query, fmt: str, gen: int) -> Response:
        loaded = engine.loaded
        ids = np.asarray([r["id"] for r in rows], dtype=np.int64)
        t = exports.scored_table(loaded.tiles, ids, {
            "score": [r["score"] for r in rows],
            "thumbnail_url": [thumb_url(int(i)) for i in ids]})
        f = query.filters
        meta = {"query": {"text": query.text, "image": query.image is not None,
                          "tile": query.tile_id, "positives": list(query.positives),
                          "negatives": list(query.negatives), "k": query.k,
                          "bbox": f.bbox, "start": f.start and f.start.isoformat(),
                          "end": f.end and f.end.isoformat(), "sensor": list(f.sensors),
                          "source": list(f.sources)},
                "encoder": loaded.snap.identity.short(), "generation": gen}
        return Response(exports.encode(t, fmt, meta), media_type=exports.MEDIA[fmt])

    def k_or_default(k: int | None) -> int:
        if k is None:
            return api.default_k
        if not 1 <= k <= api.max_k:
            raise QueryError(f"k must be between 1 and {api.max_k}, got {k}")
        return k

    def read_upload(data: bytes) -> bytes:
        if len(data) > api.max_upload_bytes:
            raise TooLarge(f"upload is larger than {api.max_upload_bytes} bytes")
        if not data:
            raise QueryError("empty upload")
        return data

    SearchOut = SearchResponse | FeatureCollection
    Bbox = Annotated[str | None, Q(
        description="west,south,east,north in degrees; west > east crosses the antimeridian",
        json_schema_extra={"pattern": BBOX_PATTERN}, examples=["-99.19,47.0,-99.12,47.04"])]
    Start = Annotated[str | None, Q(description="ISO date or datetime (UTC if no zone)",
                                    json_schema_extra={"pattern": TIME_PATTERN})]
    End = Annotated[str | None, Q(description="ISO date (whole day) or datetime",
                                  json_schema_extra={"pattern": TIME_PATTERN})]
    Sensors = Annotated[list[str], Q(description="sensor name(s)")]
    Sources = Annotated[list[str], Q(description="source raster path(s) or folder prefix(es)")]
    Undated = Annotated[bool, Q(description="with start/end: keep tiles without a date too")]

    @app.get("/health", response_model=Health)
    def health():
        snap = engine.snapshot
        return Health(tiles=snap.ntotal, generation=snap.generation)

    @app.get("/stats", response_model=Stats, dependencies=deps, responses=errors)
    def stats():
        return Stats(**engine.stats())

    files = {200: {"content": {exports.MEDIA[f]: {} for f in ("csv", "arrow", "parquet")}}}

    @app.get("/search", response_model=SearchOut, dependencies=deps,
             responses={**errors, **files})
    def search_text(q: Annotated[str, Q(min_length=1, max_length=1000, description="text query",
                                        json_schema_extra={"pattern": TEXT_PATTERN})],
                    k: K = None, bbox: Bbox = None, start: Start = None, end: End = None,
                    sensor: Sensors = [], source: Sources = [],  # noqa: B006
                    collapse: bool = False, undated: Undated = False, format: Format = "json"):
        if not q.strip():
            raise QueryError("empty query: q must contain words")
        f = make_filters(parse_bbox(bbox), start, end, sensor, source, undated)
        return run(Query(text=q, k=k_or_default(k), filters=f, collapse=collapse), format)

    @app.post("/search/image", response_model=SearchOut, dependencies=deps,
              responses={**errors, **files})
    def search_image(file: Annotated[UploadFile, File(description="PNG, JPEG or GeoTIFF")],
                     k: Annotated[int, Form(ge=1, le=api.max_k)] = api.default_k,
                     bbox: Annotated[str, Form(json_schema_extra={"pattern": BBOX_PATTERN})] = "",
                     start: Annotated[str, Form(json_schema_extra={"pattern": TIME_PATTERN})] = "",
                     end: Annotated[str, Form(json_schema_extra={"pattern": TIME_PATTERN})] = "",
                     sensor: Annotated[list[str], Form()] = [],  # noqa: B006
                     source: Annotated[list[str], Form()] = [],  # noqa: B006
                     collapse: Annotated[bool, Form()] = False,
                     undated: Annotated[bool, Form()] = False,
                     format: Annotated[Format, Form()] = "json"):
        # Form fields are never null (a multipart form cannot say null): absent = default.
        data = read_upload(file.file.read(api.max_upload_bytes + 1))
        f = make_filters(parse_bbox(bbox), start, end, sensor, source, undated)
        return run(Query(image=data, k=k_or_default(k), filters=f, collapse=collapse), format)

    @app.post("/search", response_model=SearchOut, dependencies=deps,
              responses={**errors, **files})
    def search_json(body: SearchRequest):
        image = None
        if body.image_base64 is not None:
            image = image_from_base64(body.image_base64, api.max_upload_bytes)
        if body.text is not None and not body.text.strip():
            raise QueryError("empty query: text must contain words")
        for i in [body.tile_id, *body.positives, *body.negatives]:
            if i is not None and not 0 <= i <= MAX_ID:
                raise NotFound(f"unknown tile id {i}")
        bbox = tuple(body.bbox) if body.bbox is not None else None
        f = make_filters(bbox, body.start, body.end, body.sensor, body.source, body.undated)
        q = Query(text=body.text, image=image, tile_id=body.tile_id,
                  positives=tuple(body.positives), negatives=tuple(body.negatives),
                  k=k_or_default(body.k), filters=f, collapse=body.collapse)
        return run(q, body.format)

    def tile_info(r: dict) -> TileInfo:
        return TileInfo(native_gsd_m=r["native_gsd_m"], nodata_fraction=r["nodata_fraction"],
                        **place(r))

    # Before /tiles/{tile_id}: routes match in the order they are added, and "at" would be
    # taken for a tile id there (and refused: not an integer).
    @app.get("/tiles/at", response_model=TilesAt, dependencies=deps, responses=errors)
    def tiles_at(lon: Annotated[float, Q(ge=-180, le=180, description="longitude, degrees",
                                         examples=[-99.15])],
                 lat: Annotated[float, Q(ge=-90, le=90, description="latitude, degrees",
                                         examples=[47.02])],
                 start: Start = None, end: End = None, sensor: Sensors = [],  # noqa: B006
                 undated: Undated = False,
                 limit: Annotated[int, Q(ge=1, le=MAX_TILES_AT, description=(
                     f"most tiles returned (1..{MAX_TILES_AT})"))] = 20):
        """The tiles whose footprint (web-mercator cell) contains the point and that pass
        the filters: every acquisition of the place, at every zoom indexed, newest first
        (undated last), with the fields of GET /tiles/{id}. A point on the edge between two
        cells belongs to the one east / south of it (as the XYZ grid assigns it)."""
        f = make_filters(None, start, end, sensor, [], undated)
        loaded, rows, total = engine.tiles_at(lon, lat, f, limit)
        return TilesAt(count=len(rows), total=total, generation=loaded.snap.generation,
                       results=[tile_info(r) for r in rows])

    @app.get("/tiles/{tile_id}", response_model=TileInfo, dependencies=deps, responses=errors)
    def tile(tile_id: TileId):
        return tile_info(engine.tile(tile_id))

    @app.get("/tiles/{tile_id}/similar", response_model=SearchOut, dependencies=deps,
             responses={**errors, **files})
    def similar(tile_id: TileId, k: K = None, bbox: Bbox = None, start: Start = None,
                end: End = None, sensor: Sensors = [], source: Sources = [],  # noqa: B006
                collapse: bool = False, undated: Undated = False, format: Format = "json"):
        f = make_filters(parse_bbox(bbox), start, end, sensor, source, undated)
        return run(Query(tile_id=tile_id, k=k_or_default(k), filters=f, collapse=collapse),
                   format)

    @app.get("/tiles/{tile_id}/thumbnail.jpg", dependencies=deps, responses={
        200: {"content": {"image/jpeg": {}}}, **errors}, response_class=Response)
    def thumbnail(tile_id: TileId):
        # With an API key, no shared cache may keep a copy that it would serve without one.
        scope = "private" if api.api_key else "public"
        return Response(engine.thumbnail(tile_id), media_type="image/jpeg",
                        headers={"Cache-Control": f"{scope}, max-age=86400"})

