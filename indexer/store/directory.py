"""The index directory as a place on disk: proving it is an index before anything is
deleted, the one-writer lock, and cleaning what an interrupted run left behind."""

from __future__ import annotations

import fcntl
from pathlib import Path

from indexer.errors import IndexError_
from indexer.store.layout import (
    ANN_RE,
    ARROW_PART_RE,
    CODES_RE,
    DELETED,
    FAISS_RE,
    LOCK,
    MANIFEST,
    PART_RE,
    THUMBS_DIR,
    TILES_DIR,
    TMP_RE,
)
from indexer.store.manifest import Manifest, read_manifest
from indexer.store.rows import arrow_path

# POSIX locks are per process; this set stops two writers inside one process.
_HELD: set[Path] = set()


def _is_leftover(entry: Path) -> bool:
    """What an index creation killed before its first manifest can leave behind."""
    return entry.name == LOCK or bool(TMP_RE.fullmatch(entry.name))


def check_directory(d: Path, create: bool) -> None:
    """Refuse (one line) a `d` that is neither an index (a satfind manifest) nor, when
    `create`, a place for a new one (absent, or empty): the writer deletes files, and it
    must never delete a user's."""
    if d.exists() and not d.is_dir():
        raise IndexError_(f"{d}: exists and is not a directory")
    if (d / MANIFEST).is_file():
        read_manifest(d)  # refuses a manifest.json that is not satfind's
        return
    if not create:
        raise IndexError_(f"{d}: not a satfind index (no {MANIFEST})")
    if d.is_dir():
        try:
            foreign = [e.name for e in d.iterdir() if not _is_leftover(e)]
        except OSError as e:
            raise IndexError_(f"{d}: cannot list the directory ({e.strerror})") from None
        if foreign:
            raise IndexError_(
                f"{d}: not a satfind index (no {MANIFEST}) and not empty (holds "
                f"{sorted(foreign)[0]!r}{' and more' if len(foreign) > 1 else ''}); "
                "give a new or empty directory")


class WriterLock:
    """An exclusive advisory lock on the index directory (one writer; readers never lock)."""

    def __init__(self, d: Path):
        self._key = d.resolve()
        busy = IndexError_(f"{d}: another satfind-index process is writing this index")
        if self._key in _HELD:
            raise busy
        self._file = open(d / LOCK, "a+")
        try:
            # A POSIX record lock belongs to this process only: forked DataLoader workers do
            # not inherit it, so a killed writer never leaves the index locked by orphans.
            fcntl.lockf(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise busy from None
        _HELD.add(self._key)

    def release(self) -> None:
        _HELD.discard(self._key)
        self._file.close()


def clean_garbage(d: Path, m: Manifest) -> None:
    """Delete files the writer's own naming scheme made that no committed manifest names
    (interrupted runs, superseded parts). Nothing else is ever touched."""
    keep_parts = {p.name for p in m.parts}
    keep_parts |= {arrow_path(Path(p.name)).name for p in m.parts if p.arrow}
    for sub in (TILES_DIR, THUMBS_DIR):
        for f in (d / sub).iterdir():
            if _is_part(f.name) and f.name not in keep_parts and f.is_file():
                f.unlink(missing_ok=True)
    drop_old_index_files(d, {m.index.file, m.index.codes})
    for f in d.iterdir():
        if TMP_RE.fullmatch(f.name) and f.is_file():
            f.unlink(missing_ok=True)


def _is_part(name: str) -> bool:
    return bool(PART_RE.fullmatch(name) or ARROW_PART_RE.fullmatch(name))


def _is_index_file(name: str) -> bool:
    return any(r.fullmatch(name) for r in (FAISS_RE, ANN_RE, CODES_RE))


def drop_old_index_files(d: Path, keep: set[str | None]) -> None:
    """Delete vector-index files (of either format) not in `keep`."""
    for f in d.iterdir():
        if _is_index_file(f.name) and f.name not in keep and f.is_file():
            f.unlink(missing_ok=True)


def uncreate(d: Path, m: Manifest) -> None:
    """Remove an index that was created and never committed (only the lock file stays, to
    mark the directory as satfind's for the next run). The manifest goes last: until then,
    whatever is left is a valid empty index."""
    try:
        if m.vectors_f16:
            (d / m.vectors_f16).unlink(missing_ok=True)
        drop_old_index_files(d, set())
        (d / DELETED).unlink(missing_ok=True)
        for sub in (TILES_DIR, THUMBS_DIR):
            for f in (d / sub).iterdir():
                if _is_part(f.name):
                    f.unlink(missing_ok=True)
            (d / sub).rmdir()
        (d / MANIFEST).unlink(missing_ok=True)
    except OSError:
        pass  # what is left is a valid empty index
