"""Read side of an index directory: a consistent snapshot at one committed manifest.

`IndexSnapshot.open(dir)` reads the manifest, then exactly the files it names; a writer
may be appending at the same time (it never changes a named file, except growing the
append-only row files past the committed rows, which a snapshot never reads).
`newer_commit()` says when a writer has committed since, and `refreshed()` opens that commit
reading only what it added (new ANN codes, new Parquet parts) when it only added tiles.

The vector index of a snapshot is one or two segments: what was loaded whole, and (after
refreshes) the tiles added since, read from the code file's new rows. Once the second
segment grows past an eighth of the first, a refresh loads the index whole again.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from encoder.identity import EncoderIdentity
from indexer.config import TileRecipe
from indexer.errors import IndexError_
from indexer.store import ann, rows
from indexer.store.layout import MANIFEST, THUMBS_DIR, TILE_SCHEMA, TILES_DIR
from indexer.store.manifest import Manifest, SourceEntry, read_manifest
from indexer.store.parts import read_part
from indexer.store.vector_index import VectorIndex
from indexer.store.vectors import check_rows, open_rows

DELTA_FRACTION = 8  # a second segment up to 1/8 of the first; beyond it, load whole


def _stamp(d: Path) -> tuple:
    try:
        st = os.stat(d / MANIFEST)
    except FileNotFoundError:
        raise IndexError_(f"{d}: no committed index here (manifest.json missing)") from None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _check_parts(d: Path, m: Manifest, known: set[str] = frozenset()) -> None:
    """Every part the manifest names exists (FileNotFoundError: a writer raced us); parts
    named `known` were checked before (parts are never changed, only superseded)."""
    for p in m.parts:
        if p.name in known:
            continue
        for sub in (TILES_DIR, THUMBS_DIR):
            if not (d / sub / p.name).is_file():
                raise FileNotFoundError(p.name)
        if p.arrow and not rows.arrow_path(d / TILES_DIR / p.name).is_file():
            raise FileNotFoundError(rows.arrow_path(d / TILES_DIR / p.name))


def committed(index_dir: str | Path) -> tuple[int, int] | None:
    """(generation, tiles) of the committed index in `index_dir`; None when there is none."""
    m = read_manifest(Path(index_dir))
    return None if m is None else (m.generation, m.tiles)


class IndexSnapshot:
    def __init__(self, index_dir: Path, manifest: Manifest, segments: list[VectorIndex],
                 base_rows: int, stamp: tuple, part_cache: dict[str, pa.Table] | None = None,
                 base_deleted: int | None = None, dead: np.ndarray | None = None):
        """`base_deleted`: the tombstones the first segment was loaded with (default: the
        manifest's); `dead`: ids in the first segment removed since (searched around)."""
        self.dir = index_dir
        self.manifest = manifest
        self.segments = segments  # [whole index at base_rows ids] (+ [the tiles since])
        self._base_rows = base_rows
        self._base_deleted = manifest.deleted if base_deleted is None else base_deleted
        self._dead = dead if dead is not None and len(dead) else None
        self._live = None  # (packed bitmap of ids not dead, its length, live count)
        if self._dead is not None:
            live = np.ones(manifest.next_id, dtype=bool)
            live[self._dead] = False
            self._live = (np.packbits(live, bitorder="little"), len(live),
                          int(np.count_nonzero(live)), live)
        self.vectors = None  # float16 [next_id, D] memory map, or None
        if manifest.vectors_f16:
            check_rows(index_dir / manifest.vectors_f16, manifest.next_id, manifest.dim)
            self.vectors = open_rows(index_dir / manifest.vectors_f16, manifest.next_id,
                                     manifest.dim)
        self.identity: EncoderIdentity = manifest.encoder
        self._stamp = stamp
        # Tile metadata read so far, by part name (parts are never changed once written).
        names = {p.name for p in manifest.parts}
        self._part_cache = {k: v for k, v in (part_cache or {}).items() if k in names}
        # Thumbnail parts' footers and row-group id ranges, by part index (see thumbnails()).
        self._thumb_meta_cache: dict[int, tuple] = {}
        self._rows: rows.PartRows | None = None
        self._older_rows: rows.PartRows | None = None  # what a refresh starts from

    @classmethod
    def open(cls, index_dir: str | Path, retries: int = 5,
             part_cache: dict[str, pa.Table] | None = None) -> IndexSnapshot:
        """The committed index. `part_cache`: tile metadata already read, by part name (an
        older snapshot's; only the parts this commit names are kept)."""
        d = Path(index_dir)
        if not d.is_dir():
            raise IndexError_(f"{d}: no such index directory")
        for attempt in range(retries):
            stamp = _stamp(d)  # before the read: a commit after it shows as newer
            m = read_manifest(d)
            if m is None:
                raise IndexError_(f"{d}: no committed index here (manifest.json missing)")
            try:
                _check_parts(d, m)
                index = ann.load(d, m)
            except FileNotFoundError as e:
                # A writer committed (and cleaned up) between our manifest read and open.
                if attempt == retries - 1:
                    raise IndexError_(f"{d}: {Path(str(e)).name}, named by the manifest, is "
                                      "missing") from None
                continue
            return cls(d, m, [index], m.next_id, stamp, part_cache)
        raise AssertionError("unreachable")

    def refreshed(self) -> IndexSnapshot:
        """The latest commit: this snapshot when there is none newer; else what it added on
        top of this one when it only added tiles (ANN codes of the new ids, the new parts'
        metadata), else opened whole."""
        stamp = _stamp(self.dir)
        if stamp == self._stamp:
            return self
        m = read_manifest(self.dir)
        old = self.manifest
        same = (m is not None and m.version == old.version == 2
                and (m.index.file, m.index.codes) == (old.index.file, old.index.codes)
                and m.next_id >= old.next_id and m.deleted >= old.deleted
                and (m.next_id - self._base_rows) * DELTA_FRACTION <= self._base_rows)
        if same:
            try:
                _check_parts(self.dir, m, {p.name for p in old.parts})
                # Removed since the first segment was loaded: ids in it are searched around
                # (a bitmap); the second segment is loaded without them.
                dead = ann.deleted_ids(self.dir, m, start=self._base_deleted)
                dead = np.unique(dead[dead < self._base_rows]).astype(np.int64)
                if len(dead) * DELTA_FRACTION <= self._base_rows:
                    delta = ann.load(self.dir, m, start=self._base_rows)
                    snap = IndexSnapshot(self.dir, m, [self.segments[0], delta],
                                         self._base_rows, stamp, self._part_cache,
                                         base_deleted=self._base_deleted, dead=dead)
                    if snap.ntotal == m.index.ntotal:
                        snap._older_rows = self._rows
                        return snap
            except FileNotFoundError:
                pass  # cleaned up under us by yet another commit: open whole
        return IndexSnapshot.open(self.dir, part_cache=self._part_cache)

    def newer_commit(self) -> bool:
        """Has a writer committed since this snapshot was opened?"""
        return _stamp(self.dir) != self._stamp

    @functools.cached_property
    def tile_parts(self) -> list[Path]:
        """The Parquet tile parts, in manifest order (made when first asked for: a pick-up
        of one commit does not build a path per part)."""
        return [self.dir / TILES_DIR / p.name for p in self.manifest.parts]

    @functools.cached_property
    def thumb_parts(self) -> list[Path]:
        return [self.dir / THUMBS_DIR / p.name for p in self.manifest.parts]

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def ntotal(self) -> int:
        """Live tiles in the vector index (the first segment's removed ones not counted)."""
        dead = 0 if self._dead is None else len(self._dead)
        return sum(s.ntotal for s in self.segments) - dead

    @property
    def next_id(self) -> int:
        """One past the largest tile id ever given (ids of removed tiles are not reused)."""
        return self.manifest.next_id

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def sources(self) -> dict[str, SourceEntry]:
        return self.manifest.sources

    @property
    def recipe(self) -> TileRecipe | None:
        """How the tiles were cut; None for an index written before recipes were recorded."""
        return self.manifest.recipe

    def describe_index(self) -> dict:
        """The vector index as the manifest records it (no file name)."""
        return {k: v for k, v in vars(self.manifest.index).items()
                if v is not None and k != "file"}

    def check_encoder(self, identity: EncoderIdentity) -> None:
        if identity != self.identity:
            raise IndexError_(
                f"{self.dir}: index was built with encoder {self.identity.short()}, "
                f"but the query encoder is {identity.short()}"
                + (f" (start with --encoder {self.identity.preset})" if self.identity.preset
                   else "")
            )

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest tiles by inner product; ids are -1 past the end.
        `allowed`: bool per tile id (length next_id), only those are returned."""
        found = []
        for i, s in enumerate(self.segments):
            if not s.ntotal:
                continue
            if i == 0 and self._live is not None:  # leave out the ids removed since loading
                packed, n, live, mask = self._live
                found.append(s.search(queries, k, nprobe=nprobe, allowed=mask & allowed)
                             if allowed is not None else
                             s.search(queries, k, nprobe=nprobe, packed=(packed, n, live)))
            else:
                found.append(s.search(queries, k, nprobe=nprobe, allowed=allowed))
        if not found:
            q = np.atleast_2d(queries)
            return (np.full((len(q), k), -np.inf, dtype=np.float32),
                    np.full((len(q), k), -1, dtype=np.int64))
        if len(found) == 1:
            return found[0]
        scores = np.hstack([f[0] for f in found])
        ids = np.hstack([f[1] for f in found])
        scores = np.where(ids < 0, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(scores, order, 1).astype(np.float32),
                np.take_along_axis(ids, order, 1))

    def get_vectors(self, ids) -> np.ndarray:
        """float32 vectors of tile ids, from the float16 copies."""
        if self.vectors is None:
            raise IndexError_(f"{self.dir}: built without float16 vector copies")
        return np.asarray(self.vectors[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def tiles(self, columns: list[str] | None = None) -> pa.Table:
        """Tile metadata of every committed tile, in id order, as plain columns (tests,
        tools, exports; a server reads rows by id through `part_rows`)."""
        parts = sorted(self.manifest.parts, key=lambda p: p.id_min)
        if not parts:
            table = TILE_SCHEMA.empty_table()
            return table.select(columns) if columns else table
        return pa.concat_tables([rows.plain(self.part_table(p).select(columns or TILE_SCHEMA.names))
                                 for p in parts])

    def part_rows(self) -> rows.PartRows:
        """Every part's rows, found by id (made once per snapshot; after a refresh, from the
        older snapshot's plus the new parts)."""
        if self._rows is None:
            parts = {p.name: p for p in self.manifest.parts}
            if self._older_rows is not None:
                self._rows = self._older_rows.updated(
                    list(parts), lambda name: self.part_table(parts[name]))
            else:
                self._rows = rows.PartRows([self.part_table(p) for p in parts.values()],
                                           list(parts))
            self._older_rows = None
        return self._rows

    def changes_since(self, older: IndexSnapshot) -> tuple[list[pa.Table], np.ndarray] | None:
        """(the rows of the parts added, the ids of the tiles removed) since `older`,
        opening only the new parts and reading the new tombstones; None when that cannot
        be said without reading everything (another directory, the first format, a part
        holding ids from both sides of `older`'s last id). A removal rewrites the parts it
        touched under new names: their rows are `older`'s less the removed ids."""
        m, old = self.manifest, older.manifest
        if (older.dir != self.dir or older.next_id > self.next_id or m.version != 2
                or old.version != 2 or m.deleted < old.deleted):
            return None
        before = {p.name for p in old.parts}
        new = sorted((p for p in m.parts if p.name not in before), key=lambda p: p.id_min)
        if any(p.id_min < older.next_id <= p.id_max for p in new):
            return None
        added = [self.part_table(p) for p in new if p.id_min >= older.next_id]
        removed = ann.deleted_ids(self.dir, m, start=old.deleted).astype(np.int64)
        return added, removed

    def part_table(self, part) -> pa.Table:
        """One part's tile metadata: its Arrow copy memory-mapped, or (a part written before
        those) its Parquet read into memory; opened once per snapshot lineage."""
        if part.name not in self._part_cache:
            path = self.dir / TILES_DIR / part.name
            self._part_cache[part.name] = (rows.map_arrow(rows.arrow_path(path)) if part.arrow
                                           else read_part(path))
        return self._part_cache[part.name]

    def thumbnails(self, ids) -> dict[int, bytes]:
        """JPEG thumbnails of many tiles: per part, only the row groups whose id range holds
        some of them (the footer is parsed once per snapshot, the file opened per read)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        out: dict[int, bytes] = {}
        for i, part in enumerate(self.manifest.parts):
            mine = ids[(ids >= part.id_min) & (ids <= part.id_max)]
            if not len(mine):
                continue
            path = self.thumb_parts[i]
            try:
                meta, ranges = self._thumb_meta(i)
                groups = [g for g, (lo, hi) in enumerate(ranges)
                          if lo is None or bool(np.any((mine >= lo) & (mine <= hi)))]
                if not groups:
                    continue
                t = pq.ParquetFile(path, metadata=meta).read_row_groups(groups,
                                                                        columns=["id", "jpeg"])
            except (OSError, pa.ArrowException) as e:
                raise IndexError_(f"{THUMBS_DIR}/{path.name}: damaged Parquet part "
                                  f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                                  ) from None
            t = t.filter(pc.is_in(t["id"], value_set=pa.array(mine)))
            out.update(zip(t["id"].to_pylist(), t["jpeg"].to_pylist(), strict=True))
        return out

    def _thumb_meta(self, i: int):
        """(Parquet footer, [(min id, max id) per row group]) of thumbnail part i."""
        cache = self._thumb_meta_cache
        if i not in cache:
            meta = pq.read_metadata(self.thumb_parts[i])
            col = meta.schema.names.index("id")
            ranges = []
            for g in range(meta.num_row_groups):
                st = meta.row_group(g).column(col).statistics
                ranges.append((st.min, st.max) if st is not None and st.has_min_max
                              else (None, None))
            cache[i] = (meta, ranges)
        return cache[i]

    def thumbnail(self, tile_id: int) -> bytes | None:
        return self.thumbnails([int(tile_id)]).get(int(tile_id))
