"""Rasters at paths new to the index hashed while their tiles are read (job.hash_while_reading):
the same index as hashing them first; tiles held until their raster's hash is in; a file
that cannot be hashed dropped alone; an interrupt while tiles wait leaves a resumable index."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import threading
import time

import pytest
import torch

from indexer.config import ConfigError, load_settings
from indexer.job import commit, plan
from indexer.job.pipeline import IndexJob, hash_while_reading
from indexer.store.snapshot import IndexSnapshot
from tests.helpers import InterruptingEncoder, rasters_sharing_batches, slow_hashes


@pytest.fixture(scope="module")
def world(tmp_path_factory, settings, encoder):
    """Three rasters whose tiles share batches, and their index hashed before reading."""
    d = tmp_path_factory.mktemp("late-hash")
    rasters_sharing_batches(d, (420, 260, 380))
    s = dataclasses.replace(settings, job=dataclasses.replace(
        settings.job, batch_size=7, commit_every=10, hash_while_reading="no"))
    report = IndexJob(d / "ref", s, encoder, progress=False).run([str(d / "archive")])
    assert report.stages["wait for hashes (writer thread)"] == 0
    later = dataclasses.replace(s, job=dataclasses.replace(s.job, hash_while_reading="yes"))
    return d, later, _contents(d / "ref")


def _contents(idx) -> tuple[list, dict]:
    snap = IndexSnapshot.open(idx)
    rows = snap.tiles().to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == snap.ntotal
    tiles = sorted((r["source"], r["source_key"], r["z"], r["x"], r["y"]) for r in rows)
    sources = {k: (e.path, e.content_sha256, e.size, e.mtime_ns, e.status, e.tiles)
               for k, e in snap.sources.items()}
    return tiles, sources


@pytest.mark.parametrize("held", [commit.HELD_TILES, 10])
def test_hashed_while_read_the_index_is_the_same(world, encoder, tmp_path, monkeypatch, held):
    """No hash is in until the committer first waits for one: it holds the tiles (all of
    them until the job's end, or 10 tiles at most and then waits), then commits them under
    the key and hash the plan would have given them."""
    d, s, expected = world
    monkeypatch.setattr(commit, "HELD_TILES", held)
    gate = threading.Event()  # every hash held back until the committer first waits
    hashed = slow_hashes(monkeypatch, hold={f"r{i}.tif": gate for i in range(3)})
    waited = {"take": 0, "flush": 0}  # hashes waited for, in take() (the limit) and at the end
    where = ["take"]
    wait_for, flush = commit.Committer._wait_for_hashes, commit.Committer.flush

    def spy_wait(self, batch):
        waited[where[0]] += any(self.pendings[r].identity is not None
                                and not self.pendings[r].identity.done()
                                for r in set(batch.raster.tolist()))
        gate.set()
        return wait_for(self, batch)

    def spy_flush(self, wait=True):
        where[0] = "flush"
        return flush(self, wait)

    monkeypatch.setattr(commit.Committer, "_wait_for_hashes", spy_wait)
    monkeypatch.setattr(commit.Committer, "flush", spy_flush)
    report = IndexJob(tmp_path / "idx", s, encoder, progress=False).run([str(d / "archive")])
    assert not report.problems and not report.interrupted
    assert sorted(hashed) == ["r0.tif", "r1.tif", "r2.tif"]  # (on threads: in any order)
    assert report.stages["wait for hashes (writer thread)"] > 0  # reported
    # Held, not waited for, until the end or until more than `held` tiles wait.
    if held == 10:
        assert waited["take"] >= 1
    else:
        assert waited["take"] == 0 and waited["flush"] >= 1
    assert _contents(tmp_path / "idx") == expected
    for key, (path, sha, *_rest) in expected[1].items():
        with open(path, "rb") as f:
            assert sha == hashlib.sha256(f.read()).hexdigest()
        assert key == plan.source_key(path, sha)


def test_a_raster_that_cannot_be_hashed_is_dropped_alone(world, encoder, tmp_path,
                                                         monkeypatch):
    d, s, expected = world
    slow_hashes(monkeypatch, delay=0.05, fail="r1.tif")
    report = IndexJob(tmp_path / "idx", s, encoder, progress=False).run([str(d / "archive")])
    assert [e.path.rsplit("/", 1)[-1] for e in report.problems] == ["r1.tif"]
    assert "cannot read file (Input/output error)" in str(report.problems[0])
    tiles, sources = _contents(tmp_path / "idx")
    assert tiles == [t for t in expected[0] if not t[0].endswith("r1.tif")]
    assert sorted(p for p, *_ in sources.values()) == sorted(
        p for p, *_ in expected[1].values() if not p.endswith("r1.tif"))
    monkeypatch.undo()  # the file reads again: the rerun adds it
    IndexJob(tmp_path / "idx", s, encoder, progress=False).run([str(d / "archive")])
    assert _contents(tmp_path / "idx") == expected


@pytest.mark.parametrize("call,held", [(3, commit.HELD_TILES), (9, commit.HELD_TILES),
                                       (12, commit.HELD_TILES), (9, 10)])
def test_interrupted_while_tiles_wait_for_a_hash(world, encoder, tmp_path, monkeypatch, call,
                                                 held):
    """r1's hash never comes before Ctrl-C (at the encoder's 3rd, 9th or 12th batch of 12):
    r0's tiles are kept as far as they went; r1's and r2's are dropped (read again next run),
    r2's too though its hash is in (a raster's tiles go to the store in read order, and
    its first ones share a batch with r1's); the hashing threads stop, and the rerun gives
    the uninterrupted index. With 10 tiles
    held at most, the writer thread is waiting for the hash when Ctrl-C comes: it stops
    waiting at once."""
    d, s, expected = world
    monkeypatch.setattr(commit, "HELD_TILES", held)
    never = threading.Event()
    slow_hashes(monkeypatch, hold={"r1.tif": never})
    t = time.monotonic()
    first = IndexJob(tmp_path / "idx", s, InterruptingEncoder(encoder, call),
                     progress=False).run([str(d / "archive")])
    assert first.interrupted and time.monotonic() - t < 20
    tiles, sources = _contents(tmp_path / "idx")
    assert not [p for p, *_ in sources.values() if not p.endswith("r0.tif")]
    assert tiles and set(tiles) <= set(expected[0])
    assert all(t[0].endswith("r0.tif") for t in tiles)
    monkeypatch.undo()
    report = IndexJob(tmp_path / "idx", s, encoder, progress=False).run([str(d / "archive")])
    assert not report.interrupted and not report.problems
    assert _contents(tmp_path / "idx") == expected


def test_paths_the_index_knows_are_hashed_before_reading(world, encoder, tmp_path):
    """A path with a source in the index may have tiles under its key (a partial run, the
    same content touched): it is hashed in the plan, as before; a new path is left to
    later."""
    from indexer.config import RemoteSettings
    from indexer.rasters.sources import RasterSource
    from indexer.store.writer import IndexWriter

    d, s, expected = world
    known = d / "archive" / "r0.tif"
    shutil.copytree(d / "ref", tmp_path / "idx")
    with IndexWriter(tmp_path / "idx", encoder.identity, s.store) as w:
        with plan.Hasher(plan.known_hashes(w)) as hasher:
            got = plan.identify(w, [RasterSource(str(known)),
                                    RasterSource(str(tmp_path / "new.tif"))],
                                RemoteSettings(), print, hasher=hasher, later=True)
            (_, old), (_, new) = got
            assert old.later is None and old.key in expected[1]
            assert new.later is not None and new.key == ""
            assert isinstance(new.later.result(timeout=10), FileNotFoundError)


def test_the_setting(tmp_path, settings):
    class On:
        def __init__(self, kind):
            self.device = torch.device(kind)

    auto = dataclasses.replace(settings, job=dataclasses.replace(settings.job,
                                                                 hash_while_reading="auto"))
    assert hash_while_reading(auto, On("cuda"), strict=False)
    assert not hash_while_reading(auto, On("cpu"), strict=False)
    assert not hash_while_reading(auto, On("cuda"), strict=True)
    yes = dataclasses.replace(auto, job=dataclasses.replace(auto.job, hash_while_reading="yes"))
    assert hash_while_reading(yes, On("cpu"), strict=False)
    bad = tmp_path / "bad.toml"
    bad.write_text('[job]\nhash_while_reading = "later"\n')
    with pytest.raises(ConfigError, match="job.hash_while_reading must be auto, yes or no"):
        load_settings(bad)


class _HashThenInterrupt(InterruptingEncoder):
    """Lets r0's hash in (`gate`), waits until its future has it (`landed`), then Ctrl-C on
    the n-th call."""

    def __init__(self, real, n: int, gate: threading.Event, landed: threading.Event):
        super().__init__(real, n)
        self.gate, self.landed = gate, landed

    def encode_images(self, images):
        if self.calls + 1 == self.n:
            self.gate.set()
            assert self.landed.wait(20)
        return super().encode_images(images)


def test_tiles_whose_hash_came_before_ctrl_c_are_kept(world, encoder, tmp_path, monkeypatch):
    """Every batch of r0 is held (its hash is let in just before Ctrl-C): the interrupted
    run commits them, as far as they were encoded, instead of reading them again."""
    d, s, expected = world
    gate, landed = threading.Event(), threading.Event()
    slow_hashes(monkeypatch, hold={"r0.tif": gate})
    submit = plan.Hasher.submit

    def submit_and_tell(self, path):
        future = submit(self, path)
        if path.endswith("r0.tif"):  # (a done callback runs once the result is in)
            future.add_done_callback(lambda _: landed.set())
        return future

    monkeypatch.setattr(plan.Hasher, "submit", submit_and_tell)
    first = IndexJob(tmp_path / "idx", s, _HashThenInterrupt(encoder, 6, gate, landed),
                     progress=False).run([str(d / "archive")])
    assert first.interrupted
    tiles, _ = _contents(tmp_path / "idx")
    assert tiles and all(t[0].endswith("r0.tif") for t in tiles)
    assert set(tiles) <= set(expected[0]) and first.tiles_written == len(tiles)
