"""The index directory's layout: file names, the names the writer may delete, Parquet schemas,
and durable writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa

FORMAT = "satfind-index"


FORMAT_VERSION = 2  # 2: the ANN as a template + appended codes; 1: one FAISS file per commit


READABLE_VERSIONS = (1, 2)


MANIFEST = "manifest.json"


VECTORS_F16 = "vectors.f16.npy"


TILES_DIR = "tiles"


THUMBS_DIR = "thumbs"


LOCK = ".lock"


# Every name the writer ever creates. Garbage collection touches nothing else, so a user's
# own files are never at risk, even inside an index directory.
PART_RE = re.compile(r"part-\d{5}\.parquet")


ARROW_PART_RE = re.compile(r"part-\d{5}\.arrow")  # a part's rows, memory-mappable (tiles/)


FAISS_RE = re.compile(r"vectors-\d{6}\.faiss")  # format 1's whole index per commit


ANN_RE = re.compile(r"ann-\d{6}\.faiss")  # a trained, empty ANN (IVF centroids, PQ books)


CODES_RE = re.compile(r"codes-\d{6}\.npy")  # one ANN code per tile id, appended


DELETED = "deleted.npy"  # ids of removed tiles, appended


TMP_RE = re.compile(r"\.(manifest\.json|vectors-\d{6}\.faiss|ann-\d{6}\.faiss)\.tmp-\d+")


# One row per tile in tiles/part-NNNNN.parquet; id + JPEG in thumbs/part-NNNNN.parquet.
TILE_SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("z", pa.int8()),
    ("x", pa.int32()),
    ("y", pa.int32()),
    ("west", pa.float64()),
    ("south", pa.float64()),
    ("east", pa.float64()),
    ("north", pa.float64()),
    ("source", pa.string()),
    ("source_key", pa.string()),
    ("acquired", pa.timestamp("us", tz="UTC")),
    ("sensor", pa.string()),
    ("gsd_m", pa.float32()),
    ("native_gsd_m", pa.float32()),
    ("nodata_fraction", pa.float32()),
])


THUMB_SCHEMA = pa.schema([("id", pa.int64()), ("jpeg", pa.binary())])


def ann_name(generation: int) -> str:
    return f"ann-{generation:06d}.faiss"


def codes_name(generation: int) -> str:
    return f"codes-{generation:06d}.npy"


def part_name(number: int) -> str:
    return f"part-{number:05d}.parquet"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename over `path`, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
