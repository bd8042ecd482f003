"""`IndexWriter`: the store's write API. Sources are begun, get tiles added, are finished or
removed; each `commit()` makes everything so far visible atomically (the manifest rename).
One writer at a time (an advisory lock); readers never lock."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np

from encoder.identity import EncoderIdentity
from indexer.config import StoreSettings, TileRecipe
from indexer.critical import deferred_interrupts
from indexer.errors import IndexError_
from indexer.logs import native_stderr_to_log
from indexer.store import directory
from indexer.store.layout import (
    THUMBS_DIR,
    TILES_DIR,
    VECTORS_F16,
    atomic_write_bytes,
    faiss_name,
    fsync_dir,
)
from indexer.store.manifest import Manifest, SourceEntry, now, read_manifest, write_manifest
from indexer.store.parts import new_tables, source_tiles, without_source, write_part
from indexer.store.vector_index import VectorIndex
from indexer.store.vectors import VectorFileWriter, open_vectors


class IndexWriter:
    def __init__(self, index_dir: str | Path, identity: EncoderIdentity,
                 settings: StoreSettings, recipe: TileRecipe | None = None,
                 create: bool = True):
        """`recipe`: how the tiles to be added were cut; an index cut another way is
        refused (None: no tiles will be added, e.g. only removals)."""
        if str(index_dir).strip() == "":
            raise IndexError_("the index directory is empty: give a path (e.g. --index idx)")
        self.dir = Path(index_dir)
        self.settings = settings
        directory.check_directory(self.dir, create)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = directory.WriterLock(self.dir)
        try:
            directory.check_directory(self.dir, create)  # again, now that no writer can act
            self._open(identity, recipe)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, identity: EncoderIdentity, recipe: TileRecipe | None) -> None:
        m = read_manifest(self.dir)
        self._created = m is None
        if m is None:
            # The manifest comes first: from here on the directory is provably an index, and
            # only then are its sub-folders created.
            m = Manifest(encoder=identity, dim=identity.embed_dim, recipe=recipe,
                         vectors_f16=VECTORS_F16 if self.settings.keep_float16 else None)
            write_manifest(self.dir, m)
        _check_same_space(self.dir, m, identity, recipe)
        (self.dir / TILES_DIR).mkdir(exist_ok=True)
        (self.dir / THUMBS_DIR).mkdir(exist_ok=True)
        self.m = m
        self.dim = m.dim
        self._recipe = recipe
        self.index = (VectorIndex.read(self.dir / m.index.file, m.dim, m.index.ntotal)
                      if m.index.file else VectorIndex.flat(self.dim))
        self._vectors = None
        if m.vectors_f16:
            self._vectors = VectorFileWriter(self.dir / m.vectors_f16, self.dim, m.next_id)
        directory.clean_garbage(self.dir, m)
        # Each entry is one add(): (rows, float32 vectors, thumbnails), appended in one step.
        self._buf: list[tuple[list[dict], np.ndarray, list[bytes]]] = []
        self._dirty = m.generation == 0  # a new index commits even when empty

    # --- what is already there -------------------------------------------------------------
    @property
    def sources(self) -> Mapping[str, SourceEntry]:
        """Every source of the index, as of the last change (read-only)."""
        return MappingProxyType(self.m.sources)

    def find_sources(self, target: str) -> list[str]:
        """Keys of the sources named by `target`: a source key or a raster path."""
        path = str(Path(target).resolve())
        return [k for k, e in self.m.sources.items() if k == target or e.path == path]

    def committed_tiles(self, key: str) -> set[tuple[int, int, int]]:
        """(z, x, y) of tiles of source `key` in committed parts."""
        return source_tiles(self.dir, self.m, key)

    @property
    def pending(self) -> int:
        return sum(len(rows) for rows, _, _ in self._buf)

    @property
    def generation(self) -> int:
        return self.m.generation

    # --- changes (visible at the next commit) ------------------------------------------------
    def begin(self, key: str, entry: SourceEntry) -> None:
        """Record a source whose tiles are being added ("partial" until `finish`)."""
        self.m.sources[key] = dataclasses.replace(entry, status="partial")
        self._dirty = True

    def finish(self, key: str, tiles: int, skipped_nodata: int) -> None:
        """Every tile of source `key` went through: it is complete."""
        self.m.sources[key] = dataclasses.replace(self.m.sources[key], status="complete",
                                                  tiles=tiles, skipped_nodata=skipped_nodata)
        self._dirty = True

    def add(self, rows: list[dict], vectors: np.ndarray, thumbs: list[bytes]) -> None:
        if not (len(rows) == len(vectors) == len(thumbs)):
            raise ValueError("rows, vectors and thumbs must have the same length")
        if len(rows) == 0:
            return
        if vectors.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim}-d vectors, got {vectors.shape[1]}")
        # One list append: an interrupt leaves the batch either wholly in or wholly out.
        self._buf.append((list(rows), np.asarray(vectors, dtype=np.float32), list(thumbs)))
        self._dirty = True

    def remove(self, key: str) -> int:
        """Drop a source and every tile of it (buffered and committed); returns tiles removed.
        New parts are written first; the in-memory state changes in one uninterruptible step."""
        buf, removed = [], 0
        for rows, vecs, thumbs in self._buf:
            keep = [i for i, r in enumerate(rows) if r["source_key"] != key]
            removed += len(rows) - len(keep)
            if keep:
                buf.append(([rows[i] for i in keep], vecs[keep], [thumbs[i] for i in keep]))
        new_parts, ids = without_source(self.dir, self.m, key)
        with deferred_interrupts():
            self._buf = buf
            if ids is not None:
                self.index.remove(ids)
                removed += len(ids)
                self.m.parts = new_parts
            if self.m.sources.pop(key, None) is not None or removed:
                self._dirty = True
        return removed

    def commit(self) -> int:
        """Make everything added/removed so far durable and visible; returns the generation.

        Exception-safe: everything is prepared on a copy of the manifest; the manifest rename
        and the switch of the in-memory state happen together, with interrupts deferred. If
        anything fails before that, the writer is exactly as before the call (a retry commits
        the same tiles under the same ids) and the directory holds the previous commit."""
        if not self._dirty:
            return self.m.generation
        new = self.m.copy()
        index, added = self.index, None
        try:
            if self._buf:
                added = self._append(new)
            index = self._maybe_train_ivf(index, new)
            new.generation += 1
            fname = faiss_name(new.generation)
            atomic_write_bytes(self.dir / fname, index.to_bytes())
            new.index.file, new.index.ntotal = fname, index.ntotal
            new.updated = now()
            if new.recipe is None and self._recipe is not None and new.next_id:
                new.recipe = self._recipe  # an index from before recipes: record it now
            # New part files' directory entries must be durable before the manifest names them.
            fsync_dir(self.dir / TILES_DIR)
            fsync_dir(self.dir / THUMBS_DIR)
            with deferred_interrupts():
                write_manifest(self.dir, new)
                previous = self.m.index.file
                self.m, self.index, self._buf, self._dirty = new, index, [], False
                added = None
        finally:
            if added is not None:  # roll the in-memory index back to the last commit
                with deferred_interrupts():
                    self.index.remove_range(*added)
        # Keep the previous generation's file for readers that just read the old manifest.
        directory.drop_old_index_files(self.dir, {fname, previous})
        return new.generation

    def _append(self, new: Manifest) -> tuple[int, int]:
        """Write the buffered tiles as a new part of `new` (and their float16 rows), add them
        to the in-memory index; returns the id range added."""
        rows = [r for b in self._buf for r in b[0]]
        vecs = np.concatenate([b[1] for b in self._buf])
        thumbs = [t for b in self._buf for t in b[2]]
        first = new.next_id
        if self._vectors is not None:
            self._vectors.write_at(first, vecs.astype(np.float16))
        tiles, thumb_table = new_tables(first, rows, thumbs)
        new.parts.append(write_part(self.dir, new, tiles, thumb_table))
        new.next_id = first + len(vecs)
        with deferred_interrupts():
            self.index.add(vecs, np.arange(first, first + len(vecs), dtype=np.int64))
            return first, first + len(vecs)

    def _maybe_train_ivf(self, index: VectorIndex, m: Manifest) -> VectorIndex:
        """The index to commit: `index`, or an IVF-PQ trained from it (recorded in m)."""
        info, st = m.index, self.settings
        n = index.ntotal
        flat = info.factory == "Flat"
        if flat and n < st.ivf_min_vectors:
            info.chosen = (f"auto: Flat (exact) while below store.ivf_min_vectors = "
                           f"{st.ivf_min_vectors}")
            return index
        grown = (not flat and st.retrain_growth and self._vectors is not None
                 and n >= st.retrain_growth * (info.trained_at or n))
        if not (flat or grown):
            return index
        ids = index.ids()  # in the order the index holds them
        if self._vectors is not None:
            ids = np.sort(ids)
            vecs = open_vectors(self._vectors.path, m.next_id, self.dim)[ids]
        else:  # Flat without float16 copies: the Flat index holds the exact vectors
            vecs = index.exact_vectors()
        with native_stderr_to_log():  # FAISS's k-means warnings: debug log, counted
            trained, params = VectorIndex.train_ivfpq(np.asarray(vecs, dtype=np.float32), ids,
                                                      st)
        for k, v in params.items():
            setattr(info, k, v)
        why = (f"store.ivf_min_vectors = {st.ivf_min_vectors}" if flat else
               f"re-trained: grew {st.retrain_growth:g}x past the last training")
        info.chosen = f"auto: IVF-PQ trained at {n} vectors ({why})"
        return trained

    def close(self) -> None:
        if self._vectors is not None:
            self._vectors.close()
        if self._created and self.m.generation == 0:
            directory.uncreate(self.dir, self.m)
        self._lock.release()

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_same_space(d: Path, m: Manifest, identity: EncoderIdentity,
                      recipe: TileRecipe | None) -> None:
    """Tiles of one index come from one encoder and one tile recipe."""
    if m.encoder != identity:
        raise IndexError_(
            f"{d}: index was built with encoder {m.encoder.short()}, this config gives "
            f"{identity.short()}; use the same encoder or a new --index directory")
    if recipe is not None and m.recipe is not None and m.recipe != recipe:
        diff = "; ".join(m.recipe.differences(recipe))
        raise IndexError_(f"{d}: index tiles were cut with another tile recipe ({diff}); "
                          "use the index's [tiling] settings or a new --index directory")
