"""The index manifest: its layout constants and the atomic write that is the commit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

from indexer.errors import IndexError_

FORMAT = "satfind-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS_F16 = "vectors.f16.npy"
TILES_DIR = "tiles"
THUMBS_DIR = "thumbs"
LOCK = ".lock"


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


def faiss_name(generation: int) -> str:
    return f"vectors-{generation:06d}.faiss"


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


def write_manifest(index_dir: Path, manifest: dict) -> None:
    atomic_write_bytes(index_dir / MANIFEST, json.dumps(manifest, indent=1).encode())


def read_manifest(index_dir: Path) -> dict | None:
    """The committed manifest, or None for a directory that holds no index yet."""
    path = index_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexError_(f"{path}: unreadable manifest ({e.__class__.__name__}: {e})") from None
    if data.get("format") != FORMAT:
        raise IndexError_(f"{path}: not a satfind index manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise IndexError_(f"{path}: index format version {data.get('format_version')} is not "
                          f"supported (this satfind reads version {FORMAT_VERSION})")
    return data
