"""The index manifest: its layout constants and the atomic write that is the commit."""

from __future__ import annotations

import json
from pathlib import Path

from indexer.errors import IndexError_
from indexer.store.layout import FORMAT, FORMAT_VERSION, MANIFEST, PART_RE, atomic_write_bytes


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
