"""The plan inspects remote rasters several at a time (plan.inspected): each waits on
a few requests in turn, so one at a time an archive of thousands of URLs would wait hours
before its first tile. Results and problems come in the sources' order."""

from __future__ import annotations

import dataclasses
import threading
import time

from indexer.config import StoreSettings
from indexer.errors import InputError
from indexer.job import plan
from indexer.job.report import JobReport
from indexer.rasters.sources import RasterSource
from indexer.store.writer import IndexWriter
from tests.helpers import make_raster
from tests.test_store import IDENT


def _archive(tmp_path, n: int, bad: set[int] = frozenset()) -> list[RasterSource]:
    out = []
    for i in range(n):
        p = tmp_path / f"r{i}.tif"
        if i in bad:
            p.write_text("not a raster")
        else:
            make_raster(p, size=64, seed=i, lon=11.0 + 0.01 * i)
        out.append(RasterSource(str(p)))
    return out


def _meeting(monkeypatch, parties: int, meets, inspect) -> list[int]:
    """plan.inspect_raster replaced by `inspect`, after sources for which meets(src) wait at
    a barrier that only `parties` inspections at once pass (one at a time, each waits until
    its timeout and fails). Returns [inspections running now, the most at once]."""
    barrier = threading.Barrier(parties, timeout=10)
    running = [0, 0]
    lock = threading.Lock()

    def meeting(src, *args):
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        try:
            if meets(src):
                barrier.wait()
            return inspect(src, *args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(plan, "inspect_raster", meeting)
    return running


def _urls(n: int) -> list[RasterSource]:
    """URLs never asked for: the tests replace the inspection itself."""
    return [RasterSource(f"http://127.0.0.1:9/r{i}.tif") for i in range(n)]


def _workers(settings, n: int):
    return dataclasses.replace(settings, remote=dataclasses.replace(settings.remote,
                                                                    stat_workers=n))


def _stand_in(src, *args):
    if src.path.endswith("/r5.tif"):
        raise InputError(src.path, "not a raster GDAL can read")
    return src.path


def test_rasters_are_inspected_at_once_and_come_back_in_order(settings, monkeypatch):
    """Three inspections must run at the same time to pass the barrier (one at a time they
    would wait for each other until its timeout); every result is its own source's, a
    failure at its place."""
    urls = _urls(12)
    running = _meeting(monkeypatch, 3, lambda src: src.path.endswith(
        ("/r0.tif", "/r1.tif", "/r2.tif")), _stand_in)
    got = list(plan.inspected(urls, _workers(settings, 4)))
    assert 3 <= running[1] <= 4
    assert isinstance(got[5], InputError) and "r5.tif" in str(got[5])
    assert [g for i, g in enumerate(got) if i != 5] == \
        [u.path for i, u in enumerate(urls) if i != 5]


def test_inspections_run_a_bounded_way_ahead_and_stop_with_the_plan(settings, monkeypatch):
    """While the plan works on a raster, at most INSPECT_AHEAD x threads are inspected ahead
    of it; a plan stopped early (Ctrl-C, an error) starts no more."""
    calls = []

    def inspect(src, *args):
        calls.append(src)
        time.sleep(0.001)
        return src.path

    monkeypatch.setattr(plan, "inspect_raster", inspect)
    gen = plan.inspected(_urls(400), _workers(settings, 2))
    next(gen)
    time.sleep(1.0)  # 400 of these take ~0.2 s: unbounded, every one would have run
    bound = plan.INSPECT_AHEAD * 2 + 1
    assert len(calls) <= bound
    gen.close()  # what an exception in the caller's loop does
    assert len(calls) <= bound


def test_local_rasters_are_inspected_several_at_once_and_none_runs_after(tmp_path, settings,
                                                                         monkeypatch):
    """A larger local raster's check is mostly GDAL decoding with the GIL let go: local
    rasters go LOCAL_INSPECT_THREADS at once (two must meet at a barrier here), whatever
    remote.stat_workers says; the readers are forked from this process right after the
    plan, so none of the plan's threads is left once the iteration has ended."""
    monkeypatch.setattr(plan, "LOCAL_INSPECT_THREADS", 2)
    real = plan.inspect_raster
    running = _meeting(monkeypatch, 2, lambda src: src.path.endswith(("r0.tif", "r1.tif")),
                       real)
    sources = _archive(tmp_path, 5, bad={3})
    got = list(plan.inspected(sources, _workers(settings, 8)))
    assert running[1] == 2
    assert isinstance(got[3], InputError) and "r3.tif" in str(got[3])
    assert [g.path for i, g in enumerate(got) if i != 3] == \
        [s.path for i, s in enumerate(sources) if i != 3]
    assert not [t for t in threading.enumerate() if t.name.startswith("satfind-inspect")]


def test_the_plan_reports_problems_and_plans_in_source_order(tmp_path, settings):
    sources = _archive(tmp_path, 9, bad={2, 6})
    problems: list[InputError] = []
    with IndexWriter(tmp_path / "idx", IDENT, StoreSettings()) as w:
        plans, pendings = plan.plan_sources(w, sources, settings, 224, JobReport(),
                                            problems.append)
    assert [p.path for p in problems] == [sources[2].path, sources[6].path]
    assert [p.entry.path for p in pendings] == \
        [s.path for i, s in enumerate(sources) if i not in (2, 6)]


def test_remote_rasters_are_inspected_remote_stat_workers_at_once(settings, monkeypatch):
    """URLs (never asked for here: the inspection is a stand-in) go remote.stat_workers at a
    time, however few cores the machine has."""
    monkeypatch.setattr(plan.os, "cpu_count", lambda: 1)
    running = _meeting(monkeypatch, 5, lambda src: True, lambda src, *args: src.path)
    urls = _urls(20)
    assert list(plan.inspected(urls, _workers(settings, 5))) == [u.path for u in urls]
    assert running[1] == 5


def test_a_stopped_plan_does_not_wait_out_the_remote_retries(settings, monkeypatch):
    """Ctrl-C reaches the main thread only: the inspections running on the others make no
    more retries (each would wait 2 + 4 + 8 s here), so the plan stops at once."""
    from rasterio.errors import RasterioError

    import indexer.rasters.inspect as inspect

    s = dataclasses.replace(settings, remote=dataclasses.replace(
        settings.remote, stat_workers=4, read_retries=3, retry_delay_s=2.0))
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def flaky(source, *args):  # no request is made: the inspection itself is a stand-in
        with lock:
            attempts[source.path] = attempts.get(source.path, 0) + 1
        if source.path.endswith("ok.tif"):
            return "ok"
        raise RasterioError("HTTP response code: 503 (a timeout, again)")

    monkeypatch.setattr(inspect, "_inspect", flaky)
    urls = [RasterSource("http://127.0.0.1:9/ok.tif")] + \
        [RasterSource(f"http://127.0.0.1:9/r{i}.tif") for i in range(3)]
    gen = plan.inspected(urls, s)
    assert next(gen) == "ok"
    time.sleep(0.1)  # the others failed once and wait to retry
    t = time.perf_counter()
    gen.close()
    assert time.perf_counter() - t < 1.5
    assert all(attempts[u.path] == 1 for u in urls)
