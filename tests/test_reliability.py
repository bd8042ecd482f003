"""The reliability suite (issue 10), short enough for CI; bench/chaos.py runs it longer.

- SIGKILL and SIGINT at random points of real `satfind-index` processes, while indexing and
  while removing sources: after each, the index opens at its last commit with unique ids,
  no process of the job survives it, and re-runs reach exactly the uninterrupted tile set.
- A decompression-bomb corpus against a real server in a memory cgroup: no OOM, no 5xx.
- schemathesis against the real server: every phase, every check, no failure.
"""

from __future__ import annotations

import pytest

from tests import chaos
from tests.bombs import allowed_heavy_png, bomb_corpus
from tests.conftest import OFFLINE_CONFIG
from tests.helpers import mark_complete, tile_rows

KILLS = 20


def test_signals_at_random_points_of_indexing_and_removal(tmp_path, settings, encoder):
    from indexer.job.pipeline import IndexJob

    archive = chaos.make_archive(tmp_path / "archive")
    cfg = chaos.chaos_config(tmp_path)
    IndexJob(tmp_path / "ref", settings, encoder, progress=False).run([str(archive)])
    expected = chaos.tile_set(tmp_path / "ref")
    assert len(expected) > 400
    (tmp_path / "runs").mkdir()
    zygote = chaos.Zygote(tmp_path / "runs")
    try:
        report = chaos.run_kill_trials(archive, tmp_path / "idx", cfg, expected, kills=KILLS,
                                       seed=20261125, finish_every=7, deadline_s=240,
                                       zygote=zygote)
    finally:
        zygote.close()
    kills = report.kills
    assert len(kills) >= KILLS, report.table()
    assert {t.signal for t in kills} == {"SIGKILL", "SIGINT"}
    assert {"remove", "new index"} <= {t.stage for t in kills}, report.table()
    # the kills landed at different points: some before the first commit of a run, some
    # after several, with the index between empty and complete
    assert len({t.tiles for t in kills}) >= 3, report.table()
    assert report.trials[-1].outcome == "identical to the uninterrupted run"


def test_bomb_corpus_against_a_memory_limited_server(real_index):
    limit = chaos.MemoryLimit(2_500 * 2**20)
    port = chaos.free_port()
    proc = chaos.start_server(real_index[0], OFFLINE_CONFIG, port, preexec=limit.preexec())
    try:
        corpus = {**bomb_corpus(), "png-7000-allowed": allowed_heavy_png(7000)}
        counts = chaos.bomb_run(f"http://127.0.0.1:{port}", corpus, rounds=2, concurrency=4,
                                deadline_s=240)
        assert proc.poll() is None, "the server died"
        peak = limit.peak(proc.pid)
    finally:
        chaos.stop(proc)
        ooms = limit.oom_kills()
        limit.close()
    for name, statuses in counts.items():
        assert sum(statuses.values()) == 2, (name, statuses)
        if name.endswith("-allowed"):
            assert statuses == {200: 2}, (name, statuses)
        else:
            assert statuses == {400: 2}, (name, statuses)
    assert ooms == 0
    assert peak is not None and peak < limit.limit, (limit.kind, peak)


def test_schemathesis_all_phases_no_failures(real_index):
    port = chaos.free_port()
    proc = chaos.start_server(real_index[0], OFFLINE_CONFIG, port)
    try:
        r = chaos.schemathesis_run(f"http://127.0.0.1:{port}", max_examples=25, timeout_s=300)
    finally:
        chaos.stop(proc)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in out, out[-2000:]
    assert "failure" not in out.split("SUMMARY")[-1].lower().replace("0 failures", "")


@pytest.mark.parametrize("n", [0])
def test_kill_trials_detect_a_broken_index(tmp_path, n):
    """The checker itself fails on a broken index (so the suite above cannot pass vacuously)."""
    import json

    import numpy as np

    from encoder.identity import EncoderIdentity
    from indexer.config import StoreSettings
    from indexer.store.writer import IndexWriter

    ident = EncoderIdentity("fake", "c" * 64, "w" * 64, 16, 64)
    with IndexWriter(tmp_path, ident, StoreSettings()) as w:
        rows = tile_rows(4, "a")
        w.add(rows, np.eye(4, 16, dtype=np.float32), [b""] * 4)
        mark_complete(w, "a")
        w.commit()
    expected = {(r["source"], r["z"], r["x"], r["y"]) for r in tile_rows(5, "a")}
    with pytest.raises(AssertionError, match="complete with tiles missing"):
        chaos.check_index(tmp_path, expected)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["sources"]["a"]["status"] = "partial"
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    chaos.check_index(tmp_path, expected)  # partial is fine
    with pytest.raises(AssertionError, match="differs"):
        chaos.check_index(tmp_path, expected, complete=True)
