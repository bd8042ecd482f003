"""Process memory for benchmarks: resident bytes (anonymous / file-backed) from /proc, the
peak per phase, and an empty page cache before a cold open."""

from __future__ import annotations

import ctypes
import gc
import os
import time
from pathlib import Path


def status() -> dict[str, int]:
    """RssAnon, RssFile, VmHWM (peak resident) of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def settled() -> dict[str, int]:
    """status() after handing freed heap memory back to the OS (gc, glibc malloc_trim), so
    that the growth measured from it is new memory, not the build's freed memory reused."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return status()


def reset_peak() -> bool:
    """Start a new VmHWM period (Linux >= 4.0: clear_refs 5); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


class Phases:
    """Peak resident memory per phase of the run (VmHWM, reset at each phase's start)."""

    def __init__(self):
        self.resettable = reset_peak()
        self.rows: dict[str, dict] = {}
        self._name, self._t0 = None, 0.0

    def start(self, name: str) -> None:
        self.end()
        reset_peak()
        self._name, self._t0 = name, time.perf_counter()

    def end(self) -> None:
        if self._name is None:
            return
        s = status()
        self.rows[self._name] = {"peak_rss": s.get("VmHWM", 0), "rss_anon_end": s.get(
            "RssAnon", 0), "rss_file_end": s.get("RssFile", 0),
            "s": time.perf_counter() - self._t0}
        self._name = None


def make_cold(index: Path) -> str:
    """Empty the page cache of the index's files before an open; says how (or that the
    open is warm)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "cold (sync; echo 3 > /proc/sys/vm/drop_caches)"
    except OSError as e:
        why = e.strerror or type(e).__name__
    # No permission to drop every cache: evict the index's own (clean, fsynced) pages.
    try:
        for f in index.rglob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        return f"cold (drop_caches refused: {why}; the index's files evicted with " \
               "posix_fadvise DONTNEED)"
    except (OSError, AttributeError) as e:
        return f"WARM: could not empty the page cache (drop_caches: {why}; fadvise: {e})"
