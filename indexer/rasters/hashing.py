"""Content hashes (the bottom layer: the indexer keys rasters, the teacher cache photos)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading

StatKey = tuple[str, int, int]  # path, size, mtime_ns


def file_sha256(path: str, chunk: int = 1 << 22, stop: threading.Event | None = None) -> str:
    """SHA-256 of a file's bytes, read in chunks; InterruptedError between two chunks once
    `stop` is set (a thread hashing a large file gives up when the job is interrupted)."""
    h = hashlib.sha256()
    # O_NONBLOCK: opening a FIFO must not wait for a writer; anything but a regular file
    # (/dev/zero never ends) is refused before a byte is read.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        while block := f.read(chunk):
            if stop is not None and stop.is_set():
                raise InterruptedError(errno.EINTR, "hashing stopped", path)
            h.update(block)
    return h.hexdigest()


def file_stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def known_or_file_sha256(path: str, known: dict[StatKey, str],
                         stop: threading.Event | None = None) -> str:
    """The recorded hash when path, size and mtime are unchanged, else hash the file."""
    size, mtime = file_stat(path)
    return known.get((path, size, mtime)) or file_sha256(path, stop=stop)
