"""Native libraries' chatter during indexing goes to the debug log, not to the user's terminal.

GDAL reports warnings through rasterio's Python logger; what FAISS would print on the C-level
stderr about a k-means with too few points, the store says itself (VectorIndex.training_note).
Both are collected here (`satfind.native` logger, DEBUG) and counted, so a run ends with
one summary line instead of a wall of repeated warnings. Tile reads in DataLoader worker
processes capture their warnings per tile (`captured()`) and the job passes them on.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("satfind.native")
GDAL_LOGGER = "rasterio"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def public_url(path: str) -> str:
    """A URL without its query string, fragment and user name / password (where signatures
    and tokens live): what may be stored and printed. Anything else as is."""
    if not _URL.match(path):
        return path
    p = urlsplit(path)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


def printable(text: str) -> str:
    """Free text (a GDAL message) with every URL in it reduced to `public_url` form."""
    text = text.replace("/vsicurl/", "")

    def one(m: re.Match) -> str:
        url = m.group(0)
        tail = url[len(url.rstrip(":,;.)")):]  # punctuation after the URL stays
        return public_url(url[: len(url) - len(tail)]) + tail

    return _URL_IN_TEXT.sub(one, text)


@dataclass
class NativeWarnings:
    count: int = 0
    first: str | None = None

    def note(self, message: str) -> None:
        message = printable(" ".join(message.split()))  # no URL query strings (signatures)
        if not message:
            return
        self.count += 1
        if self.first is None:
            self.first = message[:200]
        log.debug("%s", message)

    def summary(self) -> str:
        return (f"{self.count} warning(s) from GDAL/FAISS sent to the debug log "
                f"(first: {self.first}); -v shows them")


class _Collect(logging.Handler):
    def __init__(self, sink):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink(record.getMessage())
        except Exception:  # a logging handler must never raise
            pass


_current: NativeWarnings | None = None


def note(message: str) -> None:
    """Count a native warning in the running `quiet_native_warnings()` block (if any)."""
    if _current is not None:
        _current.note(message)


@contextlib.contextmanager
def _gdal_to(sink) -> Iterator[None]:
    logger = logging.getLogger(GDAL_LOGGER)
    saved = (logger.handlers[:], logger.propagate)
    logger.handlers = [_Collect(sink)]
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved


@contextlib.contextmanager
def quiet_native_warnings(verbose: bool = False) -> Iterator[NativeWarnings]:
    """For a command's whole run: GDAL warnings counted (and printed only when verbose)."""
    global _current
    seen = NativeWarnings()
    if verbose:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        log.setLevel(logging.DEBUG)
    previous, _current = _current, seen
    try:
        with _gdal_to(seen.note):
            yield seen
    finally:
        _current = previous


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """GDAL warnings raised inside the block, as a list (for a worker to send back)."""
    out: list[str] = []
    with _gdal_to(out.append):
        yield out
