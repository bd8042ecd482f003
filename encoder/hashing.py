"""Content hashes (the bottom layer: the indexer keys rasters, the teacher cache photos)."""

from __future__ import annotations

import hashlib


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
