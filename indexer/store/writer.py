"""`IndexWriter`: appends tiles to an index directory; each `commit()` makes them visible
atomically (manifest rename). One writer at a time (an advisory lock); readers never lock."""

from __future__ import annotations

import copy
import fcntl
import os
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from encoder.identity import EncoderIdentity
from indexer.config import StoreSettings
from indexer.critical import deferred_interrupts
from indexer.errors import IndexError_
from indexer.logs import native_stderr_to_log
from indexer.store import vector_index as ann
from indexer.store.layout import (
    FAISS_RE,
    FORMAT,
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    PART_RE,
    THUMB_SCHEMA,
    THUMBS_DIR,
    TILE_SCHEMA,
    TILES_DIR,
    TMP_RE,
    VECTORS_F16,
    atomic_write_bytes,
    faiss_name,
    fsync_dir,
    part_name,
)
from indexer.store.manifest import check_parts, read_manifest, write_manifest
from indexer.store.snapshot import read_part
from indexer.store.vector_index import read_faiss
from indexer.store.vectors import VectorFileWriter, open_vectors

TILE_COLUMNS = [f.name for f in TILE_SCHEMA if f.name != "id"]
# POSIX locks are per process; this set stops two writers inside one process.
_HELD: set[Path] = set()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _is_leftover(entry: Path) -> bool:
    """What an index creation killed before its first manifest can leave behind."""
    return entry.name == LOCK or bool(TMP_RE.fullmatch(entry.name))


def _check_directory(d: Path, create: bool) -> None:
    """Refuse (one line) a `d` that is neither an index (a satfind manifest) nor, when
    `create`, a place for a new one (absent, or empty): this writer deletes files, and it
    must never delete a user's."""
    if d.exists() and not d.is_dir():
        raise IndexError_(f"{d}: exists and is not a directory")
    if (d / MANIFEST).is_file():
        read_manifest(d)  # refuses a manifest.json that is not satfind's
        return
    if not create:
        raise IndexError_(f"{d}: not a satfind index (no {MANIFEST})")
    if d.is_dir():
        try:
            foreign = [e.name for e in d.iterdir() if not _is_leftover(e)]
        except OSError as e:
            raise IndexError_(f"{d}: cannot list the directory ({e.strerror})") from None
        if foreign:
            raise IndexError_(
                f"{d}: not a satfind index (no {MANIFEST}) and not empty (holds "
                f"{sorted(foreign)[0]!r}{' and more' if len(foreign) > 1 else ''}); "
                "give a new or empty directory")


class IndexWriter:
    def __init__(self, index_dir: str | Path, identity: EncoderIdentity, settings: StoreSettings,
                 create: bool = True):
        if str(index_dir).strip() == "":
            raise IndexError_("the index directory is empty: give a path (e.g. --index idx)")
        self.dir = Path(index_dir)
        self.settings = settings
        _check_directory(self.dir, create)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._key = self.dir.resolve()
        busy = IndexError_(f"{self.dir}: another satfind-index process is writing this index")
        if self._key in _HELD:
            raise busy
        self._lock = open(self.dir / LOCK, "a+")
        try:
            # A POSIX record lock belongs to this process only: forked DataLoader workers do
            # not inherit it, so a killed writer never leaves the index locked by orphans.
            fcntl.lockf(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise busy from None
        _HELD.add(self._key)
        try:
            _check_directory(self.dir, create)  # again, now that no other writer can act
            self._open(identity)
        except BaseException:
            self._release()
            raise

    def _open(self, identity: EncoderIdentity) -> None:
        m = read_manifest(self.dir)
        self._created = False
        if m is None:
            # The manifest comes first: from here on the directory is provably an index, and
            # only then are its sub-folders created.
            m = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "generation": 0,
                "created": _now(), "updated": _now(), "encoder": identity.to_dict(),
                "dim": identity.embed_dim, "next_id": 0, "next_part": 0,
                "index": {"file": None, "factory": "Flat", "metric": "inner_product",
                          "chosen": "", "ntotal": 0},
                "vectors_f16": VECTORS_F16 if self.settings.keep_float16 else None,
                "parts": [], "sources": {}, "counts": {"tiles": 0, "sources": 0},
            }
            write_manifest(self.dir, m)
            self._created = True
        else:
            theirs = EncoderIdentity.from_dict(m["encoder"])
            if theirs != identity:
                raise IndexError_(
                    f"{self.dir}: index was built with encoder {theirs.short()}, this config "
                    f"gives {identity.short()}; use the same encoder or a new --index directory"
                )
        (self.dir / TILES_DIR).mkdir(exist_ok=True)
        (self.dir / THUMBS_DIR).mkdir(exist_ok=True)
        check_parts(self.dir, m)
        self.m = m
        self.dim = int(m["dim"])
        if m["index"]["file"]:
            self.index = read_faiss(self.dir, m)
        else:
            self.index = ann.new_flat(self.dim)
        self._vectors = None
        if m["vectors_f16"]:
            self._vectors = VectorFileWriter(self.dir / m["vectors_f16"], self.dim, m["next_id"])
        self._clean_garbage()
        # Each entry is one add(): (rows, float32 vectors, thumbnails), appended in one step.
        self._buf: list[tuple[list[dict], np.ndarray, list[bytes]]] = []
        self._dirty = m["generation"] == 0  # a new index commits even when empty

    def _clean_garbage(self) -> None:
        """Delete files this writer's own naming scheme made that no committed manifest
        names (interrupted runs, superseded parts). Nothing else is ever touched."""
        keep_parts = {p["name"] for p in self.m["parts"]}
        for sub in (TILES_DIR, THUMBS_DIR):
            for f in (self.dir / sub).iterdir():
                if PART_RE.fullmatch(f.name) and f.name not in keep_parts and f.is_file():
                    f.unlink(missing_ok=True)
        for f in self.dir.iterdir():
            stale_faiss = FAISS_RE.fullmatch(f.name) and f.name != self.m["index"]["file"]
            if (stale_faiss or TMP_RE.fullmatch(f.name)) and f.is_file():
                f.unlink(missing_ok=True)

    # --- what is already there -------------------------------------------------------------
    @property
    def sources(self) -> dict:
        return self.m["sources"]

    def committed_tiles(self, key: str) -> set[tuple[int, int, int]]:
        """(z, x, y) of tiles of source `key` in committed parts."""
        out: set[tuple[int, int, int]] = set()
        for part in self.m["parts"]:
            t = read_part(self.dir / TILES_DIR / part["name"], ["source_key", "z", "x", "y"])
            t = t.filter(pc.equal(t["source_key"], key))
            out.update(zip(t["z"].to_pylist(), t["x"].to_pylist(), t["y"].to_pylist(),
                           strict=True))
        return out

    @property
    def pending(self) -> int:
        return sum(len(rows) for rows, _, _ in self._buf)

    # --- changes (visible at the next commit) ------------------------------------------------
    def set_source(self, key: str, entry: dict) -> None:
        self.m["sources"][key] = entry
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

    def remove_source(self, key: str) -> int:
        """Drop every tile of a source (buffered and committed); returns tiles removed.
        New parts are written first; the in-memory state changes in one uninterruptible step."""
        buf, removed = [], 0
        for rows, vecs, thumbs in self._buf:
            keep = [i for i, r in enumerate(rows) if r["source_key"] != key]
            removed += len(rows) - len(keep)
            if keep:
                buf.append(([rows[i] for i in keep], vecs[keep], [thumbs[i] for i in keep]))
        new_parts, dead_ids = [], []
        for part in self.m["parts"]:
            tiles = read_part(self.dir / TILES_DIR / part["name"])
            hit = pc.equal(tiles["source_key"], key)
            if not pc.any(hit).as_py():
                new_parts.append(part)
                continue
            dead_ids.append(tiles.filter(hit)["id"].to_numpy())
            kept = tiles.filter(pc.invert(hit))
            if kept.num_rows:
                thumbs = read_part(self.dir / THUMBS_DIR / part["name"])
                thumbs = thumbs.filter(pc.is_in(thumbs["id"], value_set=kept["id"]))
                new_parts.append(self._write_part(kept, thumbs, self.m))
        ids = np.concatenate(dead_ids).astype(np.int64) if dead_ids else None
        with deferred_interrupts():
            self._buf = buf
            if ids is not None:
                self.index.remove_ids(faiss.IDSelectorBatch(ids))
                removed += len(ids)
                self.m["parts"] = new_parts
            if self.m["sources"].pop(key, None) is not None or removed:
                self._dirty = True
        return removed

    def _write_part(self, tiles: pa.Table, thumbs: pa.Table, m: dict) -> dict:
        name = part_name(m["next_part"])
        m["next_part"] += 1
        _write_parquet(tiles, self.dir / TILES_DIR / name)
        _write_parquet(thumbs, self.dir / THUMBS_DIR / name)
        ids = tiles["id"].to_numpy()
        return {"name": name, "rows": int(tiles.num_rows), "id_min": int(ids.min()),
                "id_max": int(ids.max())}

    def commit(self) -> int:
        """Make everything added/removed so far durable and visible; returns the generation.

        Exception-safe: everything is prepared on a copy of the manifest; the manifest rename
        and the switch of the in-memory state happen together, with interrupts deferred. If
        anything fails before that, the writer is exactly as before the call (a retry commits
        the same tiles under the same ids) and the directory holds the previous commit."""
        if not self._dirty:
            return self.m["generation"]
        new = copy.deepcopy(self.m)
        index, added = self.index, None
        try:
            if self._buf:
                rows = [r for b in self._buf for r in b[0]]
                vecs = np.concatenate([b[1] for b in self._buf])
                thumbs = [t for b in self._buf for t in b[2]]
                first = new["next_id"]
                ids = np.arange(first, first + len(vecs), dtype=np.int64)
                if self._vectors is not None:
                    self._vectors.write_at(first, vecs.astype(np.float16))
                cols = {c: [r[c] for r in rows] for c in TILE_COLUMNS}
                tiles = pa.table({"id": ids, **cols}, schema=TILE_SCHEMA)
                thumb_table = pa.table({"id": ids, "jpeg": thumbs}, schema=THUMB_SCHEMA)
                new["parts"].append(self._write_part(tiles, thumb_table, new))
                new["next_id"] = first + len(vecs)
                with deferred_interrupts():
                    index.add_with_ids(vecs, ids)
                    added = (first, first + len(vecs))
            index = self._maybe_train_ivf(index, new)
            new["generation"] += 1
            fname = faiss_name(new["generation"])
            atomic_write_bytes(self.dir / fname, faiss.serialize_index(index).tobytes())
            new["index"].update(file=fname, ntotal=int(index.ntotal))
            new["counts"] = {"tiles": int(index.ntotal), "sources": len(new["sources"])}
            new["updated"] = _now()
            # New part files' directory entries must be durable before the manifest names them.
            fsync_dir(self.dir / TILES_DIR)
            fsync_dir(self.dir / THUMBS_DIR)
            with deferred_interrupts():
                write_manifest(self.dir, new)
                previous = self.m["index"]["file"]
                self.m, self.index, self._buf, self._dirty = new, index, [], False
                added = None
        finally:
            if added is not None:  # roll the in-memory FAISS index back to the last commit
                with deferred_interrupts():
                    self.index.remove_ids(faiss.IDSelectorRange(added[0], added[1]))
        # Keep the previous generation's file for readers that just read the old manifest.
        for f in self.dir.iterdir():
            if FAISS_RE.fullmatch(f.name) and f.name not in (fname, previous):
                f.unlink(missing_ok=True)
        return new["generation"]

    def _maybe_train_ivf(self, index: faiss.Index, m: dict) -> faiss.Index:
        """The index to commit: `index`, or an IVF-PQ trained from it (recorded in m)."""
        info, st = m["index"], self.settings
        n = int(index.ntotal)
        flat = info["factory"] == "Flat"
        if flat and n < st.ivf_min_vectors:
            info["chosen"] = (f"auto: Flat (exact) while below store.ivf_min_vectors = "
                              f"{st.ivf_min_vectors}")
            return index
        grown = (not flat and st.retrain_growth and self._vectors is not None
                 and n >= st.retrain_growth * info.get("trained_at", n))
        if not (flat or grown):
            return index
        ids = ann.index_ids(index)  # in the order the index holds them
        if self._vectors is not None:
            ids = np.sort(ids)
            vecs = open_vectors(self._vectors.path, m["next_id"], self.dim)[ids]
        else:  # Flat without float16 copies: the Flat index holds the exact vectors
            vecs = faiss.downcast_index(index.index).reconstruct_n(0, index.ntotal)
        with native_stderr_to_log():  # FAISS's k-means warnings: debug log, counted
            trained, params = ann.build_ivfpq(np.asarray(vecs, dtype=np.float32), ids, st)
        info.update(params)
        why = (f"store.ivf_min_vectors = {st.ivf_min_vectors}" if flat else
               f"re-trained: grew {st.retrain_growth:g}x past the last training")
        info["chosen"] = f"auto: IVF-PQ trained at {n} vectors ({why})"
        return trained

    def _release(self) -> None:
        _HELD.discard(self._key)
        self._lock.close()

    def close(self) -> None:
        if self._vectors is not None:
            self._vectors.close()
        if self._created and self.m["generation"] == 0:
            self._uncreate()
        self._release()

    def _uncreate(self) -> None:
        """A writer that created an index and never committed leaves no index behind (only
        the lock file, which marks the directory as satfind's for the next run). The manifest
        goes last: until then, whatever is left is a valid empty index."""
        try:
            if self.m["vectors_f16"]:
                (self.dir / self.m["vectors_f16"]).unlink(missing_ok=True)
            for sub in (TILES_DIR, THUMBS_DIR):
                for f in (self.dir / sub).iterdir():
                    if PART_RE.fullmatch(f.name):
                        f.unlink(missing_ok=True)
                (self.dir / sub).rmdir()
            (self.dir / MANIFEST).unlink(missing_ok=True)
        except OSError:
            pass  # what is left is a valid empty index

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
