"""Read side of an index directory: a consistent snapshot at one committed manifest.

`IndexSnapshot.open(dir)` reads the manifest, then exactly the files it names; a writer
may be appending at the same time (it never changes a named file, except growing the
float16 file past the committed rows, which a snapshot never reads).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from encoder.identity import EncoderIdentity
from indexer.errors import IndexError_
from indexer.store.layout import THUMBS_DIR, TILE_SCHEMA, TILES_DIR
from indexer.store.manifest import check_parts, read_manifest
from indexer.store.vector_index import read_faiss
from indexer.store.vectors import check_vectors, open_vectors


class IndexSnapshot:
    def __init__(self, index_dir: Path, manifest: dict, index: faiss.Index,
                 vectors: np.ndarray | None):
        self.dir = index_dir
        self.manifest = manifest
        self.index = index
        self.vectors = vectors  # float16 [next_id, D] memory map, or None
        self.identity = EncoderIdentity.from_dict(manifest["encoder"])
        self.tile_parts = [index_dir / TILES_DIR / p["name"] for p in manifest["parts"]]
        self.thumb_parts = [index_dir / THUMBS_DIR / p["name"] for p in manifest["parts"]]

    @classmethod
    def open(cls, index_dir: str | Path, retries: int = 5) -> IndexSnapshot:
        d = Path(index_dir)
        if not d.is_dir():
            raise IndexError_(f"{d}: no such index directory")
        for attempt in range(retries):
            m = read_manifest(d)
            if m is None:
                raise IndexError_(f"{d}: no committed index here (manifest.json missing)")
            check_parts(d, m)
            try:
                index = (read_faiss(d, m) if m["index"]["file"]
                         else faiss.IndexIDMap2(faiss.IndexFlatIP(m["dim"])))
                for p in m["parts"]:  # named parts must all exist in this snapshot
                    for sub in (TILES_DIR, THUMBS_DIR):
                        if not (d / sub / p["name"]).is_file():
                            raise FileNotFoundError(p["name"])
            except FileNotFoundError as e:
                # A writer committed (and cleaned up) between our manifest read and open.
                if attempt == retries - 1:
                    raise IndexError_(f"{d}: {Path(str(e)).name}, named by the manifest, is "
                                      "missing") from None
                continue
            vectors = None
            if m.get("vectors_f16"):
                check_vectors(d / m["vectors_f16"], m["next_id"], m["dim"])
                vectors = open_vectors(d / m["vectors_f16"], m["next_id"], m["dim"])
            return cls(d, m, index, vectors)
        raise AssertionError("unreachable")

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def check_encoder(self, identity: EncoderIdentity) -> None:
        if identity != self.identity:
            raise IndexError_(
                f"{self.dir}: index was built with encoder {self.identity.short()}, "
                f"but the query encoder is {identity.short()}"
            )

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None):
        """(scores, ids) of the k nearest tiles by inner product; ids are -1 past the end."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        params = None
        if nprobe is not None and self.manifest["index"]["factory"] != "Flat":
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        return self.index.search(q, k, params=params)

    def get_vectors(self, ids) -> np.ndarray:
        """float32 vectors of tile ids, from the float16 copies."""
        if self.vectors is None:
            raise IndexError_(f"{self.dir}: built without float16 vector copies")
        return np.asarray(self.vectors[np.asarray(ids, dtype=np.int64)], dtype=np.float32)

    def tiles(self, columns: list[str] | None = None) -> pa.Table:
        """Tile metadata of every committed tile."""
        if not self.tile_parts:
            return TILE_SCHEMA.empty_table()
        return pa.concat_tables([read_part(p, columns) for p in self.tile_parts])

    def sql(self, query: str, params: list | None = None) -> pa.Table:
        """Run DuckDB SQL with a `tiles` view over the snapshot's Parquet parts."""
        con = duckdb.connect()
        if self.tile_parts:
            con.read_parquet([str(p) for p in self.tile_parts]).create_view("tiles")
        else:
            con.register("tiles", self.tiles())
        return con.sql(query, params=params).to_arrow_table()

    def thumbnail(self, tile_id: int) -> bytes | None:
        for part, path in zip(self.manifest["parts"], self.thumb_parts, strict=True):
            if part["id_min"] <= tile_id <= part["id_max"]:
                t = read_part(path, None, filters=[("id", "=", int(tile_id))])
                if t.num_rows:
                    return t["jpeg"][0].as_py()
        return None


def read_part(path: Path, columns: list[str] | None = None, filters=None) -> pa.Table:
    """One Parquet part; a damaged one is an IndexError_ naming it."""
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except (OSError, pa.ArrowException) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise IndexError_(f"{path.parent.name}/{path.name}: damaged Parquet part ({msg})"
                          ) from None
