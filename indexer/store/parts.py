"""The Parquet parts: tiles/part-NNNNN.parquet (one row per tile) and thumbs/ (id + JPEG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexer.errors import IndexError_
from indexer.store import cells
from indexer.store.layout import THUMB_SCHEMA, THUMBS_DIR, TILE_SCHEMA, TILES_DIR, part_name
from indexer.store.manifest import Manifest, Part
from indexer.store.rows import arrow_path, write_arrow

# A tile's row as the writer takes it: every column but the id (given at commit).
ROW_SCHEMA = pa.schema([f for f in TILE_SCHEMA if f.name != "id"])


def read_part(path: Path, columns: list[str] | None = None, filters=None) -> pa.Table:
    """One Parquet part; a damaged one is an IndexError_ naming it."""
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except (OSError, pa.ArrowException) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IndexError_(f"{path.parent.name}/{path.name}: damaged Parquet part ({msg})"
                          ) from None


THUMB_GROUP = 256  # thumbnails per Parquet row group


def write_parquet(table: pa.Table, path: Path, compression: str = "zstd",
                  row_group_size: int | None = None) -> None:
    pq.write_table(table, path, compression=compression, row_group_size=row_group_size)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_part(d: Path, m: Manifest, tiles: pa.Table, thumbs: pa.Table) -> Part:
    """Write a new part pair under the manifest's next part number (which it advances)."""
    name = part_name(m.next_part)
    m.next_part += 1
    write_parquet(tiles, d / TILES_DIR / name)
    write_arrow(tiles, arrow_path(d / TILES_DIR / name))
    # JPEG: compression gains nothing and costs 3x the time. Small row groups: a read of a
    # few ids (a thumbnail, a map tile) skips the others by their id statistics.
    write_parquet(thumbs, d / THUMBS_DIR / name, compression="none", row_group_size=THUMB_GROUP)
    ids = tiles["id"].to_numpy()
    keys = sorted(set(tiles["source_key"].to_pylist()))
    return Part(name=name, rows=int(tiles.num_rows), id_min=int(ids.min()),
                id_max=int(ids.max()), sources=keys, arrow=True)


def rows_table(rows: list[dict] | pa.Table) -> pa.Table:
    """Tile rows as a table of ROW_SCHEMA: a table (the job's, built column-wise) as it is,
    its columns put in order; dicts (one per tile) converted, every column required."""
    if isinstance(rows, pa.Table):
        missing = [f.name for f in ROW_SCHEMA if f.name not in rows.column_names]
        if missing:
            raise ValueError(f"tile rows lack column(s) {', '.join(missing)}")
        t = rows.select(ROW_SCHEMA.names)
        return t if t.schema.equals(ROW_SCHEMA) else t.cast(ROW_SCHEMA)
    # Every row has every column (a column some rows lack would be filled with nulls).
    missing = {f.name for f in ROW_SCHEMA} - set.intersection(*map(set, rows)) if rows else ()
    if missing:
        raise ValueError(f"tile rows lack column(s) {', '.join(sorted(missing))}")
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def new_tables(first_id: int, rows: pa.Table, thumbs: list[bytes]) -> tuple[pa.Table,
                                                                           pa.Table]:
    """The part's two tables: `rows` (ROW_SCHEMA) and the thumbnails under ids from
    `first_id` on."""
    ids = pa.array(np.arange(first_id, first_id + rows.num_rows, dtype=np.int64))
    return (rows.add_column(0, TILE_SCHEMA.field("id"), ids),
            pa.table({"id": ids, "jpeg": binary_array(thumbs)}, schema=THUMB_SCHEMA))


BINARY_CHUNK = (1 << 31) - 1  # bytes at most in one Arrow binary array (int32 offsets)


def binary_array(values: list[bytes]) -> pa.ChunkedArray:
    """`values` as Arrow binary: joined into one buffer with their offsets, not appended one
    by one into a growing builder as pa.array does (a commit's 2,048 thumbnails of 13 KB:
    5-20 ms against 9-450 ms, while the writer thread holds the GIL the encoding thread
    needs); chunked where they pass 2 GB."""
    sizes = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    ends = np.cumsum(sizes)
    chunks, lo = [], 0
    while lo < len(values) or not chunks:
        base = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + BINARY_CHUNK, side="right")))
        hi = min(hi, len(values))
        offsets = np.zeros(hi - lo + 1, dtype=np.int32)
        offsets[1:] = ends[lo:hi] - base
        data = b"".join(values[lo:hi])
        chunks.append(pa.Array.from_buffers(pa.binary(), hi - lo,
                                            [None, pa.py_buffer(offsets), pa.py_buffer(data)]))
        lo = hi
    return pa.chunked_array(chunks, pa.binary())


def check_cells(rows: pa.Table) -> None:
    """A tile's bounds are its web-mercator cell's (readers filter by z/x/y alone)."""
    if not rows.num_rows:
        return
    cols = {c: rows[c].to_numpy() for c in ("z", "x", "y", "west", "south", "east", "north")}
    want = cells.cell_bounds(*(cols[c].astype(np.int64) for c in ("z", "x", "y")))
    for name, w in zip(("west", "south", "east", "north"), want, strict=True):
        bad = ~np.isclose(cols[name].astype(np.float64), w, rtol=0, atol=1e-9)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"tile {cols['z'][i]}/{cols['x'][i]}/{cols['y'][i]}: {name} "
                             f"{cols[name][i]} is not its web-mercator cell's ({w[i]})")


def source_tiles(d: Path, m: Manifest, key: str) -> set[tuple[int, int, int]]:
    """(z, x, y) of the committed tiles of source `key`."""
    out: set[tuple[int, int, int]] = set()
    for part in m.parts:
        if not part.may_hold(key):
            continue
        t = read_part(d / TILES_DIR / part.name, ["source_key", "z", "x", "y"])
        t = t.filter(pc.equal(t["source_key"], key))
        out.update(zip(t["z"].to_pylist(), t["x"].to_pylist(), t["y"].to_pylist(),
                       strict=True))
    return out


def without_source(d: Path, m: Manifest, key: str) -> tuple[list[Part], np.ndarray | None]:
    """The parts as they are once source `key`'s rows are gone (touched parts rewritten
    under new names, advancing m.next_part), and the ids removed (None when none)."""
    new_parts, dead = [], []
    for part in m.parts:
        if not part.may_hold(key):
            new_parts.append(part)
            continue
        tiles = read_part(d / TILES_DIR / part.name)
        hit = pc.equal(tiles["source_key"], key)
        if not pc.any(hit).as_py():
            new_parts.append(part)
            continue
        dead.append(tiles.filter(hit)["id"].to_numpy())
        kept = tiles.filter(pc.invert(hit))
        if kept.num_rows:
            thumbs = read_part(d / THUMBS_DIR / part.name)
            thumbs = thumbs.filter(pc.is_in(thumbs["id"], value_set=kept["id"]))
            new_parts.append(write_part(d, m, kept, thumbs))
    return new_parts, (np.concatenate(dead).astype(np.int64) if dead else None)
