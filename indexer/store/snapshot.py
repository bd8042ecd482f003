"""Read side of an index directory: a consistent snapshot at one committed manifest.

`IndexSnapshot.open(dir)` reads the manifest, then exactly the files it names; a writer
may be appending at the same time (it never changes a named file, except growing the
float16 file past the committed rows, which a snapshot never reads). `newer_commit()` says
when a writer has committed since.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from encoder.identity import EncoderIdentity
from indexer.config import TileRecipe
from indexer.errors import IndexError_
from indexer.store.layout import MANIFEST, THUMBS_DIR, TILE_SCHEMA, TILES_DIR
from indexer.store.manifest import Manifest, SourceEntry, read_manifest
from indexer.store.parts import read_part
from indexer.store.vector_index import VectorIndex
from indexer.store.vectors import check_vectors, open_vectors


def _stamp(d: Path) -> tuple:
    try:
        st = os.stat(d / MANIFEST)
    except FileNotFoundError:
        raise IndexError_(f"{d}: no committed index here (manifest.json missing)") from None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def committed(index_dir: str | Path) -> tuple[int, int] | None:
    """(generation, tiles) of the committed index in `index_dir`; None when there is none."""
    m = read_manifest(Path(index_dir))
    return None if m is None else (m.generation, m.tiles)


class IndexSnapshot:
    def __init__(self, index_dir: Path, manifest: Manifest, index: VectorIndex,
                 vectors: np.ndarray | None, stamp: tuple):
        self.dir = index_dir
        self.manifest = manifest
        self.index = index
        self.vectors = vectors  # float16 [next_id, D] memory map, or None
        self.identity: EncoderIdentity = manifest.encoder
        self.tile_parts = [index_dir / TILES_DIR / p.name for p in manifest.parts]
        self.thumb_parts = [index_dir / THUMBS_DIR / p.name for p in manifest.parts]
        self._stamp = stamp

    @classmethod
    def open(cls, index_dir: str | Path, retries: int = 5) -> IndexSnapshot:
        d = Path(index_dir)
        if not d.is_dir():
            raise IndexError_(f"{d}: no such index directory")
        for attempt in range(retries):
            stamp = _stamp(d)  # before the read: a commit after it shows as newer
            m = read_manifest(d)
            if m is None:
                raise IndexError_(f"{d}: no committed index here (manifest.json missing)")
            try:
                index = (VectorIndex.read(d / m.index.file, m.dim, m.index.ntotal)
                         if m.index.file else VectorIndex.flat(m.dim))
                for p in m.parts:  # named parts must all exist in this snapshot
                    for sub in (TILES_DIR, THUMBS_DIR):
                        if not (d / sub / p.name).is_file():
                            raise FileNotFoundError(p.name)
            except FileNotFoundError as e:
                # A writer committed (and cleaned up) between our manifest read and open.
                if attempt == retries - 1:
                    raise IndexError_(f"{d}: {Path(str(e)).name}, named by the manifest, is "
                                      "missing") from None
                continue
            vectors = None
            if m.vectors_f16:
                check_vectors(d / m.vectors_f16, m.next_id, m.dim)
                vectors = open_vectors(d / m.vectors_f16, m.next_id, m.dim)
            return cls(d, m, index, vectors, stamp)
        raise AssertionError("unreachable")

    def newer_commit(self) -> bool:
        """Has a writer committed since this snapshot was opened?"""
        return _stamp(self.dir) != self._stamp

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

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
            )

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k nearest tiles by inner product; ids are -1 past the end.
        `allowed`: bool per tile id (length next_id), only those are returned."""
        return self.index.search(queries, k, nprobe=nprobe, allowed=allowed)

    def get_vectors(self, ids) -> np.ndarray:
        """float32 vectors of tile ids, from the float16 copies."""
        if self.vectors is None:
            raise IndexError_(f"{self.dir}: built without float16 vector copies")
        return np.asarray(self.vectors[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def tiles(self, columns: list[str] | None = None) -> pa.Table:
        """Tile metadata of every committed tile."""
        if not self.tile_parts:
            table = TILE_SCHEMA.empty_table()
            return table.select(columns) if columns else table
        return pa.concat_tables([read_part(p, columns) for p in self.tile_parts])

    def thumbnail(self, tile_id: int) -> bytes | None:
        for part, path in zip(self.manifest.parts, self.thumb_parts, strict=True):
            if part.id_min <= tile_id <= part.id_max:
                t = read_part(path, None, filters=[("id", "=", int(tile_id))])
                if t.num_rows:
                    return t["jpeg"][0].as_py()
        return None
