"""Label sets (named positives / negatives, kept in the index directory) and the linear
classifier trained on one, which ranks the whole archive."""

from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi import Query as Q
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from indexer.store.tiles import Filters
from search import classifier, exports, regions
from search.engine import SearchEngine
from search.http.models import TileIdIn
from search.http.params import BBOX_PATTERN, TIME_PATTERN, make_filters, parse_bbox
from search.labels import LabelSet, LabelStore
from search.query import NotFound, QueryError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
LonLatIn = Annotated[list[Annotated[float, Field(ge=-180, le=180)]],
                     Field(min_length=2, max_length=2, description="lon, lat")]


def inside(px: np.ndarray, py: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Even-odd rule: which points (px, py) lie inside the polygon `ring` [n, 2]."""
    out = np.zeros(len(px), dtype=bool)
    xs, ys = ring[:, 0], ring[:, 1]
    for i in range(len(ring)):
        x0, y0, x1, y1 = xs[i - 1], ys[i - 1], xs[i], ys[i]
        crosses = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        out ^= crosses & (px < at)
    return out
Name = Annotated[str, PathParam(min_length=1, max_length=64, pattern=NAME_PATTERN,
                                examples=["quarries"])]


class LabelPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-85.06, le=85.06)
    positive: bool = True


class LabelPolygon(BaseModel):
    """A ring of lon/lat vertices (closed or not): every place whose tile centre is inside
    is labelled (its newest acquisition)."""

    model_config = ConfigDict(extra="forbid")
    coordinates: list[LonLatIn] = Field(min_length=3, max_length=1000)
    positive: bool = True


class LabelsIn(BaseModel):
    """Tiles to label: ids, and/or points (each resolved to the newest tile under it)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN, examples=["quarries"])
    positives: list[TileIdIn] = Field(default_factory=list, max_length=5000)
    negatives: list[TileIdIn] = Field(default_factory=list, max_length=5000)
    points: list[LabelPoint] = Field(default_factory=list, max_length=1000)
    polygons: list[LabelPolygon] = Field(default_factory=list, max_length=100)
    replace: bool = Field(False, description="replace the set (default: add to it; a tile "
                                             "labelled again takes its new label)")


def add_label_routes(app: FastAPI, engine: SearchEngine, deps: list, errors: dict) -> None:
    store = LabelStore(engine.dir)
    api = engine.api_settings

    def place(loaded, tile_id: int) -> dict:
        r = loaded.tiles.rows(np.asarray([tile_id]), ["z", "x", "y", "acquired", "source"])[0]
        r["acquired"] = r["acquired"].isoformat() if r["acquired"] else None
        return r

    def point_tile(loaded, lon: float, lat: float) -> int:
        """The newest tile under the point (the one GET /tiles/at and a map click name)."""
        hit = regions.tiles_at(loaded.tiles, lon, lat, Filters())
        if not len(hit):
            raise NotFound(f"no indexed tile under the point {lon}, {lat}")
        return int(hit[0])

    def polygon_tiles(loaded, ring: np.ndarray) -> list[int]:
        """The newest tile of every place whose centre lies inside the ring."""
        tiles = loaded.tiles
        (w, s), (e, n) = ring.min(axis=0), ring.max(axis=0)
        cand = (np.flatnonzero(tiles.box_mask(w, s, e, n)) if w < e and s < n
                else np.zeros(0, np.int64))  # the tiles overlapping the ring's box
        fw, fs, fe, fn = tiles.footprints(cand)
        cx, cy = (fw + fe) / 2, (fs + fn) / 2
        box = (cx >= w) & (cx <= e) & (cy >= s) & (cy <= n)
        hit = cand[box][inside(cx[box], cy[box], ring)]
        if not len(hit):
            raise NotFound("no indexed tile centre inside the polygon")
        return sorted(regions.latest_per_cell(tiles, hit).values())

    def summary(ls: LabelSet, loaded) -> dict:
        """The set's ids, and those no longer in the index (their source was removed)."""
        ids = np.asarray([*ls.positives, *ls.negatives], dtype=np.int64)
        missing = ids[~loaded.tiles.has(ids)] if len(ids) else ids
        return {"name": ls.name, "positives": sorted(ls.positives),
                "negatives": sorted(ls.negatives), "missing": sorted(missing.tolist())}

    def labelled(name: str) -> tuple[list[int], list[int]]:
        ls = store.get(name)
        loaded = engine.loaded

        def keep(ids: dict) -> list[int]:  # tiles still in the index
            arr = np.asarray(sorted(ids), dtype=np.int64)
            return arr[loaded.tiles.has(arr)].tolist() if len(arr) else []

        pos, neg = keep(ls.positives), keep(ls.negatives)
        if not pos and not neg:
            raise QueryError(f"label set {name!r} holds no tile of this index")
        return pos, neg

    engine.labelled = labelled  # the region routes refine queries by a label set

    @app.get("/labels", dependencies=deps, responses=errors)
    def list_labels():
        """The label sets of this index."""
        out = []
        for n in store.names():
            ls = store.get(n)
            out.append({"name": n, "positives": len(ls.positives),
                        "negatives": len(ls.negatives)})
        return {"label_sets": out}

    @app.post("/labels", dependencies=deps, responses=errors)
    def put_labels(body: LabelsIn):
        """Create or extend a label set (atomic; kept in the index directory)."""
        loaded = engine.loaded
        pos, neg = list(body.positives), list(body.negatives)
        for p in body.points:
            (pos if p.positive else neg).append(point_tile(loaded, p.lon, p.lat))
        for poly in body.polygons:
            found = polygon_tiles(loaded, np.asarray(poly.coordinates, dtype=np.float64))
            (pos if poly.positive else neg).extend(found)
        ids = np.asarray(pos + neg or [-1], dtype=np.int64)
        known = loaded.tiles.has(ids)
        if (pos or neg) and not known.all():
            raise NotFound(f"unknown tile id {int(ids[~known][0])}")
        try:
            ls = LabelSet(body.name) if body.replace else store.get(body.name)
        except NotFound:
            ls = LabelSet(body.name)
        for i in pos:
            ls.negatives.pop(i, None)
            ls.positives[i] = place(loaded, i)
        for i in neg:
            ls.positives.pop(i, None)
            ls.negatives[i] = place(loaded, i)
        store.put(ls)
        return summary(ls, loaded)

    @app.get("/labels/{name}", dependencies=deps, responses={
        200: {"content": {exports.MEDIA[f]: {} for f in exports.FORMATS}}, **errors})
    def get_labels(name: Name, format: Literal["json", "geojson", "csv", "arrow", "parquet"]
                   = "json"):
        """A label set: ids (json), or its tiles with a `label` column (1 / 0) as GeoJSON,
        CSV, Arrow or GeoParquet."""
        ls, loaded = store.get(name), engine.loaded
        if format == "json":
            return summary(ls, loaded)
        every = np.asarray([*ls.positives, *ls.negatives], dtype=np.int64)
        ids = every[loaded.tiles.has(every)].tolist() if len(every) else []
        t = exports.scored_table(loaded.tiles, ids, {
            "label": [int(i in ls.positives) for i in ids],
            "thumbnail_url": [exports.thumbnail_url(api.public_url, i) for i in ids]})
        meta = {"label_set": name, "encoder": loaded.snap.identity.short(),
                "generation": loaded.snap.generation}
        return Response(exports.encode(t, format, meta), media_type=exports.MEDIA[format])

    @app.delete("/labels/{name}", dependencies=deps, responses=errors)
    def delete_labels(name: Name):
        store.delete(name)
        return {"deleted": name}

    @app.get("/search/classifier", dependencies=deps, responses=errors)
    def classify(labels: Annotated[str, Q(description="the label set to train on")],
                 k: Annotated[int, Q(ge=1, le=api.max_k)] = api.default_k,
                 bbox: Annotated[str | None, Q(json_schema_extra={"pattern": BBOX_PATTERN})]
                 = None,
                 start: Annotated[str | None, Q(json_schema_extra={"pattern": TIME_PATTERN})]
                 = None,
                 end: Annotated[str | None, Q(json_schema_extra={"pattern": TIME_PATTERN})]
                 = None):
        """Train a logistic regression on the label set's tile vectors (spatially blocked
        5-fold CV reported: precision, recall, AUC), then rank every tile passing the
        filters by it (labelled tiles included, marked)."""
        pos, neg = labelled(labels)
        loaded = engine.loaded
        ids = np.asarray(pos + neg, dtype=np.int64)
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        z, x, yy = (c[ids].astype(np.int64) for c in loaded.tiles.cells())
        w, b, report = classifier.train(loaded.snap.get_vectors(ids), y,
                                        classifier.blocks(z, x, yy))
        f = make_filters(parse_bbox(bbox), start, end, [], [])
        sc = regions.region_scores(loaded, w, f, api.max_score_tiles)  # w . x, every tile
        top = np.lexsort((sc.ids, -sc.scores))[:k]
        rows = loaded.tiles.rows(sc.ids[top], ["id", "z", "x", "y", "west", "south", "east",
                                               "north", "acquired"])
        labelled_ids = {int(i): int(v) for i, v in zip(ids, y, strict=True)}
        for r, logit in zip(rows, sc.scores[top] + b, strict=True):
            r["probability"] = float(classifier.sigmoid(logit))
            r["label"] = labelled_ids.get(r["id"])
        return {"label_set": labels, "cv": report.to_dict(), "results": rows,
                "generation": loaded.snap.generation}
