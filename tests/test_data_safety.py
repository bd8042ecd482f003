"""A user's data is never destroyed: the writer only touches an index it can prove is one,
only deletes names it writes itself, an interrupt never marks half a raster complete, and a
commit that fails half-way leaves the writer exactly as before (no duplicate ids)."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading

import numpy as np
import pytest

from indexer import cli
from indexer.config import StoreSettings
from indexer.critical import deferred_interrupts
from indexer.errors import IndexError_
from indexer.job.pipeline import IndexJob
from indexer.store.snapshot import IndexSnapshot
from indexer.store.writer import IndexWriter
from tests.conftest import OFFLINE_CONFIG, make_raster
from tests.helpers import InterruptingEncoder, rasters_sharing_batches
from tests.test_store import IDENT, _add


def _cli(*args: str) -> int:
    return cli.main([*args, "--config", str(OFFLINE_CONFIG), "-q"])


def _tree(d) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _user_dir(tmp_path):
    """A directory that holds a user's files whose names look like an index's."""
    u = tmp_path / "u"
    for name in ("tiles/a.png", "thumbs/part-00000.parquet", "vectors-000001.faiss",
                 ".manifest.json.tmp-1", "notes.txt"):
        (u / name).parent.mkdir(parents=True, exist_ok=True)
        (u / name).write_text(f"keep {name}")
    return u


def test_index_at_a_users_directory_is_refused_and_nothing_is_deleted(tmp_path, capsys):
    raster = make_raster(tmp_path / "scene.tif", size=128)
    u = _user_dir(tmp_path)
    before = _tree(u)
    assert _cli(str(raster), "--index", str(u)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a satfind index" in err and "not empty" in err
    assert _tree(u) == before


def test_failing_remove_at_a_users_directory_deletes_nothing(tmp_path, capsys):
    u = _user_dir(tmp_path)
    before = _tree(u)
    assert _cli("--remove", "x.tif", "--index", str(u)) == 2
    assert "not a satfind index" in capsys.readouterr().err
    assert _tree(u) == before
    # --remove never creates an index either
    assert _cli("--remove", "x.tif", "--index", str(tmp_path / "new")) == 2
    assert not (tmp_path / "new").exists()


def test_empty_index_path_is_refused(tmp_path, monkeypatch, capsys):
    raster = make_raster(tmp_path / "scene.tif", size=128)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "part-00000.parquet").write_text("mine")
    before = _tree(tmp_path)
    for empty in ("", "  "):
        with pytest.raises(SystemExit) as e:
            _cli(str(raster), "--index", empty)
        assert e.value.code == 2
        assert "--index" in capsys.readouterr().err
    with pytest.raises(IndexError_, match="empty"):
        IndexWriter("", IDENT, StoreSettings())
    assert _tree(tmp_path) == before


def test_foreign_manifest_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text('{"name": "my web app"}')
    with pytest.raises(IndexError_, match="not a satfind index manifest"):
        IndexWriter(tmp_path, IDENT, StoreSettings())
    assert (tmp_path / "manifest.json").read_text() == '{"name": "my web app"}'


def test_gc_inside_an_index_touches_only_satfind_names(tmp_path):
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        _add(w, 5, "a", 0)
        w.commit()
    mine = {"tiles/notes.txt": b"n", "thumbs/part-1.parquet": b"p", "my.faiss": b"f",
            "vectors-1.faiss": b"v", "photo.tmp-1": b"t"}
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    garbage = [tmp_path / "tiles" / "part-00077.parquet", tmp_path / "vectors-000099.faiss",
               tmp_path / ".manifest.json.tmp-4242"]
    for g in garbage:
        g.write_bytes(b"from a killed run")
    with IndexWriter(tmp_path, IDENT, StoreSettings()):
        pass
    assert all((tmp_path / n).read_bytes() == d for n, d in mine.items())
    assert not any(g.exists() for g in garbage)


def test_creation_killed_before_its_manifest_is_resumable(tmp_path):
    (tmp_path / ".lock").write_text("")
    (tmp_path / ".manifest.json.tmp-123").write_text("{")
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        _add(w, 3, "a", 0)
        w.commit()
    assert IndexSnapshot.open(tmp_path).ntotal == 3
    assert not (tmp_path / ".manifest.json.tmp-123").exists()


def test_new_index_never_committed_leaves_no_index(tmp_path):
    with IndexWriter(tmp_path / "idx", IDENT, StoreSettings()) as w:
        assert (tmp_path / "idx" / "manifest.json").is_file()
        del w
    assert [p.name for p in (tmp_path / "idx").iterdir()] == [".lock"]
    with IndexWriter(tmp_path / "idx", IDENT, StoreSettings()) as w:  # still usable
        _add(w, 2, "a", 0)
        w.commit()
    assert IndexSnapshot.open(tmp_path / "idx").ntotal == 2


# --- interrupts ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def interrupt_world(tmp_path_factory, settings, encoder):
    """Three rasters whose tiles share batches, and their uninterrupted index."""
    d = tmp_path_factory.mktemp("interrupt")
    rasters_sharing_batches(d, (600, 300, 520))
    s = dataclasses.replace(settings, job=dataclasses.replace(settings.job, batch_size=7,
                                                               commit_every=10))
    IndexJob(d / "ref", s, encoder, progress=False).run([str(d / "archive")])
    ref = IndexSnapshot.open(d / "ref")
    expected = sorted((r["source"], r["z"], r["x"], r["y"]) for r in ref.tiles().to_pylist())
    assert len(expected) > 60
    return d, s, expected


@pytest.mark.parametrize("calls", [range(1, 8), range(8, 15)])
def test_interrupt_in_the_encoder_never_completes_a_partial_raster(interrupt_world, encoder,
                                                                   tmp_path, calls):
    for call in calls:  # every batch boundary, including those between rasters
        _interrupt_then_resume(interrupt_world, encoder, tmp_path / f"idx{call}", call)


def _interrupt_then_resume(interrupt_world, encoder, idx, call):
    d, s, expected = interrupt_world
    first = IndexJob(idx, s, InterruptingEncoder(encoder, call), progress=False).run(
        [str(d / "archive")])
    assert first.interrupted
    snap = IndexSnapshot.open(idx)
    done = {(r["source"], r["z"], r["x"], r["y"]) for r in snap.tiles().to_pylist()}
    for src in snap.sources.values():
        if src.complete:  # complete means every tile of it is committed
            theirs = {t for t in expected if t[0] == src.path}
            assert theirs <= done, f"{src.path} marked complete with tiles missing"
    report = IndexJob(idx, s, encoder, progress=False).run([str(d / "archive")])
    assert not report.interrupted and not report.problems
    snap = IndexSnapshot.open(idx)
    rows = snap.tiles().to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == snap.ntotal
    assert sorted((r["source"], r["z"], r["x"], r["y"]) for r in rows) == expected
    assert all(v.complete for v in snap.sources.values())


class _SignallingEncoder(InterruptingEncoder):
    """Ctrl-C (a real SIGINT to this process) arrives during the `n`-th encode_images call."""

    def encode_images(self, images):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return self.real.encode_images(images)


def test_ctrl_c_stops_between_batches_and_the_rerun_completes(interrupt_world, encoder,
                                                              tmp_path):
    d, s, expected = interrupt_world
    enc = _SignallingEncoder(encoder, 3)
    report = IndexJob(tmp_path / "idx", s, enc, progress=False).run([str(d / "archive")])
    assert report.interrupted and enc.calls == 3  # the batch being encoded was finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    snap = IndexSnapshot.open(tmp_path / "idx")
    assert snap.ntotal == report.tiles_written > 0
    IndexJob(tmp_path / "idx", s, encoder, progress=False).run([str(d / "archive")])
    rows = IndexSnapshot.open(tmp_path / "idx").tiles().to_pylist()
    assert sorted((r["source"], r["z"], r["x"], r["y"]) for r in rows) == expected


def test_deferred_interrupts_deliver_after_the_block():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("after the signal")
        steps.append("never")
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_interrupts_off_the_main_thread_is_a_plain_block():
    out = []
    t = threading.Thread(target=lambda: out.append(deferred_interrupts().__enter__() is None))
    t.start()
    t.join()
    assert out == [True]


_COMMIT_STEPS = ["indexer.store.vectors.RowFileWriter.write_at",
                 "indexer.store.parts.write_parquet",
                 "indexer.store.vector_index.VectorIndex.encode",
                 "indexer.store.ann.AnnFiles.append",
                 "indexer.store.writer.fsync_dir",
                 "indexer.store.writer.write_manifest"]


@pytest.mark.parametrize("step", _COMMIT_STEPS)
@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_a_commit_failing_at_any_step_can_be_retried_without_duplicates(tmp_path, monkeypatch,
                                                                       step, exc):
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        v1 = _add(w, 6, "a", 0)
        w.commit()
        v2 = _add(w, 4, "b", 1)
        real = fail_once(monkeypatch, step, exc)
        with pytest.raises(exc):
            w.commit()
        assert IndexSnapshot.open(tmp_path).ntotal == 6  # on disk: the previous commit
        assert w.index.ntotal == 6 and w.pending == 4  # in memory: as before the commit
        monkeypatch.setattr(step, real)
        w.commit()
    snap = IndexSnapshot.open(tmp_path)
    ids = snap.tiles(["id"])["id"].to_pylist()
    assert sorted(ids) == list(range(10)) and snap.ntotal == 10
    assert np.allclose(snap.get_vectors(np.arange(10)), np.vstack([v1, v2]), atol=2e-3)
    _, found = snap.search(np.vstack([v1, v2]), 1)
    assert (found[:, 0] == np.arange(10)).all()


def fail_once(monkeypatch, step: str, exc: type[BaseException]):
    """Make the function at dotted path `step` raise `exc` on its first call (and work
    after); returns the real function."""
    real = _resolve(step)
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise exc("injected")
        return real(*a, **k)

    monkeypatch.setattr(step, failing)
    return real


def _resolve(dotted: str):
    import importlib

    mod, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), attr)
    except ModuleNotFoundError:
        mod, _, cls = mod.rpartition(".")
        return getattr(getattr(importlib.import_module(mod), cls), attr)


def test_part_directories_are_fsynced_before_the_manifest_names_them(tmp_path, monkeypatch):
    from indexer.store import writer as writer_mod

    events = []
    real_fsync, real_write = writer_mod.fsync_dir, writer_mod.write_manifest
    monkeypatch.setattr(writer_mod, "fsync_dir",
                        lambda p: (events.append(("fsync", p.name)), real_fsync(p)))
    monkeypatch.setattr(writer_mod, "write_manifest",
                        lambda d, m: (events.append(("manifest", m.generation)),
                                      real_write(d, m)))
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        events.clear()
        _add(w, 3, "a", 0)
        w.commit()
    manifest_at = events.index(("manifest", 1))
    assert ("fsync", "tiles") in events[:manifest_at]
    assert ("fsync", "thumbs") in events[:manifest_at]
