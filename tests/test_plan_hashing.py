"""The plan's identity step for local files: content hashes computed HASH_THREADS files at a
time, the same as one at a time, shown as progress, and stopped at once by Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from indexer.config import RemoteSettings, StoreSettings
from indexer.job import plan
from indexer.rasters.sources import RasterSource
from indexer.store.writer import IndexWriter
from tests.test_store import IDENT


def _files(tmp_path, n: int) -> list[str]:
    out = []
    for i in range(n):
        p = tmp_path / f"f{i}.tif"
        p.write_bytes(os.urandom(1000 + 7919 * i))
        out.append(str(p))
    return out


def test_parallel_hashes_are_the_files_hashes_in_source_order(tmp_path, monkeypatch):
    paths = _files(tmp_path, 9)
    sources = [RasterSource(p) for p in paths] + [RasterSource(str(tmp_path / "missing.tif"))]
    problems, bars = [], []

    def progress(items, desc, total):
        bars.append((desc, total))
        return items

    with IndexWriter(tmp_path / "idx", IDENT, StoreSettings()) as w:
        got = plan.identify(w, sources, RemoteSettings(), problems.append, progress)
        monkeypatch.setattr(plan, "HASH_THREADS", 1)
        one_by_one = plan.identify(w, sources, RemoteSettings(), lambda e: None)
    assert [s.path for s, _ in got] == paths  # in the sources' order, the missing one out
    for (_, ident), path in zip(got, paths, strict=True):
        with open(path, "rb") as f:
            assert ident.sha256 == hashlib.sha256(f.read()).hexdigest()
        assert ident.size == os.path.getsize(path)
    assert [i for _, i in got] == [i for _, i in one_by_one]
    assert len(problems) == 1 and "missing.tif" in str(problems[0])
    assert "cannot read file" in str(problems[0])
    assert bars == [("hashing rasters", 10)]


def test_ctrl_c_while_hashing_stops_the_hashing_threads_at_once(tmp_path):
    """A 16 GB file (sparse: no disk) takes ~10 s to hash here; Ctrl-C as soon as a small
    file's hash is in returns in well under that, the hashing threads stopped."""
    small = tmp_path / "small.tif"
    small.write_bytes(b"x" * 1000)
    big = tmp_path / "big.tif"
    with open(big, "wb") as f:
        f.truncate(16 << 30)

    def progress(items, desc, total):
        for _ in items:
            raise KeyboardInterrupt

    sources = [RasterSource(str(big)), RasterSource(str(small))]
    with IndexWriter(tmp_path / "idx", IDENT, StoreSettings()) as w:
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            plan.identify(w, sources, RemoteSettings(), lambda e: None, progress)
        assert time.monotonic() - t0 < 2.0
    assert not [t for t in threading.enumerate()
                if t.name.startswith("satfind-hash")]
