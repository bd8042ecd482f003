"""Tiles with scores as files: columnar JSON, GeoJSON, CSV, Arrow IPC and GeoParquet (with
the query, filters, encoder and index commit in the file's metadata)."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

EXPORT_COLUMNS = ["id", "z", "x", "y", "west", "south", "east", "north", "acquired", "source",
                  "sensor", "gsd_m"]
MEDIA = {
    "json": "application/json",
    "geojson": "application/geo+json",
    "csv": "text/csv",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
FORMATS = tuple(MEDIA)
# What a heat map needs (bounds follow from z/x/y): the default of columnar JSON.
COMPACT = ["id", "score", "z", "x", "y", "acquired"]


def thumbnail_url(public_url: str, tile_id: int) -> str:
    """A tile's thumbnail URL: relative, or absolute under `api.public_url`."""
    return f"{public_url.rstrip('/')}/tiles/{int(tile_id)}/thumbnail.jpg"


def scored_table(tiles, ids, columns: dict, compact: bool = False) -> pa.Table:
    """The rows of tiles `ids` (of a TileTable) plus extra columns (name -> array), e.g.
    score; `compact`: only the COMPACT columns are gathered."""
    keep = [c for c in EXPORT_COLUMNS if not compact or c in COMPACT]
    t = tiles.take(np.asarray(ids, dtype=np.int64), keep)
    for name, values in columns.items():
        t = t.append_column(name, pa.array(values))
    return t


def _wkb_boxes(t: pa.Table) -> pa.Array:
    """Tile footprints as WKB polygons (little-endian, one closed ring of 5 points)."""
    w, s, e, n = (t[c].to_numpy() for c in ("west", "south", "east", "north"))
    head = struct.pack("<BII", 1, 3, 1) + struct.pack("<I", 5)
    ring = np.stack([w, s, e, s, e, n, w, n, w, s], axis=1).astype("<f8")
    return pa.array([head + r.tobytes() for r in ring], type=pa.binary())


def geojson(t: pa.Table) -> dict:
    rows = t.to_pylist()
    feats = []
    for r in rows:
        w, s, e, n = r["west"], r["south"], r["east"], r["north"]
        props = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()
                 if k not in ("west", "south", "east", "north")}
        feats.append({"type": "Feature", "id": r["id"], "properties": props, "geometry": {
            "type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}})
    return {"type": "FeatureCollection", "features": feats}


def iso_times(col: pa.Array) -> list[str | None]:
    """ISO 8601 strings of a UTC timestamp column; each distinct time (tiles of one
    acquisition share it) formatted once."""
    micros = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
    valid = ~np.asarray(col.is_null())
    if not len(micros):
        return []
    uniq, inverse = np.unique(np.where(valid, micros, 0), return_inverse=True)
    text = np.datetime_as_string(uniq.astype("datetime64[us]"), unit="s")
    labels = np.array([f"{t}+00:00" for t in text], dtype=object)[inverse]
    labels[~valid] = None
    return labels.tolist()


def columnar(t: pa.Table) -> dict:
    """One array per column: numbers as numpy arrays (orjson writes them natively), times
    as ISO 8601 strings (formatted by Arrow, not row by row in Python)."""
    out = {}
    for name in t.column_names:
        col = t[name].combine_chunks() if t[name].num_chunks != 1 else t[name].chunk(0)
        if pa.types.is_timestamp(col.type):
            out[name] = iso_times(col)
        elif (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) and \
                col.null_count == 0:
            out[name] = col.to_numpy(zero_copy_only=False)
        else:
            out[name] = col.to_pylist()
    return out


def encode(t: pa.Table, fmt: str, meta: dict, compact: bool = False) -> bytes:
    """`t` as bytes in `fmt`; `meta` (query, filters, encoder, commit) goes into the file:
    a top-level "satfind" member (JSON, GeoJSON), schema metadata (Arrow, Parquet), or
    '#' comment lines (CSV). `compact`: JSON with the COMPACT columns only."""
    if fmt == "json":
        if compact:
            t = t.select([c for c in t.column_names if c in COMPACT])
        return orjson.dumps({"count": t.num_rows, "satfind": meta, **columnar(t)},
                            option=orjson.OPT_SERIALIZE_NUMPY)
    if fmt == "geojson":
        return json.dumps({**geojson(t), "satfind": meta}).encode()
    if fmt == "csv":
        buf = io.BytesIO()
        pacsv.write_csv(t, buf)
        head = "".join(f"# {k}: {json.dumps(v)}\n" for k, v in meta.items())
        return head.encode() + buf.getvalue()
    schema_meta = {b"satfind": json.dumps(meta).encode()}
    if fmt == "arrow":
        t = t.replace_schema_metadata(schema_meta)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        return sink.getvalue().to_pybytes()
    if fmt == "parquet":  # GeoParquet 1.1: a WKB geometry column and the "geo" metadata
        t = t.append_column("geometry", _wkb_boxes(t))
        geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {
            "encoding": "WKB", "geometry_types": ["Polygon"],  # no crs: OGC:CRS84
            "bbox": _bbox(t)}}}
        t = t.replace_schema_metadata({**schema_meta, b"geo": json.dumps(geo).encode()})
        buf = io.BytesIO()
        pq.write_table(t, buf)
        return buf.getvalue()
    raise ValueError(f"unknown format {fmt!r}")


def _bbox(t: pa.Table) -> list[float]:
    if not t.num_rows:
        return []
    return [float(t["west"].to_numpy().min()), float(t["south"].to_numpy().min()),
            float(t["east"].to_numpy().max()), float(t["north"].to_numpy().max())]
