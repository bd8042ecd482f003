"""Map routes: the archive's own imagery as XYZ tiles, query scores as an XYZ overlay, and
where in one tile a query matches (patch-token similarity)."""

from typing import Annotated, Literal

import mercantile
import numpy as np
from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi import Query as Q
from fastapi.responses import Response

from search import mosaic
from search.engine import SearchEngine
from search.http.models import JSON_MAX_ID, Histogram, ScoreLegend
from search.http.params import TIME_PATTERN, make_filters
from search.http.routes_region import QueryText, TileParam, base_query
from search.lru import LRU
from search.query import NotFound, QueryError

Z = Annotated[int, PathParam(ge=0, le=24, description="web-mercator zoom", examples=[14])]
XY = Annotated[int, PathParam(ge=0, le=2**24, description="XYZ tile column / row (below 2^z)",
                              examples=[3677])]
Time = Annotated[str | None, Q(json_schema_extra={"pattern": TIME_PATTERN})]
Labels = Annotated[str | None, Q(description="a label set", examples=["quarries"])]
PNG = {200: {"content": {"image/png": {}}}}
LEGEND_STOPS, LEGEND_BINS = 9, 20


def _check_xyz(z: int, x: int, y: int) -> None:
    if x >= 2**z or y >= 2**z:
        raise NotFound(f"no map tile {z}/{x}/{y} (x and y must be below {2**z})")


def add_map_routes(app: FastAPI, engine: SearchEngine, deps: list, errors: dict) -> None:
    api = engine.api_settings
    tiles_cache = mosaic.Mosaic(lambda snap, ids: snap.thumbnails(ids), api.map_cache_tiles)
    scores_cache = LRU(8)  # the archive's scores of the last queries, for their overlays
    scope = "private" if api.api_key else "public"

    def under(loaded, z, x, y, start, end, sensor) -> np.ndarray:
        """Ids of the tiles whose cell overlaps map tile z/x/y and that pass the filters
        (the zone maps find them: no pass over every tile for one map tile)."""
        return np.flatnonzero(loaded.tiles.mask(make_filters(None, start, end, sensor, []),
                                                within=tuple(mercantile.bounds(x, y, z))))

    def image(img, fmt: str) -> Response:
        if img is None:
            if fmt == "png":  # transparent where nothing is indexed
                img = np.zeros((mosaic.PX, mosaic.PX, 4), np.uint8)
            else:
                raise NotFound("nothing indexed in this map tile")
        media = "image/png" if fmt == "png" else "image/jpeg"
        return Response(mosaic.encode(img, fmt), media_type=media,
                        headers={"Cache-Control": f"{scope}, max-age=300"})

    @app.get("/map/{z}/{x}/{y}.{fmt}", dependencies=deps, response_class=Response,
             responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, **errors})
    def map_tile(z: Z, x: XY, y: XY, fmt: Literal["jpg", "png"], start: Time = None,
                 end: Time = None, sensor: Annotated[list[str], Q()] = []):  # noqa: B006
        """The archive's own imagery as a 256 px XYZ tile (web mercator): stored thumbnails,
        newest acquisition on top (or only those in start/end/sensor); lower zooms are
        the 2x box-downsampled mosaic, higher zooms upsampled. PNG is transparent where
        nothing is indexed; JPEG is 404 there."""
        _check_xyz(z, x, y)
        loaded = engine.loaded
        key = (loaded.snap.generation, start, end, tuple(sensor))
        return image(tiles_cache.render(loaded, lambda: under(loaded, z, x, y, start, end,
                                                              sensor), key, z, x, y), fmt)

    def archive_scores(loaded, q, tile, labels, start, end, sensor):
        key = (loaded.snap.generation, q, tile, labels, start, end, tuple(sensor))
        cached = scores_cache.get(key, None)
        if cached is not None:
            return cached
        pos, neg = engine.labelled(labels) if labels else ((), ())
        f = make_filters(None, start, end, sensor, [])
        _, sc = engine.region_scores(base_query(q, tile, pos, neg, filters=f),
                                     api.max_score_tiles)
        lo, hi = (np.percentile(sc.scores, [50, 100]) if len(sc.scores) else (0.0, 1.0))
        value = (sc, float(lo), float(hi))
        scores_cache.put(key, value)
        return value

    @app.get("/map/scores/legend", response_model=ScoreLegend, dependencies=deps,
             responses=errors)
    def score_legend(q: QueryText = None, tile: TileParam = None, labels: Labels = None,
                     start: Time = None, end: Time = None,
                     sensor: Annotated[list[str], Q()] = []):  # noqa: B006
        """The legend of the score overlay for this query: its default range (vmin, vmax:
        the numbers the score tiles use and send as X-Satfind-Vmin/Vmax), the colour ramp
        from vmin to vmax, and a histogram of every tile's score."""
        sc, lo, hi = archive_scores(engine.loaded, q, tile, labels, start, end, sensor)
        counts, edges = np.histogram(sc.scores.astype(np.float64), bins=LEGEND_BINS)
        return ScoreLegend(vmin=lo, vmax=hi, ramp=mosaic.ramp_hex(LEGEND_STOPS),
                           histogram=Histogram(edges=edges.tolist(), counts=counts.tolist()),
                           count=len(sc.scores))

    @app.get("/map/scores/{z}/{x}/{y}.png", dependencies=deps, response_class=Response,
             responses={**PNG, **errors})
    def score_tile(z: Z, x: XY, y: XY, q: QueryText = None, tile: TileParam = None,
                   labels: Labels = None, start: Time = None, end: Time = None,
                   sensor: Annotated[list[str], Q()] = [],  # noqa: B006
                   vmin: Annotated[float | None, Q(ge=-1, le=1)] = None,
                   vmax: Annotated[float | None, Q(ge=-1, le=1)] = None,
                   threshold: Annotated[float | None, Q(ge=-1, le=1, description=(
                       "tiles scoring below it are not drawn"))] = None):
        """The query's score of every tile as a colour-mapped transparent overlay (dark
        blue = vmin, yellow = vmax; default: the archive's median and best score for this
        query, so colours agree across map tiles). Headers X-Satfind-Vmin/Vmax say the
        range used. With `threshold`, tiles scoring below it are left transparent."""
        _check_xyz(z, x, y)
        loaded = engine.loaded
        sc, lo, hi = archive_scores(loaded, q, tile, labels, start, end, sensor)
        lo = lo if vmin is None else vmin
        hi = hi if vmax is None else vmax
        if hi <= lo:
            raise QueryError("vmax must be above vmin")
        img = mosaic.score_overlay(loaded.tiles, sc.ids, sc.scores, z, x, y, lo, hi,
                                   threshold=threshold)
        resp = image(img, "png")
        resp.headers["X-Satfind-Vmin"], resp.headers["X-Satfind-Vmax"] = f"{lo:.6f}", f"{hi:.6f}"
        return resp

    @app.get("/tiles/{tile_id}/where.{fmt}", dependencies=deps, response_class=Response,
             responses={200: {"content": {"image/png": {}, "application/json": {}}}, **errors})
    def where(tile_id: Annotated[int, PathParam(ge=0, le=JSON_MAX_ID)], fmt: Literal["png", "json"],
              q: QueryText = None, tile: TileParam = None):
        """Where in the tile the query matches: the cosine similarity of each ViT patch token
        (projected into the joint space) with the query, as a transparent overlay aligned
        with the tile (PNG, the thumbnail's size), or as JSON with the grid and the peak's
        lon/lat. Pixels come from the source raster when it is readable, else from the
        stored thumbnail (header X-Satfind-Pixels says which)."""
        result = engine.where(tile_id, base_query(q, tile))
        if fmt == "json":
            return Response(result.to_json(), media_type="application/json")
        return Response(result.png(), media_type="image/png",
                        headers={"X-Satfind-Pixels": result.pixels})

