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

from encoder.hashing import file_sha256
from encoder.images import square_tile

# Changing how photos become teacher input changes the embeddings: bump this with it.
PHOTO_PREPROCESS = "square_tile-bicubic-centre-v1"


class PhotoError(ValueError):
    """A ground photo that cannot be read (one line naming it)."""


def teacher_key(encoder) -> str:
    ident = {**encoder.identity.to_dict(), "preprocess": PHOTO_PREPROCESS}
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
        for part in sorted(self.dir.glob("part-*.parquet")):
            t = pq.read_table(part)
            vecs = np.asarray(t["embedding"].to_pylist(), dtype=np.float32)
            self._known.update(zip(t["sha256"].to_pylist(), vecs, strict=True))
        self.hits = 0
        self.computed = 0

    def __len__(self) -> int:
        return len(self._known)

    def _write_part(self, hashes: list[str], vecs: np.ndarray) -> None:
        n = len(list(self.dir.glob("part-*.parquet")))
        final = self.dir / f"part-{n:05d}.parquet"
        tmp = self.dir / f".part-{n:05d}.parquet.tmp"
        pq.write_table(pa.table({
            "sha256": hashes,
            "embedding": pa.array(list(vecs), type=pa.list_(pa.float32())),
        }), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def embed(self, paths: list[str], batch_size: int = 64, progress: bool = False
              ) -> np.ndarray:
        """L2-normalised teacher embeddings float32 [len(paths), D], from the cache where
        it has them."""
        from tqdm import tqdm

        hashes = [file_sha256(p) for p in tqdm(paths, disable=not progress, unit="photo",
                                                 desc="hashing photos")]
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
            self._write_part([h for h, _ in chunk], vecs)
            self._known.update(zip([h for h, _ in chunk], vecs, strict=True))
            self.computed += len(chunk)
        if not paths:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([self._known[h] for h in hashes]).astype(np.float32)
