"""Content hashes (the bottom layer: the indexer keys rasters, the teacher cache photos)."""

from __future__ import annotations

import hashlib
import os

StatKey = tuple[str, int, int]  # path, size, mtime_ns


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def known_or_file_sha256(path: str, known: dict[StatKey, str]) -> str:
    """The recorded hash when path, size and mtime are unchanged, else hash the file."""
    size, mtime = file_stat(path)
    return known.get((path, size, mtime)) or file_sha256(path)
