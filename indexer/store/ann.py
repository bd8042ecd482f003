"""The ANN's files (format 2): a trained, empty template (`ann-G.faiss`, IVF only), one code
per tile id appended to `codes-G.npy` (row i = tile id i), and the ids of removed tiles
appended to `deleted.npy`. A commit appends only the rows it adds; training (or
re-training) writes a new template and codes file under the commit's generation. An index
of format 1 (one whole FAISS file per commit) is read as it is and rewritten as format 2 by
the next writer's first commit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.errors import IndexError_
from indexer.store.layout import DELETED, ann_name, atomic_write_bytes, codes_name
from indexer.store.manifest import Manifest
from indexer.store.vector_index import VectorIndex
from indexer.store.vectors import CODE, ID, RowFileWriter, check_rows, open_rows

CHUNK = 65536  # rows per read/encode step of a whole-file pass


def deleted_ids(d: Path, m: Manifest, start: int = 0) -> np.ndarray:
    """The committed tombstones (ids of removed tiles), from row `start` on."""
    if m.deleted <= start:
        return np.empty(0, dtype=np.int64)
    check_rows(d / DELETED, m.deleted, 1, ID)
    return np.array(open_rows(d / DELETED, m.deleted, 1, ID)[start:, 0])


def template(d: Path, m: Manifest) -> VectorIndex:
    """The committed index's empty structure."""
    if m.index.file is None:
        return VectorIndex.flat(m.dim)
    path = d / m.index.file
    return VectorIndex.from_template(path.read_bytes(), m.dim, path.name)


RESERVE_FROM = 65536  # codes loaded at once from which the lists are sized first


def load(d: Path, m: Manifest, start: int = 0) -> VectorIndex:
    """The committed index holding the tiles with ids start..next_id-1 (all of them by
    default; a later start gives the delta a reader adds to what it holds). A missing file
    raises FileNotFoundError (a writer may have cleaned it up after a newer commit), damage
    IndexError_."""
    if m.version == 1:
        return VectorIndex.read(d / m.index.file, m.dim, m.index.ntotal) if m.index.file \
            else VectorIndex.flat(m.dim)
    index = template(d, m)
    if m.index.codes is None:
        return index
    path = d / m.index.codes
    if not path.is_file():
        raise FileNotFoundError(str(path))
    check_rows(path, m.next_id, m.index.code_size, CODE)
    codes = open_rows(path, m.next_id, m.index.code_size, CODE)
    dead = deleted_ids(d, m)

    def chunks():
        for lo in range(start, m.next_id, CHUNK):
            hi = min(lo + CHUNK, m.next_id)
            ids = np.arange(lo, hi, dtype=np.int64)
            live = ~np.isin(ids, dead)
            yield np.asarray(codes[lo:hi])[live], ids[live]

    if not index.is_flat and m.next_id - start > RESERVE_FROM:
        # every list allocated once, at its size (a first pass over the codes)
        nlist = index.describe()["nlist"]
        index.reserve(sum((np.bincount(index.list_of(c), minlength=nlist) for c, _ in chunks()),
                          np.zeros(nlist, dtype=np.int64)))
    for c, ids in chunks():
        index.add_codes(c, ids)
    if start == 0 and index.ntotal != m.index.ntotal:
        raise IndexError_(f"{path.name}: holds {index.ntotal} live codes, the manifest says "
                          f"{m.index.ntotal}")
    return index


class AnnFiles:
    """The writer's side: appends codes and tombstones at the committed row counts (so a
    failed commit retried writes the same rows to the same place) and writes whole new
    files when the ANN is trained or an old-format index is converted."""

    def __init__(self, d: Path, m: Manifest):
        self.dir = d
        self._open: dict[str, RowFileWriter] = {}
        if m.version >= 2 and m.index.codes:
            self._file(m.index.codes, m.index.code_size, m.next_id, CODE)
        if m.deleted:
            self._file(DELETED, 1, m.deleted, ID)

    def _file(self, name: str, width: int, rows: int, dtype) -> RowFileWriter:
        f = self._open.get(name)
        if f is None:
            f = self._open[name] = RowFileWriter(self.dir / name, width, rows, dtype)
        return f

    def append(self, new: Manifest, index: VectorIndex, first: int,
               vectors: np.ndarray) -> np.ndarray:
        """Write the codes of tiles first.. (their ids); returns the codes. Starts the
        codes file (named after `new.generation`) for an index's first tiles."""
        if new.index.codes is None:
            new.index.codes, new.index.code_size = codes_name(new.generation), index.code_size
        codes = index.encode(vectors)
        self._file(new.index.codes, new.index.code_size, first, CODE).write_at(first, codes)
        return codes

    def delete(self, new: Manifest, ids: np.ndarray) -> None:
        """Record removed tile ids (appended after the committed tombstones)."""
        if len(ids):
            self._file(DELETED, 1, new.deleted, ID).write_at(new.deleted, ids)
            new.deleted += len(ids)

    def rewrite(self, new: Manifest, empty: VectorIndex, codes_of) -> VectorIndex:
        """Write `empty`'s template and the codes of every tile id (0..next_id-1) under
        `new.generation`'s names; `codes_of(lo, hi)` gives (codes [hi-lo, size], live bool
        [hi-lo]) per chunk. Returns `empty` holding the live codes."""
        gen = new.generation
        if not empty.is_flat:
            atomic_write_bytes(self.dir / ann_name(gen), empty.template_bytes())
        name = codes_name(gen)
        stale = self._open.pop(name, None)  # a failed earlier try at this generation
        if stale is not None:
            stale.close()
        (self.dir / name).unlink(missing_ok=True)
        out = self._file(name, empty.code_size, 0, CODE)
        for lo in range(0, new.next_id, CHUNK):
            hi = min(lo + CHUNK, new.next_id)
            codes, live = codes_of(lo, hi)
            codes = np.where(live[:, None], codes, np.uint8(0))  # a removed id's row: zeros
            out.write_at(lo, codes)
            empty.add_codes(codes[live], np.arange(lo, hi, dtype=np.int64)[live])
        new.index.file = None if empty.is_flat else ann_name(gen)
        new.index.codes, new.index.code_size = name, empty.code_size
        return empty

    def forget_unnamed(self, m: Manifest) -> None:
        """Close files the committed manifest no longer names (after a re-training)."""
        for name in [n for n in self._open if n not in (m.index.codes, DELETED)]:
            self._open.pop(name).close()

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
