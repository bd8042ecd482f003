"""The ANN trained on a thread of its own (store/training.py): commits go on meanwhile, a
later commit takes the result, and the index is the one training inside the commit gives."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from indexer.config import StoreSettings
from indexer.store.snapshot import IndexSnapshot
from indexer.store.writer import IndexWriter
from tests.test_store import IDENT, _add

IVF = StoreSettings(ivf_min_vectors=1000, retrain_growth=0)
DEADLINE_S = 60


def _ann_files(d) -> tuple[bytes, np.ndarray]:
    m = IndexSnapshot.open(d).manifest
    return (d / m.index.file).read_bytes(), np.load(d / m.index.codes)


def _trainers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "satfind-ivf-training"]


def _commit_until_trained(w: IndexWriter) -> int:
    """Commit (without waiting) until a commit has taken the trained index; returns how
    many commits that took."""
    deadline, commits = time.monotonic() + DEADLINE_S, 0
    while not w.m.index.factory.startswith("IVF"):
        assert time.monotonic() < deadline, "the background training never finished"
        time.sleep(0.02)
        w.commit()
        commits += 1
    return commits


def test_a_later_commit_takes_the_training_and_the_index_is_the_same(tmp_path, capfd):
    sync, bg = tmp_path / "sync", tmp_path / "bg"
    with IndexWriter(sync, IDENT, IVF) as w:
        for i, n in enumerate([600, 600, 300]):
            _add(w, n, f"s{i}", i)
            w.commit()
        assert w.m.index.trained_at == 1200  # trained by the commit that reached 1,000
    with IndexWriter(bg, IDENT, IVF, background_training=True) as w:
        _add(w, 600, "s0", 0)
        w.commit()
        _add(w, 600, "s1", 1)
        w.commit()  # due: started on its own thread once this commit is made
        assert w.m.index.factory == "Flat" and "being trained from 1200" in w.m.index.chosen
        assert IndexSnapshot.open(bg).ntotal == 1200  # committed, searchable, untrained
        _add(w, 300, "s2", 2)
        w.commit()
        _commit_until_trained(w)
        assert w.m.index.trained_at == 1200 and w.training_s > 0
    template, codes = _ann_files(bg)
    want_template, want_codes = _ann_files(sync)
    assert template == want_template  # same sample, same k-means
    assert codes.shape == (1500, want_codes.shape[1])
    np.testing.assert_array_equal(codes, want_codes)
    a, b = IndexSnapshot.open(sync), IndexSnapshot.open(bg)
    q = a.get_vectors(np.arange(0, 1500, 50))
    np.testing.assert_array_equal(a.search(q, 10, nprobe=4)[1], b.search(q, 10, nprobe=4)[1])
    assert "WARNING" not in capfd.readouterr().err  # FAISS's k-means says nothing on fd 2


def test_tiles_removed_while_it_trains_are_left_out(tmp_path):
    with IndexWriter(tmp_path, IDENT, IVF, background_training=True) as w:
        _add(w, 700, "a", 0)
        _add(w, 700, "b", 1)
        w.commit()  # 1,400: training starts
        w.remove("a")
        _add(w, 200, "c", 2)
        w.commit(wait_for_training=True)
        assert w.m.index.factory.startswith("IVF")
    snap = IndexSnapshot.open(tmp_path)
    held = np.sort(np.concatenate([s.ids() for s in snap.segments]))
    np.testing.assert_array_equal(held, np.arange(700, 1600))
    assert not np.load(tmp_path / snap.manifest.index.codes)[:700].any()  # removed: zeros
    _, found = snap.search(snap.get_vectors(np.arange(700, 1600, 9)), 5, nprobe=8)
    assert found.min() >= 700


def test_closing_while_it_trains_keeps_the_last_commit_and_the_next_run_trains(tmp_path):
    with IndexWriter(tmp_path, IDENT, IVF, background_training=True) as w:
        _add(w, 1100, "a", 0)
        w.commit()
        assert w._trainer is not None
    snap = IndexSnapshot.open(tmp_path)
    assert snap.manifest.index.factory == "Flat" and snap.ntotal == 1100
    deadline = time.monotonic() + DEADLINE_S
    while _trainers():  # told to stop: it ends after its k-means, writing nothing
        assert time.monotonic() < deadline, "the training thread outlived its writer"
        time.sleep(0.02)
    with IndexWriter(tmp_path, IDENT, IVF, background_training=True) as w:
        _add(w, 10, "b", 1)
        w.commit(wait_for_training=True)  # due again: done here, the caller waits anyway
        assert w.m.index.factory.startswith("IVF") and w.m.index.trained_at == 1110


def test_a_training_that_fails_is_raised_by_a_commit_and_started_again(tmp_path, monkeypatch):
    from tests.test_data_safety import fail_once

    fail_once(monkeypatch, "indexer.store.vector_index.VectorIndex.train_ivfpq", MemoryError)
    with IndexWriter(tmp_path, IDENT, IVF, background_training=True) as w:
        _add(w, 1100, "a", 0)
        w.commit()  # the thread starts and fails
        with pytest.raises(MemoryError):
            w.commit(wait_for_training=True)
        assert IndexSnapshot.open(tmp_path).manifest.index.factory == "Flat"
        _add(w, 10, "b", 1)
        w.commit()  # still due: a second training starts
        assert w._trainer is not None
        w.commit(wait_for_training=True)
        assert w.m.index.factory.startswith("IVF")
    assert IndexSnapshot.open(tmp_path).ntotal == 1110


def test_without_float16_copies_it_trains_from_the_flat_index_the_same(tmp_path):
    """keep_float16 = false: the vectors come from the Flat index itself, taken when the
    training starts; the result is the commit's own training, bit for bit."""
    settings = StoreSettings(ivf_min_vectors=1000, retrain_growth=0, keep_float16=False)
    for d, background in ((tmp_path / "sync", False), (tmp_path / "bg", True)):
        with IndexWriter(d, IDENT, settings, background_training=background) as w:
            _add(w, 700, "a", 0)
            _add(w, 500, "b", 1)
            w.commit()
            w.remove("a")
            _add(w, 100, "c", 2)
            w.commit(wait_for_training=True)
            assert w.m.index.factory.startswith("IVF") and w.m.index.trained_at == 1200
    (t_sync, c_sync), (t_bg, c_bg) = _ann_files(tmp_path / "sync"), _ann_files(tmp_path / "bg")
    assert t_bg == t_sync
    np.testing.assert_array_equal(c_bg[700:], c_sync[700:])  # the live tiles' codes
    held = np.sort(np.concatenate([s.ids() for s in IndexSnapshot.open(tmp_path / "bg")
                                   .segments]))
    np.testing.assert_array_equal(held, np.arange(700, 1300))
