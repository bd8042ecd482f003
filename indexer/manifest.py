"""The index manifest: its layout constants and the atomic write that is the commit."""

from __future__ import annotations

import json
import os
import re
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

# Every name the writer ever creates. Garbage collection touches nothing else, so a user's
# own files are never at risk, even inside an index directory.
PART_RE = re.compile(r"part-\d{5}\.parquet")
FAISS_RE = re.compile(r"vectors-\d{6}\.faiss")
TMP_RE = re.compile(r"\.(manifest\.json|vectors-\d{6}\.faiss)\.tmp-\d+")


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


def check_parts(index_dir: Path, m: dict) -> None:
    """Structural checks of a manifest's parts (no file is read): names, id ranges inside
    next_id and not overlapping, counts adding up. A damaged index is refused in one line."""
    where = index_dir / MANIFEST
    try:
        next_id = int(m["next_id"])
        parts = sorted(m["parts"], key=lambda p: int(p["id_min"]))
        total, last = 0, -1
        for p in parts:
            lo, hi, rows = int(p["id_min"]), int(p["id_max"]), int(p["rows"])
            if not PART_RE.fullmatch(str(p["name"])):
                raise IndexError_(f"{where}: part name {p['name']!r} is not one satfind writes")
            if not 0 <= lo <= hi < next_id or not 0 < rows <= hi - lo + 1:
                raise IndexError_(f"{where}: part {p['name']} has ids {lo}..{hi} ({rows} rows) "
                                  f"outside 0..{next_id - 1}")
            if lo <= last:
                raise IndexError_(f"{where}: part {p['name']} repeats tile ids of another part "
                                  "(duplicate ids)")
            last, total = hi, total + rows
        ntotal = int(m["index"]["ntotal"])
    except (KeyError, TypeError, ValueError) as e:
        raise IndexError_(f"{where}: damaged manifest (bad or missing {e})") from None
    if ntotal != total:
        raise IndexError_(f"{where}: the vector index holds {ntotal} tiles but the parts hold "
                          f"{total}")
