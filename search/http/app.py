"""The FastAPI app: middleware, API-key and query-parameter checks, and the one table that
maps exception types to HTTP statuses; the routes are in `search.http.routes`."""

import re
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from indexer.errors import FilterError, IndexError_
from search.engine import SearchEngine
from search.http.bodylimit import BodyLimit
from search.http.docs import ASSETS, add_docs
from search.http.models import (
    ErrorBody,
)
from search.http.params import query_params
from search.http.routes import add_routes
from search.http.routes_labels import add_label_routes
from search.http.routes_map import add_map_routes
from search.http.routes_region import add_region_routes
from search.query import NotFound, QueryError, TooLarge
from search.query_image import ImageError, UnsupportedImageType


def body_limit_bytes(max_upload_bytes: int) -> int:
    """The largest request body: one query image as base64 in JSON (4/3 of its bytes) plus
    64 KiB for the other fields."""
    return max_upload_bytes * 4 // 3 + 65536


OPEN_PATHS = {"/health", "/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"}
# Every error the API returns has the same body, 422 (FastAPI's request validation) included.
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 503)}


class Unauthorized(QueryError):
    """No API key, or the wrong one."""


# The one place where exception types become HTTP statuses (most specific first).
STATUS: dict[type[Exception], int] = {
    Unauthorized: 401,
    NotFound: 404,
    TooLarge: 413,
    UnsupportedImageType: 415,
    ImageError: 400,
    FilterError: 400,
    QueryError: 400,
    IndexError_: 503,
}


def status_of(e: Exception) -> int:
    return next(code for kind, code in STATUS.items() if isinstance(e, kind))


def create_app(engine: SearchEngine) -> FastAPI:
    api = engine.api_settings
    app = FastAPI(
        title="satfind",
        version="0.1.0",
        description="Text-to-image and image-to-image retrieval over satellite tile archives.",
        docs_url=None, redoc_url=None,  # search.http.docs serves both without a CDN
    )
    add_docs(app)
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

    def _mapped(_: Request, e: Exception):
        status = status_of(e)
        prefix = "index unavailable: " if status == 503 else ""
        return JSONResponse({"detail": prefix + public(str(e))}, status_code=status)

    for error_type in STATUS:
        app.add_exception_handler(error_type, _mapped)

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
        if api.api_key and request.url.path not in OPEN_PATHS and not request.url.path.startswith(
                ASSETS + "/"):
            if not x_api_key or not secrets.compare_digest(x_api_key.encode(),
                                                           api.api_key.encode()):
                raise Unauthorized("missing or wrong X-API-Key")

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
            known = known_params[id(route)] = {p.alias for p in query_params(dependant)}
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            raise QueryError(f"unknown query parameter {unknown[0]!r} (this route takes: "
                             f"{', '.join(sorted(known)) or 'none'})")

    deps = [Depends(check_key), Depends(check_query)]
    add_routes(app, engine, deps, ERRORS)
    add_label_routes(app, engine, deps, ERRORS)
    add_region_routes(app, engine, deps, ERRORS, lambda name: engine.labelled(name))
    add_map_routes(app, engine, deps, ERRORS)
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn search.http.app:app_from_env --factory`: SATFIND_INDEX, SATFIND_CONFIG."""
    import os

    from search.settings import load_serve_config

    cfg = load_serve_config(os.environ.get("SATFIND_CONFIG") or None)
    return create_app(SearchEngine(Path(os.environ["SATFIND_INDEX"]), cfg))
