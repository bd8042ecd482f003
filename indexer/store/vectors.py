"""`vectors.f16.npy`: an append-only float16 matrix, row i = the vector of tile id i.

A standard .npy file (np.load reads it) whose header is padded to a fixed 128 bytes so the
row count can be rewritten in place after each append. Rows past the manifest's committed
count are garbage from an interrupted run: readers never look at them and the next writer
truncates them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from indexer.errors import IndexError_

HEADER_BYTES = 128
DTYPE = np.dtype("<f2")


def _header(rows: int, dim: int) -> bytes:
    d = f"{{'descr': '{DTYPE.str}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    body_len = HEADER_BYTES - 10
    body = d.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + body.encode("latin1")


def check_vectors(path: Path, rows: int, dim: int) -> None:
    """Refuse (IndexError_) a float16 file that cannot hold the manifest's committed rows:
    missing, truncated, or written for another dimension or type."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    except FileNotFoundError:
        raise IndexError_(f"{path.name} is missing; the manifest names {rows} rows") from None
    except OSError as e:
        raise IndexError_(f"{path.name}: cannot read ({e.strerror})") from None
    except ValueError:
        raise IndexError_(f"{path.name}: damaged header (not a satfind float16 vector file)"
                          ) from None
    if dtype != DTYPE or fortran or len(shape) != 2 or shape[1] != dim:
        raise IndexError_(f"{path.name}: holds {dtype} {shape}, expected float16 rows of "
                          f"{dim} (damaged file?)")
    need = HEADER_BYTES + rows * dim * DTYPE.itemsize
    if size < need:
        raise IndexError_(f"{path.name} is truncated: {size} bytes, the manifest's {rows} "
                          f"committed rows need {need}")


class VectorFileWriter:
    """Rows are written at an explicit position (the committed row count), so a commit that
    fails half-way and is retried writes the same rows to the same place."""

    def __init__(self, path: Path, dim: int, committed_rows: int):
        self.path, self.dim = path, dim
        exists = path.exists()
        if exists or committed_rows:
            check_vectors(path, committed_rows, dim)  # a missing file with rows is refused
        self._f = open(path, "r+b" if exists else "w+b")
        self.rows = committed_rows
        self._f.truncate(HEADER_BYTES + committed_rows * dim * DTYPE.itemsize)
        self._write_header()

    def _write_header(self) -> None:
        self._f.seek(0)
        self._f.write(_header(self.rows, self.dim))
        self._f.flush()
        os.fsync(self._f.fileno())

    def write_at(self, row: int, vectors: np.ndarray) -> None:
        """Write rows starting at `row` (data fsynced before the header names them)."""
        v = np.ascontiguousarray(vectors, dtype=DTYPE)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"expected [N, {self.dim}] vectors, got {v.shape}")
        self._f.seek(HEADER_BYTES + row * self.dim * DTYPE.itemsize)
        self._f.write(v.tobytes())
        self._f.flush()
        os.fsync(self._f.fileno())
        self.rows = row + len(v)
        self._write_header()

    def close(self) -> None:
        self._f.close()


def open_vectors(path: Path, rows: int, dim: int) -> np.ndarray:
    """Read-only memory map of the first `rows` committed rows."""
    if rows == 0:
        return np.zeros((0, dim), dtype=DTYPE)
    return np.memmap(path, dtype=DTYPE, mode="r", offset=HEADER_BYTES, shape=(rows, dim))
