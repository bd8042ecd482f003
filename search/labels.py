"""Named label sets: positive and negative tile ids, kept in the index directory
(`labels/<name>.json`, written atomically: temp file, fsync, rename). Each entry also keeps
the tile's place (z/x/y, acquisition, source) so an export stays meaningful; tile ids are
stable (an id is never reused, and indexing another raster never renumbers a tile), and a
tile removed since it was labelled is reported as missing, not silently dropped."""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from search.query import NotFound, QueryError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LABELS_DIR = "labels"
MAX_LABELS = 10000


@dataclass
class LabelSet:
    name: str
    positives: dict[int, dict] = field(default_factory=dict)  # id -> place
    negatives: dict[int, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "format": 1,
                "positives": [{"id": i, **p} for i, p in sorted(self.positives.items())],
                "negatives": [{"id": i, **p} for i, p in sorted(self.negatives.items())]}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSet:
        def entries(key):
            return {int(e["id"]): {k: v for k, v in e.items() if k != "id"} for e in d[key]}

        return cls(d["name"], entries("positives"), entries("negatives"))


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise QueryError(f"label set name {name!r}: 1-64 characters of letters, digits, "
                         "'_', '-' and '.', starting with a letter or digit")
    return name


class LabelStore:
    def __init__(self, index_dir: Path):
        self.dir = Path(index_dir) / LABELS_DIR
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}.json"

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json") if NAME_RE.fullmatch(p.stem))

    def get(self, name: str) -> LabelSet:
        path = self._path(name)
        try:
            return LabelSet.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise NotFound(f"no label set {name!r}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise QueryError(f"label set {name!r} is unreadable ({type(e).__name__})") from None

    def put(self, ls: LabelSet) -> None:
        if len(ls.positives) + len(ls.negatives) > MAX_LABELS:
            raise QueryError(f"a label set holds at most {MAX_LABELS} tiles")
        both = set(ls.positives) & set(ls.negatives)
        if both:
            raise QueryError(f"tile {min(both)} is both a positive and a negative")
        with self._lock:
            self.dir.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(ls.to_dict(), f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._path(ls.name))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            raise NotFound(f"no label set {name!r}") from None
