"""Append-only row files: `.npy` matrices whose row i belongs to tile id i (the float16
vector copies, the ANN codes) or to the i-th deletion (the tombstones).

A standard .npy file (np.load reads it) whose header is padded to a fixed 128 bytes so the
row count can be rewritten in place after each append. Rows past the manifest's committed
count are garbage from an interrupted run: readers never look at them and the next writer
truncates them. A commit therefore writes only the rows it adds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from indexer.errors import IndexError_

HEADER_BYTES = 128
F16 = np.dtype("<f2")  # the float16 vector copies
CODE = np.dtype("|u1")  # ANN codes
ID = np.dtype("<i8")  # deleted tile ids


def _header(rows: int, width: int, dtype: np.dtype) -> bytes:
    d = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': ({rows}, {width}), }}"
    body_len = HEADER_BYTES - 10
    body = d.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + body.encode("latin1")


def check_rows(path: Path, rows: int, width: int, dtype: np.dtype = F16) -> None:
    """Refuse (IndexError_) a row file that cannot hold the manifest's committed rows:
    missing, truncated, or written for another width or type."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            shape, fortran, found = np.lib.format.read_array_header_1_0(f)
    except FileNotFoundError:
        raise IndexError_(f"{path.name} is missing; the manifest names {rows} rows") from None
    except OSError as e:
        raise IndexError_(f"{path.name}: cannot read ({e.strerror})") from None
    except ValueError:
        raise IndexError_(f"{path.name}: damaged header (not a satfind row file)") from None
    if found != dtype or fortran or len(shape) != 2 or shape[1] != width:
        raise IndexError_(f"{path.name}: holds {found} {shape}, expected {dtype} rows of "
                          f"{width} (damaged file?)")
    need = HEADER_BYTES + rows * width * dtype.itemsize
    if size < need:
        raise IndexError_(f"{path.name} is truncated: {size} bytes, the manifest's {rows} "
                          f"committed rows need {need}")


class RowFileWriter:
    """Rows are written at an explicit position (the committed row count), so a commit that
    fails half-way and is retried writes the same rows to the same place."""

    def __init__(self, path: Path, width: int, committed_rows: int, dtype: np.dtype = F16):
        self.path, self.width, self.dtype = path, width, np.dtype(dtype)
        exists = path.exists()
        if exists or committed_rows:
            check_rows(path, committed_rows, width, self.dtype)  # missing with rows: refused
        self._f = open(path, "r+b" if exists else "w+b")
        self.rows = committed_rows
        self._f.truncate(HEADER_BYTES + committed_rows * width * self.dtype.itemsize)
        self._write_header()

    def _write_header(self) -> None:
        self._f.seek(0)
        self._f.write(_header(self.rows, self.width, self.dtype))
        self._f.flush()
        os.fsync(self._f.fileno())

    def write_at(self, row: int, values: np.ndarray) -> None:
        """Write rows starting at `row` (data fsynced before the header names them)."""
        v = np.ascontiguousarray(values, dtype=self.dtype)
        if v.ndim == 1 and self.width == 1:
            v = v[:, None]
        if v.ndim != 2 or v.shape[1] != self.width:
            raise ValueError(f"expected [N, {self.width}] rows, got {v.shape}")
        self._f.seek(HEADER_BYTES + row * self.width * self.dtype.itemsize)
        self._f.write(v.tobytes())
        self._f.flush()
        os.fsync(self._f.fileno())
        self.rows = row + len(v)
        self._write_header()

    def close(self) -> None:
        self._f.close()


def open_rows(path: Path, rows: int, width: int, dtype: np.dtype = F16) -> np.ndarray:
    """Read-only memory map of the first `rows` committed rows."""
    if rows == 0:
        return np.zeros((0, width), dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(rows, width))
