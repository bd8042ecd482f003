"""Tile rows by id, for the k results of a query and for exports, without holding the rows.

Each part's tile metadata is also written as an uncompressed Arrow IPC file next to its
Parquet (tiles/part-NNNNN.arrow, strings as per-part dictionaries). A reader memory-maps it:
the rows are read in place, so a server's resident memory holds none of the rows it does not
show, and opening a part costs a file open, not a Parquet decode. Parquet stays the source of
truth (DuckDB, exports, older parts): a part written before the Arrow copies existed is read
from its Parquet into memory, the same table to everything downstream.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer.errors import IndexError_
from indexer.store.layout import TILE_SCHEMA

DICT_COLUMNS = ("source", "source_key", "sensor")  # few values per part
ARROW_SCHEMA = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string()))
                          if f.name in DICT_COLUMNS else f for f in TILE_SCHEMA])


def arrow_path(parquet: Path) -> Path:
    return parquet.with_suffix(".arrow")


def as_arrow(table: pa.Table) -> pa.Table:
    """`table` (TILE_SCHEMA) with the string columns dictionary-encoded (ARROW_SCHEMA)."""
    cols = [pc.dictionary_encode(table[f.name]) if f.name in DICT_COLUMNS
            else table[f.name] for f in TILE_SCHEMA]
    return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(cols, ARROW_SCHEMA,
                                                                strict=True)],
                                schema=ARROW_SCHEMA)


def plain(table: pa.Table) -> pa.Table:
    """Dictionary columns back to plain strings (what callers and exports see)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table[f.name].cast(f.type.value_type))
    return table


def write_arrow(table: pa.Table, path: Path) -> None:
    """A part's rows as an Arrow IPC file (durable before the manifest names the part)."""
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, ARROW_SCHEMA) as w:
        w.write_table(as_arrow(table))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def map_arrow(path: Path) -> pa.Table:
    """The part's rows, memory-mapped (nothing read until used)."""
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IndexError_(f"{path.parent.name}/{path.name}: damaged Arrow part ({msg})"
                          ) from None


def _entry(name: str, table: pa.Table) -> tuple | None:
    """(first id, name, table, ids) of a part; None when it holds no row."""
    if not table.num_rows:
        return None
    ids = table["id"].to_numpy()
    return int(ids[0]), name, table, ids


class PartRows:
    """The rows of a snapshot's parts, found by id (parts hold disjoint id ranges, each in
    id order)."""

    def __init__(self, tables: list[pa.Table], names: list[str] | None = None):
        """`names`: the parts' names (what `updated` keeps or adds by)."""
        names = names or [f"#{i}" for i in range(len(tables))]
        self._set([_entry(n, t) for n, t in zip(names, tables, strict=True)])

    def _set(self, entries: list) -> None:
        self._entries = sorted((e for e in entries if e is not None), key=lambda e: e[0])
        self.tables = [e[2] for e in self._entries]
        self._ids = [e[3] for e in self._entries]
        self._starts = np.asarray([e[0] for e in self._entries], dtype=np.int64)

    def updated(self, names: list[str], table_of) -> PartRows:
        """The rows of parts `names`: those held kept as they are, the others opened with
        `table_of(name)` (a commit's pick-up costs its new parts, not every part)."""
        held = {e[1]: e for e in self._entries}
        out = object.__new__(PartRows)
        out._set([held[n] if n in held else _entry(n, table_of(n)) for n in names])
        return out

    def _groups(self, ids: np.ndarray):
        """(part index, positions in `ids`, rows in that part) for each part holding some
        of `ids` (which must be held): one sort, not one pass over the ids per part."""
        part = np.searchsorted(self._starts, ids, side="right") - 1
        order = np.argsort(part, kind="stable")
        bounds = np.flatnonzero(np.diff(part[order])) + 1
        for at in np.split(order, bounds):
            p = int(part[at[0]])
            yield p, at, np.searchsorted(self._ids[p], ids[at])

    def take(self, ids, columns: list[str]) -> pa.Table:
        """The rows of `ids` (held ones), in that order, as plain columns."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids) or not self.tables:
            return plain(self.tables[0].select(columns).slice(0, 0) if self.tables
                         else TILE_SCHEMA.empty_table().select(columns))
        pieces, where = [], []
        for p, at, rows in self._groups(ids):
            pieces.append(plain(self.tables[p].select(columns).take(pa.array(rows))))
            where.append(at)
        out = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
        at = np.concatenate(where)
        if len(pieces) > 1 or not np.array_equal(at, np.arange(len(at))):
            out = out.take(pa.array(np.argsort(at, kind="stable")))
        return out

    def micros(self, ids) -> np.ndarray:
        """Exact acquisition times of `ids` as int64 microseconds (nulls as int64 min)."""
        t = self.take(ids, ["acquired"])["acquired"]
        t = pc.fill_null(pc.cast(t, pa.int64()), np.iinfo(np.int64).min)
        return t.to_numpy()
