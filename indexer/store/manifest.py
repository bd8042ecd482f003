"""The typed manifest: what one commit of an index holds (encoder, tile recipe, vector
index, parts, sources, counts). Writing it (temp file + fsync + rename) is the commit.

The JSON keys are the on-disk format; nothing outside `indexer.store` sees the dict.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from encoder.identity import EncoderIdentity
from indexer.config import TileRecipe
from indexer.errors import IndexError_
from indexer.store.layout import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PART_RE,
    READABLE_VERSIONS,
    VECTORS_F16,
    atomic_write_bytes,
)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Part:
    """One tiles/ + thumbs/ Parquet pair: its name, the tile ids it holds and the keys of
    the sources they come from (None in parts written before that was recorded), so that
    finding or removing a source's tiles reads only the parts that hold some."""

    name: str
    rows: int
    id_min: int
    id_max: int
    sources: list[str] | None = None
    # tiles/ also holds the part's rows as an Arrow IPC file (rows.py); None: written before
    arrow: bool | None = None

    def may_hold(self, key: str) -> bool:
        return self.sources is None or key in self.sources


@dataclass
class SourceEntry:
    """One indexed raster. `status` is "partial" until every tile went through the job.
    A local raster is known by path, size, mtime and content hash; a remote one by its URL
    (no query string), STAC item id and `remote_version` (file:checksum, ETag or
    Last-Modified), with content_sha256 empty and mtime_ns 0."""

    path: str
    content_sha256: str
    size: int
    mtime_ns: int
    stac_item: str | None = None
    status: str = "partial"
    zoom: int = 0
    gsd_m: float = 0.0
    native_gsd_m: float = 0.0
    acquired: str | None = None
    sensor: str = "unknown"
    crs: str = ""
    tiles: int = 0
    skipped_nodata: int = 0
    item_id: str | None = None
    remote_version: str = ""
    # A partial source: how many of its tiles, in the job's read order (block or band, row,
    # column), went through (added or skipped as nodata) by this commit; a resumed run
    # skips them.
    through: int = 0
    # The read order's column bands, in tiles (grid.column_bands; 0: whole rows, as every
    # index before them was read): a resumed run reads in the order `through` counts.
    band: int = 0

    @property
    def complete(self) -> bool:
        return self.status == "complete"


@dataclass
class IndexInfo:
    """The committed vector index and how it was chosen. Format 2: `file` is the trained,
    empty ANN (None for Flat) and `codes` the file of one code per tile id (None before the
    first tile); format 1: `file` is the whole index."""

    file: str | None = None
    codes: str | None = None
    code_size: int | None = None
    factory: str = "Flat"
    metric: str = "inner_product"
    chosen: str = ""
    ntotal: int = 0
    nlist: int | None = None
    pq_m: int | None = None
    trained_on: int | None = None
    trained_at: int | None = None


@dataclass
class Manifest:
    encoder: EncoderIdentity
    dim: int
    generation: int = 0
    created: str = field(default_factory=now)
    updated: str = field(default_factory=now)
    next_id: int = 0
    next_part: int = 0
    index: IndexInfo = field(default_factory=IndexInfo)
    vectors_f16: str | None = VECTORS_F16
    parts: list[Part] = field(default_factory=list)
    sources: dict[str, SourceEntry] = field(default_factory=dict)
    # None for an index written before the recipe was recorded.
    recipe: TileRecipe | None = None
    deleted: int = 0  # committed rows of the tombstone file (ids of removed tiles)
    version: int = FORMAT_VERSION  # as read; a writer always writes FORMAT_VERSION

    @property
    def tiles(self) -> int:
        return self.index.ntotal

    def copy(self) -> Manifest:
        return copy.deepcopy(self)

    def to_dict(self) -> dict:
        index = {k: v for k, v in asdict(self.index).items()
                 if v is not None or k == "file"}
        d = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "generation": self.generation, "created": self.created, "updated": self.updated,
            "encoder": self.encoder.to_dict(), "dim": self.dim, "next_id": self.next_id,
            "next_part": self.next_part, "index": index, "vectors_f16": self.vectors_f16,
            "deleted": self.deleted,
            "parts": [{k: v for k, v in asdict(p).items() if v is not None}
                      for p in self.parts],
            "sources": {k: asdict(s) for k, s in self.sources.items()},
            "counts": {"tiles": self.index.ntotal, "sources": len(self.sources)},
        }
        if self.recipe is not None:
            d["recipe"] = self.recipe.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, where: Path) -> Manifest:
        """Parse and check a manifest (structure, part names and id ranges); a damaged one
        is refused in one line."""
        try:
            m = cls(
                encoder=EncoderIdentity.from_dict(d["encoder"]), dim=int(d["dim"]),
                generation=int(d["generation"]), created=str(d["created"]),
                updated=str(d["updated"]), next_id=int(d["next_id"]),
                next_part=int(d["next_part"]), index=_typed(IndexInfo, d["index"]),
                vectors_f16=d["vectors_f16"],
                parts=[Part(str(p["name"]), int(p["rows"]), int(p["id_min"]), int(p["id_max"]),
                            [str(k) for k in p["sources"]] if "sources" in p else None,
                            bool(p["arrow"]) if "arrow" in p else None)
                       for p in d["parts"]],
                deleted=int(d.get("deleted", 0)), version=int(d["format_version"]),
                sources={str(k): _typed(SourceEntry, s) for k, s in d["sources"].items()},
                recipe=TileRecipe.from_dict(d["recipe"]) if d.get("recipe") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IndexError_(f"{where}: damaged manifest (bad or missing {e})") from None
        m.check(where)
        return m

    def check(self, where: Path) -> None:
        """Structural checks of the parts (no file is read): names, id ranges inside
        next_id and not overlapping, counts adding up."""
        total, last = 0, -1
        for p in sorted(self.parts, key=lambda p: p.id_min):
            if not PART_RE.fullmatch(p.name):
                raise IndexError_(f"{where}: part name {p.name!r} is not one satfind writes")
            if not 0 <= p.id_min <= p.id_max < self.next_id or not 0 < p.rows <= (
                    p.id_max - p.id_min + 1):
                raise IndexError_(f"{where}: part {p.name} has ids {p.id_min}..{p.id_max} "
                                  f"({p.rows} rows) outside 0..{self.next_id - 1}")
            if p.id_min <= last:
                raise IndexError_(f"{where}: part {p.name} repeats tile ids of another part "
                                  "(duplicate ids)")
            last, total = p.id_max, total + p.rows
        if self.index.ntotal != total:
            raise IndexError_(f"{where}: the vector index holds {self.index.ntotal} tiles but "
                              f"the parts hold {total}")
        if self.version >= 2 and self.next_id - self.index.ntotal != self.deleted:
            raise IndexError_(f"{where}: {self.next_id} tile ids given, {self.index.ntotal} "
                              f"held, but {self.deleted} recorded as removed")


def _typed(cls, d: dict):
    """A dataclass from a JSON object: known keys only, types as declared."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__} is not an object")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    atomic_write_bytes(index_dir / MANIFEST, json.dumps(manifest.to_dict(), indent=1).encode())


def read_manifest(index_dir: Path) -> Manifest | None:
    """The committed manifest, or None for a directory that holds no index yet."""
    path = index_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexError_(f"{path}: unreadable manifest ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexError_(f"{path}: not a satfind index manifest")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise IndexError_(f"{path}: index format version {data.get('format_version')} is not "
                          f"supported (this satfind reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))})")
    return Manifest.from_dict(data, path)
