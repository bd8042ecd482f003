"""The frozen teacher's embeddings of ground photos, computed once and cached on disk.

The cache key is (photo file content hash, teacher identity, photo preprocessing): the same
photo under another path is not re-encoded, and another CLIP (or changed preprocessing)
gets its own cache folder. Each batch of new embeddings is written as its own Parquet part
(temp file + rename), so an interrupted run keeps what it had computed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from encoder.images import square_tile
from indexer.rasters.hashing import StatKey, file_stat, known_or_file_sha256

# Changing how photos become teacher input changes the embeddings: bump this with it.
PHOTO_PREPROCESS = "square_tile-bicubic-centre-v1"


class PhotoError(ValueError):
    """A ground photo that cannot be read (one line naming it)."""


def teacher_key(encoder) -> str:
    ident = {**encoder.identity.to_dict(), "preprocess": PHOTO_PREPROCESS}
    precision = getattr(encoder, "precision", "fp32")
    if precision != "fp32":  # bf16 weights: vectors within 1e-3 of float32's, kept apart
        ident["precision"] = precision
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def load_photo(path: str, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return square_tile(im, size)
    except (OSError, UnidentifiedImageError) as e:
        raise PhotoError(f"{path}: cannot read photo ({type(e).__name__}: {e})") from None


class TeacherCache:
    """Photo embeddings of one teacher under `root/<teacher key>/part-NNNNN.parquet`."""

    def __init__(self, root: str | Path, encoder):
        self.encoder = encoder
        self.dir = Path(root) / teacher_key(encoder)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "teacher.json"
        if not meta.exists():
            meta.write_text(json.dumps({"teacher": encoder.identity.to_dict(),
                                        "preprocess": PHOTO_PREPROCESS}, indent=1))
        self._known: dict[str, np.ndarray] = {}
        self._stat_hash: dict[StatKey, str] = {}  # (path, size, mtime_ns) -> content hash
        parts = sorted(self.dir.glob("part-*.parquet"))
        for part in parts:
            t = pq.read_table(part)
            vecs = t["embedding"].combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)
            hashes = t["sha256"].to_pylist()
            self._known.update(zip(hashes, vecs, strict=True))
            if "path" in t.column_names:
                keys = zip(t["path"].to_pylist(), t["size"].to_pylist(),
                           t["mtime_ns"].to_pylist(), strict=True)
                self._stat_hash.update(zip(keys, hashes, strict=True))
        self._next_part = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        self.hits = 0
        self.computed = 0

    def _write_part(self, paths: list[str], hashes: list[str], vecs: np.ndarray) -> None:
        n = self._next_part
        final = self.dir / f"part-{n:05d}.parquet"
        tmp = self.dir / f".part-{n:05d}.parquet.tmp"
        stats = [file_stat(p) for p in paths]
        pq.write_table(pa.table({
            "sha256": hashes,
            "embedding": pa.array(list(vecs), type=pa.list_(pa.float32())),
            "path": paths, "size": [st[0] for st in stats],
            "mtime_ns": [st[1] for st in stats],
        }), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self._next_part = n + 1

    def embed(self, paths: list[str], batch_size: int = 64, progress: bool = False
              ) -> np.ndarray:
        """L2-normalised teacher embeddings float32 [len(paths), D], from the cache where
        it has them. A photo whose path, size and mtime are as recorded is not hashed again."""
        from tqdm import tqdm

        hashes = [known_or_file_sha256(p, self._stat_hash)
                  for p in tqdm(paths, disable=not progress, unit="photo", desc="hashing photos")]
        todo: dict[str, str] = {}
        for p, h in zip(paths, hashes, strict=True):
            if h not in self._known and h not in todo:
                todo[h] = p
        self.hits = sum(h in self._known for h in hashes)
        items = list(todo.items())
        size = self.encoder.image_size
        for s in tqdm(range(0, len(items), batch_size), disable=not progress or not items,
                      unit="batch", desc="teacher embeddings"):
            chunk = items[s:s + batch_size]
            batch = np.stack([load_photo(p, size) for _, p in chunk])
            vecs = self.encoder.encode_images(batch)
            self._write_part([p for _, p in chunk], [h for h, _ in chunk], vecs)
            self._known.update(zip([h for h, _ in chunk], vecs, strict=True))
            self.computed += len(chunk)
        if not paths:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([self._known[h] for h in hashes]).astype(np.float32)
