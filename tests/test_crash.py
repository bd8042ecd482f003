"""Crash safety with a real subprocess: SIGKILL mid-run, readers in another process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.job.pipeline import IndexJob
from indexer.store.layout import THUMBS_DIR, TILES_DIR
from indexer.store.snapshot import IndexSnapshot
from tests import chaos
from tests.conftest import OFFLINE_CONFIG, ROOT, make_raster

KILL_DEADLINE_S = 120


def _config(tmp_path: Path) -> Path:
    text = OFFLINE_CONFIG.read_text()
    text = text.replace("workers = 2", "workers = 1").replace("commit_every = 256",
                                                                "commit_every = 64")
    text = text.replace("batch_size = 64", "batch_size = 32")
    assert "commit_every = 64" in text and "workers = 1" in text
    cfg = tmp_path / "crash.toml"
    cfg.write_text(text)
    return cfg


def _start(archive: Path, idx: Path, cfg: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", str(archive), "--index", str(idx),
         "--config", str(cfg), "-q"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _orphans(idx: Path) -> list[int]:
    """Pids of processes still running the job on `idx`."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "indexer.cli" in cmd and str(idx) in cmd:
                pids.append(int(p.name))
    return pids


def _committed(idx: Path) -> dict | None:
    try:
        return json.loads((idx / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _uninterrupted(tmp_path: Path, settings, encoder, archive: Path) -> set[tuple]:
    """The reference: the same job, uninterrupted, in this process, into tmp_path/ref; the
    (z, x, y) of its tiles (each written once)."""
    ref = IndexJob(tmp_path / "ref", settings, encoder, progress=False).run([str(archive)])
    expected = {(r["z"], r["x"], r["y"]) for r in IndexSnapshot.open(tmp_path / "ref").tiles()
                .to_pylist()}
    assert len(expected) == ref.tiles_written
    return expected


def test_sigkill_then_resume(tmp_path, settings, encoder):
    archive = tmp_path / "archive"
    make_raster(archive / "big.tif", size=2048, res=5.0, seed=3)
    expected = _uninterrupted(tmp_path, settings, encoder, archive)
    assert len(expected) > 500

    idx, cfg = tmp_path / "idx", _config(tmp_path)
    proc = _start(archive, idx, cfg)
    reads = 0
    deadline = time.monotonic() + KILL_DEADLINE_S
    try:
        while time.monotonic() < deadline:  # bounded in time
            m = _committed(idx)
            if m and m["counts"]["tiles"] > 0:
                enough = m["counts"]["tiles"] >= 192
                if enough:  # killed at once (not after this read: the job might end first)
                    proc.send_signal(signal.SIGKILL)
                # Another process (this one) opens and searches while the job writes.
                snap = IndexSnapshot.open(idx)
                some = snap.tiles(["id"])["id"].to_numpy()[:3]
                _, found = snap.search(snap.get_vectors(some), 1)
                assert (found[:, 0] == some).all()
                reads += 1
                if enough:
                    break
            assert proc.poll() is None, f"job ended before it could be killed: {proc.stderr.read()}"
            time.sleep(0.02)
        else:
            pytest.fail("the job committed nothing within the deadline")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert reads >= 1
    # Its DataLoader worker dies with it: no orphan keeps reading (or holding memory).
    deadline = time.monotonic() + 20
    while _orphans(idx) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _orphans(idx), "DataLoader workers outlived the killed job"

    # The killed index opens at its last commit and searches.
    snap = _opens_and_searches(idx, len(expected), last=5)
    (src,) = snap.sources.values()
    assert src.status == "partial"

    # Re-running completes the job: same tiles as the uninterrupted run, no duplicates.
    proc = _start(archive, idx, cfg)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    snap = IndexSnapshot.open(idx)
    rows = snap.tiles().to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == snap.ntotal
    assert {(r["z"], r["x"], r["y"]) for r in rows} == expected
    assert len(rows) == len(expected)
    (src,) = snap.sources.values()
    assert src.complete and src.tiles == len(expected)
    # Garbage from the killed run is gone: every part on disk is named by the manifest.
    named = {p.name for p in snap.manifest.parts}
    assert {f.name for f in (idx / TILES_DIR).iterdir()} == named | {
        n.replace(".parquet", ".arrow") for n in named}  # each part's rows, memory-mappable
    assert {f.name for f in (idx / THUMBS_DIR).iterdir()} == named
    # Float16 copies match the FAISS index for every live id.
    vecs = snap.get_vectors(ids)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=2e-3)


def test_ctrl_c_commits_what_was_read(tmp_path):
    archive = tmp_path / "archive"
    make_raster(archive / "big.tif", size=3072, res=5.0, seed=4)
    idx, cfg = tmp_path / "idx", _config(tmp_path)
    proc = _start(archive, idx, cfg)
    try:
        deadline = time.monotonic() + KILL_DEADLINE_S
        while time.monotonic() < deadline:
            m = _committed(idx)
            if m and m["counts"]["tiles"] > 0:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert out.startswith("interrupted, committed so far:")
    assert "Traceback" not in err
    snap = IndexSnapshot.open(idx)
    assert snap.ntotal == int(out.split("tiles: ")[1].split(" written")[0])


def _opens_and_searches(idx, total: int, last: int) -> IndexSnapshot:
    """A killed run's index opens at its last commit (some but not all of `total` tiles)
    and finds its `last` newest tiles by their own vectors."""
    snap = IndexSnapshot.open(idx)
    assert 0 < snap.ntotal < total
    ids = snap.tiles(["id"])["id"].to_numpy()
    _, found = snap.search(snap.get_vectors(ids[-last:]), 1)
    assert (found[:, 0] == ids[-last:]).all()
    return snap


@pytest.fixture(scope="module")
def store_world(tmp_path_factory, settings, encoder):
    """One archive and its uninterrupted reference index, shared by the store scenarios:
    (archive, the reference's (z, x, y) set, the reference index's directory)."""
    root = tmp_path_factory.mktemp("store_world")
    archive = root / "archive"
    make_raster(archive / "big.tif", size=3072, res=5.0, seed=3)
    expected = _uninterrupted(root, settings, encoder, archive)
    assert len(expected) > 1000  # enough for the IVF to be trained
    return archive, expected, root / "ref"


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    """Real processes forked from one interpreter that imported torch once (tests/zygote.py):
    each scenario's two runs skip ~4 s of imports each."""
    z = chaos.Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


@pytest.mark.parametrize("scenario", ["append", "part", "manifest", "retrain", "training"])
def test_sigkill_inside_the_store_then_resume(tmp_path, store_world, zygote, scenario):
    """SIGKILL at chosen points of a commit (mid-append of the row files, before a part, with
    the new manifest not yet renamed, mid-rewrite of the ANN codes when the IVF is trained,
    on the ANN's training thread):
    the index opens at its last commit and a rerun gives the uninterrupted run's tiles."""
    archive, expected, ref = store_world
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("ivf_min_vectors = 50000", "ivf_min_vectors = 1000"))

    idx = tmp_path / "idx"
    args = [str(archive), "--index", str(idx)]
    killed = zygote.run(args, cfg, killpoint=scenario)
    assert killed.finish() == -signal.SIGKILL, killed.stderr
    _opens_and_searches(idx, len(expected), last=3)

    resumed = zygote.run(args, cfg)
    assert resumed.finish() == 0, resumed.stderr
    snap = IndexSnapshot.open(idx)
    rows = snap.tiles(["id", "z", "x", "y"]).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == snap.ntotal == len(expected)
    assert {(r["z"], r["x"], r["y"]) for r in rows} == expected
    assert snap.manifest.index.factory.startswith("IVF")
    # The ANN holds exactly the live tiles, and every tile's vector is the uninterrupted run's.
    held = np.concatenate([seg.ids() for seg in snap.segments])
    assert sorted(held.tolist()) == sorted(ids)
    ref_snap = IndexSnapshot.open(ref)
    ref_rows = ref_snap.tiles(["id", "z", "x", "y"]).to_pylist()
    ref_id = {(r["z"], r["x"], r["y"]): r["id"] for r in ref_rows}
    mine = np.array([r["id"] for r in rows])
    theirs = np.array([ref_id[(r["z"], r["x"], r["y"])] for r in rows])
    np.testing.assert_allclose(snap.get_vectors(mine), ref_snap.get_vectors(theirs), atol=2e-3)
