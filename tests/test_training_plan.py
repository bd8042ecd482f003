"""The ANN's re-training plans for the size the run ends at (`IndexWriter.expect`): the
run's last re-training comes once the index holds 1 / store.retrain_growth of that size,
made for that size, instead of at 4x past the last training, which can fall in the run's
last seconds (a 980,000-tile job re-trained at 800,000 and its last commit waited 41 s)."""

from __future__ import annotations

import numpy as np

from indexer.config import StoreSettings
from indexer.store.snapshot import IndexSnapshot
from indexer.store.vector_index import VectorIndex, ivf_params
from indexer.store.writer import IndexWriter
from tests.test_store import DIM, IDENT, _add

# Small enough to train in the commit in a fraction of a second, big enough that a
# training for the run's size (22,035 points at least) can come at under half of it.
ST = StoreSettings(ivf_min_vectors=2000, retrain_growth=4.0)
RUN, STEP = 80_000, 4000


def _trainings(tmp_path, expect: bool, st: StoreSettings = ST, run: int = RUN
               ) -> tuple[list[tuple[int, int]], IndexSnapshot]:
    """(index size at each training, the size it was trained for) over a run of `run` tiles
    in commits of STEP, each training done in its commit; `expect`: the run's size given to
    the writer."""
    seen, out = [], []
    with IndexWriter(tmp_path, IDENT, st) as w:
        if expect:
            w.expect(run)
        for i in range(run // STEP):
            _add(w, STEP, f"s{i}", i)
            w.commit()
            info = w.m.index
            if info.trained_at is not None and info.trained_at not in seen:
                seen.append(info.trained_at)
                out.append((w.index.ntotal, info.trained_at))
    return out, IndexSnapshot.open(tmp_path)


def test_the_runs_last_training_is_made_for_its_size_and_comes_early(tmp_path):
    assert VectorIndex.min_training_size(RUN, DIM, ST) <= RUN / ST.retrain_growth + STEP
    before, old = _trainings(tmp_path / "before", expect=False)
    # The growth rule alone: the last re-training when the index reached 4x the last one.
    assert before[-1][0] >= 0.8 * RUN and before[-1][1] == before[-1][0]
    planned, snap = _trainings(tmp_path / "planned", expect=True)
    at, target = planned[-1]
    assert target == RUN and at <= RUN / 2, planned  # made for the run, at under half of it
    # and no growth re-training at 16,000 just before it (80,000 is within 16x of it)
    assert planned == [(STEP, STEP), (24_000, RUN)], planned
    m = snap.manifest.index
    assert m.trained_at == RUN and m.nlist == ivf_params(RUN, DIM, ST)[0]
    assert "for the size this run brings the index to" in m.chosen
    assert m.trained_on == min(at, VectorIndex.training_size(RUN, DIM, ST))
    assert m.trained_on >= VectorIndex.min_training_size(RUN, DIM, ST)
    # Every tile is in the index with the template's code (the early training's catch-up
    # encoded the float16 copies, later commits the float32 vectors: a few codes of
    # vectors on a boundary may differ), and found as well as in the index made the old way.
    assert snap.ntotal == RUN
    template = VectorIndex.from_template((snap.dir / m.file).read_bytes(), DIM, m.file)
    codes = np.load(snap.dir / m.codes)
    assert (codes == template.encode(snap.get_vectors(np.arange(RUN)))).all(1).mean() > 0.99
    ids = np.arange(0, RUN, 97)

    def found(s: IndexSnapshot) -> float:
        return float((s.search(s.get_vectors(ids), 1, nprobe=16)[1][:, 0] == ids).mean())

    assert found(snap) >= found(old) - 0.05, (found(snap), found(old))


def test_a_run_that_ends_where_it_was_trained_for_trains_no_more(tmp_path):
    """A run of under 4x the first training's size: the first training is made for it."""
    st = StoreSettings(ivf_min_vectors=20_000, retrain_growth=4.0)
    with IndexWriter(tmp_path, IDENT, st) as w:
        w.expect(70_000)
        for i in range(70_000 // 10_000):
            _add(w, 10_000, f"s{i}", i)
            w.commit()
        # at 20,000 a training for 70,000 needs 20,631 points: made for 20,000 then; at
        # 30,000 it is possible, but 70,000 is under 4x 20,000: no re-training
        assert w.m.index.trained_at == 20_000


def test_a_run_that_ends_past_ivf_min_vectors_trains_its_ivf_early(tmp_path):
    """The first training too: a run that will end at 60,000 (past ivf_min_vectors =
    40,000) trains its IVF-PQ for 60,000 once it can (19,071 points), not at 40,000."""
    st = StoreSettings(ivf_min_vectors=40_000, retrain_growth=4.0)
    for expect, want in ((False, [(40_000, 40_000)]), (True, [(20_000, 60_000)])):
        got, snap = _trainings(tmp_path / str(expect), expect, st, 60_000)
        assert got == want
        chosen = snap.manifest.index.chosen
        assert "IVF-PQ trained for" in chosen
        if expect:
            assert "this run brings the index past" in chosen


def test_without_float16_copies_or_growth_nothing_is_re_trained(tmp_path):
    for st in (StoreSettings(ivf_min_vectors=2000, retrain_growth=0.0),
               StoreSettings(ivf_min_vectors=2000, retrain_growth=4.0, keep_float16=False)):
        d = tmp_path / f"{st.retrain_growth}-{st.keep_float16}"
        with IndexWriter(d, IDENT, st) as w:
            w.expect(40_000)
            for i in range(10):
                _add(w, STEP, f"s{i}", i)
                w.commit()
            assert w.m.index.trained_at == STEP  # the first training's, never again


def test_a_background_training_for_the_run_is_taken_before_its_end(tmp_path):
    """As the job runs it: trained on a thread of its own, the last commit waits for it."""
    with IndexWriter(tmp_path, IDENT, ST, background_training=True) as w:
        w.expect(RUN)
        started = []
        for i in range(RUN // STEP):
            _add(w, STEP, f"s{i}", i)
            w.commit()
            if w._trainer is not None and (not started or started[-1][1] != w._trainer.n):
                started.append((w.index.ntotal, w._trainer.n))
        w.commit(wait_for_training=True)
        assert w.m.index.trained_at == RUN and started[-1] == (started[-1][0], RUN)
        assert started[-1][0] <= RUN / 2
    snap = IndexSnapshot.open(tmp_path)
    assert snap.ntotal == RUN and snap.manifest.index.nlist == ivf_params(RUN, DIM, ST)[0]


def test_the_job_tells_the_writer_the_tiles_it_plans(tmp_path, settings, encoder, monkeypatch):
    """The job's plan gives the writer its expected size: every tile it will read (those
    found nodata among them), on top of what the index holds; a second run plans none."""
    from indexer.job.pipeline import IndexJob
    from tests.helpers import patterned_raster

    seen: list[tuple[int, int]] = []
    real = IndexWriter.expect

    def expect(self, more):
        seen.append((self.index.ntotal, more))
        real(self, more)

    monkeypatch.setattr(IndexWriter, "expect", expect)
    path = patterned_raster(tmp_path / "archive" / "r.tif", 600, nodata=0)
    for _ in range(2):
        report = IndexJob(tmp_path / "idx", settings, encoder, progress=False).run(
            [str(path.parent)])
    assert report.rasters_unchanged == 1 and report.tiles_written + report.tiles_nodata == 0
    snap = IndexSnapshot.open(tmp_path / "idx")
    source = next(iter(snap.manifest.sources.values()))
    assert seen == [(0, source.tiles + source.skipped_nodata), (snap.ntotal, 0)]
    assert source.tiles > 0
