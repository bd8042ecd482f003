"""`IndexWriter`: appends tiles to an index directory; each `commit()` makes them visible
atomically (manifest rename). One writer at a time (an advisory lock); readers never lock."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from encoder.model import EncoderIdentity
from indexer import ann
from indexer.config import StoreSettings
from indexer.errors import IndexError_
from indexer.manifest import (
    FORMAT,
    FORMAT_VERSION,
    LOCK,
    THUMB_SCHEMA,
    THUMBS_DIR,
    TILE_SCHEMA,
    TILES_DIR,
    VECTORS_F16,
    atomic_write_bytes,
    faiss_name,
    part_name,
    read_manifest,
    write_manifest,
)
from indexer.vectorfile import VectorFileWriter, open_vectors

TILE_COLUMNS = [f.name for f in TILE_SCHEMA if f.name != "id"]
# POSIX locks are per process; this set stops two writers inside one process.
_HELD: set[Path] = set()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class IndexWriter:
    def __init__(self, index_dir: str | Path, identity: EncoderIdentity, settings: StoreSettings):
        self.dir = Path(index_dir)
        self.settings = settings
        if self.dir.exists() and not self.dir.is_dir():
            raise IndexError_(f"{self.dir}: exists and is not a directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / TILES_DIR).mkdir(exist_ok=True)
        (self.dir / THUMBS_DIR).mkdir(exist_ok=True)
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
            self._open(identity)
        except BaseException:
            self._release()
            raise

    def _open(self, identity: EncoderIdentity) -> None:
        m = read_manifest(self.dir)
        if m is None:
            m = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "generation": 0,
                "created": _now(), "updated": _now(), "encoder": identity.to_dict(),
                "dim": identity.embed_dim, "next_id": 0, "next_part": 0,
                "index": {"file": None, "factory": "Flat", "metric": "inner_product",
                          "chosen": "", "ntotal": 0},
                "vectors_f16": VECTORS_F16 if self.settings.keep_float16 else None,
                "parts": [], "sources": {}, "counts": {"tiles": 0, "sources": 0},
            }
        else:
            theirs = EncoderIdentity.from_dict(m["encoder"])
            if theirs != identity:
                raise IndexError_(
                    f"{self.dir}: index was built with encoder {theirs.short()}, this config "
                    f"gives {identity.short()}; use the same encoder or a new --index directory"
                )
        self.m = m
        self.dim = int(m["dim"])
        if m["index"]["file"]:
            self.index = faiss.read_index(str(self.dir / m["index"]["file"]))
        else:
            self.index = ann.new_flat(self.dim)
        self._vectors = None
        if m["vectors_f16"]:
            self._vectors = VectorFileWriter(self.dir / m["vectors_f16"], self.dim, m["next_id"])
        self._clean_garbage()
        self._buf_rows: list[dict] = []
        self._buf_vecs: list[np.ndarray] = []
        self._buf_thumbs: list[bytes] = []
        self._dirty = m["generation"] == 0  # a new index commits even when empty

    def _clean_garbage(self) -> None:
        """Delete files no committed manifest names (interrupted runs, superseded parts)."""
        keep_parts = {p["name"] for p in self.m["parts"]}
        for sub in (TILES_DIR, THUMBS_DIR):
            for f in (self.dir / sub).iterdir():
                if f.name not in keep_parts:
                    f.unlink(missing_ok=True)
        for f in self.dir.iterdir():
            stale_faiss = f.suffix == ".faiss" and f.name != self.m["index"]["file"]
            if stale_faiss or ".tmp-" in f.name:
                f.unlink(missing_ok=True)

    # --- what is already there -------------------------------------------------------------
    @property
    def sources(self) -> dict:
        return self.m["sources"]

    def committed_tiles(self, key: str) -> set[tuple[int, int, int]]:
        """(z, x, y) of tiles of source `key` in committed parts."""
        out: set[tuple[int, int, int]] = set()
        for part in self.m["parts"]:
            t = pq.read_table(self.dir / TILES_DIR / part["name"], columns=["source_key", "z", "x",
                                                                             "y"])
            t = t.filter(pc.equal(t["source_key"], key))
            out.update(zip(t["z"].to_pylist(), t["x"].to_pylist(), t["y"].to_pylist(),
                           strict=True))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf_rows)

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
        self._buf_rows += rows
        self._dirty = True
        self._buf_vecs.append(np.asarray(vectors, dtype=np.float32))
        self._buf_thumbs += thumbs

    def remove_source(self, key: str) -> int:
        """Drop every tile of a source (buffered and committed); returns tiles removed."""
        keep = [i for i, r in enumerate(self._buf_rows) if r["source_key"] != key]
        removed = len(self._buf_rows) - len(keep)
        if removed:
            vecs = np.concatenate(self._buf_vecs)[keep] if keep else None
            self._buf_rows = [self._buf_rows[i] for i in keep]
            self._buf_thumbs = [self._buf_thumbs[i] for i in keep]
            self._buf_vecs = [vecs] if vecs is not None else []
        new_parts, dead_ids = [], []
        for part in self.m["parts"]:
            tiles = pq.read_table(self.dir / TILES_DIR / part["name"])
            hit = pc.equal(tiles["source_key"], key)
            if not pc.any(hit).as_py():
                new_parts.append(part)
                continue
            dead_ids.append(tiles.filter(hit)["id"].to_numpy())
            kept = tiles.filter(pc.invert(hit))
            if kept.num_rows:
                thumbs = pq.read_table(self.dir / THUMBS_DIR / part["name"])
                thumbs = thumbs.filter(pc.is_in(thumbs["id"], value_set=kept["id"]))
                new_parts.append(self._write_part(kept, thumbs))
        if dead_ids:
            ids = np.concatenate(dead_ids).astype(np.int64)
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
            removed += len(ids)
            self.m["parts"] = new_parts
        if self.m["sources"].pop(key, None) is not None or removed:
            self._dirty = True
        return removed

    def _write_part(self, tiles: pa.Table, thumbs: pa.Table) -> dict:
        name = part_name(self.m["next_part"])
        self.m["next_part"] += 1
        _write_parquet(tiles, self.dir / TILES_DIR / name)
        _write_parquet(thumbs, self.dir / THUMBS_DIR / name)
        ids = tiles["id"].to_numpy()
        return {"name": name, "rows": int(tiles.num_rows), "id_min": int(ids.min()),
                "id_max": int(ids.max())}

    def commit(self) -> int:
        """Make everything added/removed so far durable and visible; returns the generation."""
        m = self.m
        if not self._dirty:
            return m["generation"]
        if self._buf_rows:
            vecs = np.concatenate(self._buf_vecs)
            n = len(vecs)
            ids = np.arange(m["next_id"], m["next_id"] + n, dtype=np.int64)
            if self._vectors is not None:
                self._vectors.append(vecs.astype(np.float16))
            cols = {c: [r[c] for r in self._buf_rows] for c in TILE_COLUMNS}
            tiles = pa.table({"id": ids, **cols}, schema=TILE_SCHEMA)
            thumbs = pa.table({"id": ids, "jpeg": self._buf_thumbs}, schema=THUMB_SCHEMA)
            m["parts"].append(self._write_part(tiles, thumbs))
            self.index.add_with_ids(vecs, ids)
            m["next_id"] += n
            self._buf_rows, self._buf_vecs, self._buf_thumbs = [], [], []
        self._maybe_train_ivf()
        previous = m["index"]["file"]
        m["generation"] += 1
        fname = faiss_name(m["generation"])
        atomic_write_bytes(self.dir / fname, faiss.serialize_index(self.index).tobytes())
        m["index"].update(file=fname, ntotal=int(self.index.ntotal))
        m["counts"] = {"tiles": int(self.index.ntotal), "sources": len(m["sources"])}
        m["updated"] = _now()
        write_manifest(self.dir, m)
        self._dirty = False
        # Keep the previous generation's file for readers that just read the old manifest.
        for f in self.dir.glob("vectors-*.faiss"):
            if f.name not in (fname, previous):
                f.unlink(missing_ok=True)
        return m["generation"]

    def _maybe_train_ivf(self) -> None:
        info, st = self.m["index"], self.settings
        n = int(self.index.ntotal)
        flat = info["factory"] == "Flat"
        if flat and n < st.ivf_min_vectors:
            info["chosen"] = (f"auto: Flat (exact) while below store.ivf_min_vectors = "
                              f"{st.ivf_min_vectors}")
            return
        grown = (not flat and st.retrain_growth and self._vectors is not None
                 and n >= st.retrain_growth * info.get("trained_at", n))
        if not (flat or grown):
            return
        ids = ann.index_ids(self.index)  # in the order the index holds them
        if self._vectors is not None:
            ids = np.sort(ids)
            vecs = open_vectors(self._vectors.path, self._vectors.rows, self.dim)[ids]
        else:  # Flat without float16 copies: the Flat index holds the exact vectors
            vecs = faiss.downcast_index(self.index.index).reconstruct_n(0, self.index.ntotal)
        index, params = ann.build_ivfpq(np.asarray(vecs, dtype=np.float32), ids, st)
        self.index = index
        info.update(params)
        why = (f"store.ivf_min_vectors = {st.ivf_min_vectors}" if flat else
               f"re-trained: grew {st.retrain_growth:g}x past the last training")
        info["chosen"] = f"auto: IVF-PQ trained at {n} vectors ({why})"

    def _release(self) -> None:
        _HELD.discard(self._key)
        self._lock.close()

    def close(self) -> None:
        if self._vectors is not None:
            self._vectors.close()
        self._release()

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
