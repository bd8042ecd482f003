"""The FastAPI app: text, image, tile-id and feedback search; tile metadata and thumbnails."""


import base64
import binascii
import re
import secrets
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi import Path as PathParam
from fastapi import Query as Q
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from indexer.errors import IndexError_
from search.engine import Filters, Query, QueryError, SearchEngine
from search.http.bodylimit import BodyLimit
from search.http.models import (
    ErrorBody,
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
)

# Documented in the spec (not enforced by FastAPI: the handlers give clearer messages).
_LON = r"-?(180(\.0+)?|(1[0-7][0-9]|[0-9]{1,2})(\.[0-9]+)?)"
_LAT = r"-?(90(\.0+)?|[0-8]?[0-9](\.[0-9]+)?)"
BBOX_PATTERN = rf"^({_LON},{_LAT},{_LON},{_LAT})?$"  # empty = no filter
_DATE = (r"(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
         r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])")
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
TIME_PATTERN = rf"^({_DATE}(T{_CLOCK}(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?)?$"
TEXT_PATTERN = r"\S"


def body_limit_bytes(max_upload_bytes: int) -> int:
    """The largest request body: one query image as base64 in JSON (4/3 of its bytes) plus
    64 KiB for the other fields."""
    return max_upload_bytes * 4 // 3 + 65536


OPEN_PATHS = {"/health", "/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"}
# Every error the API returns has the same body, 422 (FastAPI's request validation) included.
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 503)}
MAX_ID = 2**62


def parse_time(value: str | None, name: str, end: bool = False) -> datetime | None:
    """ISO date or datetime; no zone = UTC; a bare date as `end` means the end of that day.
    Any date the calendar holds is accepted (9999-12-31 included); out-of-range is a 400."""
    if value is None or value == "":
        return None
    v = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            d = date.fromisoformat(v)
            t = datetime(d.year, d.month, d.day, tzinfo=UTC)
            if end:
                t = t.replace(hour=23, minute=59, second=59, microsecond=999999)
            return t
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{name}: {value!r} is not an ISO date or datetime "
                         "(e.g. 2014-07-20 or 2014-07-20T10:00:00Z)") from None
    if t.tzinfo is None:
        return t.replace(tzinfo=UTC)
    try:
        return t.astimezone(UTC)
    except OverflowError:
        raise QueryError(f"{name}: {value!r} is outside the years 1..9999 in UTC") from None


def parse_bbox(value: str | None) -> tuple[float, float, float, float] | None:
    if value is None or value == "":
        return None
    parts = value.split(",")
    try:
        nums = tuple(float(p) for p in parts)
    except ValueError:
        nums = ()
    if len(nums) != 4:
        raise QueryError(f"bbox: expected 'west,south,east,north' in degrees, got {value!r}")
    return nums  # type: ignore[return-value]


def make_filters(bbox, start, end, sensor, source) -> Filters:
    return Filters(bbox=bbox, start=parse_time(start, "start"),
                   end=parse_time(end, "end", end=True),
                   sensors=tuple(s for s in sensor if s), sources=tuple(s for s in source if s))


def _query_params(dependant) -> list:
    """Every query parameter of a route, its dependencies' included."""
    out = list(dependant.query_params)
    for sub in dependant.dependencies:
        out += _query_params(sub)
    return out


def create_app(engine: SearchEngine) -> FastAPI:
    api = engine.api_settings
    app = FastAPI(
        title="satfind",
        version="0.1.0",
        description="Text-to-image and image-to-image retrieval over satellite tile archives.",
    )
    app.state.engine = engine
    body_limit = body_limit_bytes(api.max_upload_bytes)
    app.add_middleware(BodyLimit, limit=body_limit, detail=(
        f"request body is larger than {body_limit} bytes (query images are limited to "
        f"{api.max_upload_bytes} bytes)"))
    if api.trusted_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(api.trusted_hosts))
    if api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(api.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["*"])

    def public(message: str) -> str:
        """An error message as a client may see it: what they sent, not what the server
        holds (no index path, no GDAL /vsimem name, no Python object address)."""
        for held in {str(engine.dir.resolve()), str(engine.dir)}:
            message = message.replace(held, "<index>")
        message = re.sub(r"/vsi\w+/\S*", "<memory>", message)
        return re.sub(r" at 0x[0-9a-fA-F]+", "", message)

    @app.exception_handler(QueryError)
    def _query_error(_: Request, e: QueryError):
        return JSONResponse({"detail": public(str(e))}, status_code=e.status)

    @app.exception_handler(IndexError_)
    def _index_error(_: Request, e: IndexError_):
        return JSONResponse({"detail": "index unavailable: " + public(str(e))}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, e: StarletteHTTPException):
        headers = dict(e.headers or {})
        if e.status_code == 405:  # Allow: every method of this path, not just one route's
            methods: set[str] = set()
            for route in app.router.routes:
                if route.matches(request.scope)[0] != Match.NONE:
                    methods |= getattr(route, "methods", set()) or set()
            headers["Allow"] = ", ".join(sorted(methods - {"HEAD"}))
        return JSONResponse({"detail": public(str(e.detail))}, status_code=e.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    def _validation(_: Request, e: RequestValidationError):
        msgs = []
        for err in e.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            msgs.append(f"{where}: {err.get('msg')}")
        return JSONResponse({"detail": "; ".join(msgs) or "invalid request"}, status_code=422)

    def check_key(request: Request,
                  x_api_key: Annotated[str | None, Header()] = None) -> None:
        if api.api_key and request.url.path not in OPEN_PATHS:
            if not x_api_key or not secrets.compare_digest(x_api_key.encode(),
                                                           api.api_key.encode()):
                raise QueryError("missing or wrong X-API-Key", status=401)

    known_params: dict[int, set[str]] = {}  # id(route) -> its query parameter names

    def check_query(request: Request) -> None:
        """A query parameter the route does not know is an error, not silently ignored (a
        typo like `bboxx=` would otherwise search the whole archive)."""
        route = request.scope.get("route")
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            return
        known = known_params.get(id(route))
        if known is None:  # routes are fixed once the app is built: once per route
            known = known_params[id(route)] = {p.alias for p in _query_params(dependant)}
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            raise QueryError(f"unknown query parameter {unknown[0]!r} (this route takes: "
                             f"{', '.join(sorted(known)) or 'none'})")

    deps = [Depends(check_key), Depends(check_query)]
    K = Annotated[int | None, Q(ge=1, le=api.max_k, description=f"results (1..{api.max_k})")]
    TileId = Annotated[int, PathParam(ge=0, le=MAX_ID)]

    def thumb_url(i: int) -> str:
        return f"{api.public_url.rstrip('/')}/tiles/{i}/thumbnail.jpg"

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

    def k_or_default(k: int | None) -> int:
        if k is None:
            return api.default_k
        if not 1 <= k <= api.max_k:
            raise QueryError(f"k must be between 1 and {api.max_k}, got {k}")
        return k

    def read_upload(data: bytes) -> bytes:
        if len(data) > api.max_upload_bytes:
            raise QueryError(f"upload is larger than {api.max_upload_bytes} bytes", status=413)
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

    @app.get("/health", response_model=Health)
    def health():
        snap = engine.snapshot
        return Health(tiles=snap.ntotal, generation=snap.generation)

    @app.get("/stats", response_model=Stats, dependencies=deps, responses=ERRORS)
    def stats():
        return Stats(**engine.stats())

    @app.get("/search", response_model=SearchOut, dependencies=deps, responses=ERRORS)
    def search_text(q: Annotated[str, Q(min_length=1, max_length=1000, description="text query",
                                        json_schema_extra={"pattern": TEXT_PATTERN})],
                    k: K = None, bbox: Bbox = None, start: Start = None, end: End = None,
                    sensor: Sensors = [], source: Sources = [],  # noqa: B006
                    collapse: bool = False, format: Format = "json"):
        if not q.strip():
            raise QueryError("empty query: q must contain words")
        f = make_filters(parse_bbox(bbox), start, end, sensor, source)
        return run(Query(text=q, k=k_or_default(k), filters=f, collapse=collapse), format)

    @app.post("/search/image", response_model=SearchOut, dependencies=deps, responses=ERRORS)
    def search_image(file: Annotated[UploadFile, File(description="PNG, JPEG or GeoTIFF")],
                     k: Annotated[int, Form(ge=1, le=api.max_k)] = api.default_k,
                     bbox: Annotated[str, Form(json_schema_extra={"pattern": BBOX_PATTERN})] = "",
                     start: Annotated[str, Form(json_schema_extra={"pattern": TIME_PATTERN})] = "",
                     end: Annotated[str, Form(json_schema_extra={"pattern": TIME_PATTERN})] = "",
                     sensor: Annotated[list[str], Form()] = [],  # noqa: B006
                     source: Annotated[list[str], Form()] = [],  # noqa: B006
                     collapse: Annotated[bool, Form()] = False,
                     format: Annotated[Format, Form()] = "json"):
        # Form fields are never null (a multipart form cannot say null): absent = default.
        data = read_upload(file.file.read(api.max_upload_bytes + 1))
        f = make_filters(parse_bbox(bbox), start, end, sensor, source)
        return run(Query(image=data, k=k_or_default(k), filters=f, collapse=collapse), format)

    @app.post("/search", response_model=SearchOut, dependencies=deps, responses=ERRORS)
    def search_json(body: SearchRequest):
        image = None
        if body.image_base64 is not None:
            if len(body.image_base64) > api.max_upload_bytes * 4 // 3 + 4:
                raise QueryError(f"image is larger than {api.max_upload_bytes} bytes", 413)
            try:
                image = read_upload(base64.b64decode(body.image_base64, validate=True))
            except (binascii.Error, ValueError):
                raise QueryError("image_base64 is not valid base64") from None
        if body.text is not None and not body.text.strip():
            raise QueryError("empty query: text must contain words")
        for i in [body.tile_id, *body.positives, *body.negatives]:
            if i is not None and not 0 <= i <= MAX_ID:
                raise QueryError(f"unknown tile id {i}", status=404)
        bbox = tuple(body.bbox) if body.bbox is not None else None
        f = make_filters(bbox, body.start, body.end, body.sensor, body.source)
        q = Query(text=body.text, image=image, tile_id=body.tile_id,
                  positives=tuple(body.positives), negatives=tuple(body.negatives),
                  k=k_or_default(body.k), filters=f, collapse=body.collapse)
        return run(q, body.format)

    @app.get("/tiles/{tile_id}", response_model=TileInfo, dependencies=deps, responses=ERRORS)
    def tile(tile_id: TileId):
        r = engine.tile(tile_id)
        return TileInfo(native_gsd_m=r["native_gsd_m"], nodata_fraction=r["nodata_fraction"],
                        **place(r))

    @app.get("/tiles/{tile_id}/similar", response_model=SearchOut, dependencies=deps,
             responses=ERRORS)
    def similar(tile_id: TileId, k: K = None, bbox: Bbox = None, start: Start = None,
                end: End = None, sensor: Sensors = [], source: Sources = [],  # noqa: B006
                collapse: bool = False, format: Format = "json"):
        f = make_filters(parse_bbox(bbox), start, end, sensor, source)
        return run(Query(tile_id=tile_id, k=k_or_default(k), filters=f, collapse=collapse),
                   format)

    @app.get("/tiles/{tile_id}/thumbnail.jpg", dependencies=deps, responses={
        200: {"content": {"image/jpeg": {}}}, **ERRORS}, response_class=Response)
    def thumbnail(tile_id: TileId):
        # With an API key, no shared cache may keep a copy that it would serve without one.
        scope = "private" if api.api_key else "public"
        return Response(engine.thumbnail(tile_id), media_type="image/jpeg",
                        headers={"Cache-Control": f"{scope}, max-age=86400"})

    return app


def app_from_env() -> FastAPI:
    """For `uvicorn search.http.app:app_from_env --factory`: SATFIND_INDEX, SATFIND_CONFIG."""
    import os

    from search.settings import load_serve_config

    cfg = load_serve_config(os.environ.get("SATFIND_CONFIG") or None)
    return create_app(SearchEngine(Path(os.environ["SATFIND_INDEX"]), cfg))
