"""bench/timeline.py: the device's busy and idle time per batch, and what the main thread did
while the device was idle (bench/index.py --timeline)."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import numpy as np
import pytest

import indexer.job.runner as runner
from bench.timeline import HOST, Profile, Timeline, _encode_call, summarise
from indexer.job.background import BackgroundWriter
from indexer.job.pipeline import IndexJob
from tests.helpers import make_raster


def test_idle_time_is_split_by_what_the_host_was_doing():
    device = {"encode": [(0.0, 1.0), (1.5, 2.5), (2.5, 3.0)], "warp": [(1.2, 1.5)]}
    host = {"waiting for the readers": [(1.0, 1.1), (2.0, 2.2)],  # the 2nd overlaps work
            "queueing the warp": [(1.1, 1.15)],
            "queueing the encode": [(0.0, 0.1), (1.5, 1.6)],
            "waiting for vectors": []}
    s = summarise(host, device)
    assert s["batches"] == 3 and s["span"] == pytest.approx(3.0)
    assert s["device"] == pytest.approx({"encode": 2.5, "warp": 0.3})
    assert s["idle"] == pytest.approx(0.2) and s["gaps_over_1ms"] == 1
    assert s["largest_gap"] == pytest.approx(0.2)
    assert s["idle_while"] == pytest.approx({"waiting for the readers": 0.1,
                                             "queueing the warp": 0.05,
                                             "queueing the encode": 0.0,
                                             "waiting for vectors": 0.0, "elsewhere": 0.05})
    assert s["host_total"]["waiting for the readers"] == pytest.approx(0.3)
    assert "waiting for vectors" not in s["host_median_ms"]  # no call: no median
    assert s["before"] is None
    w = summarise(host, device, window=(-0.5, 3.75))  # the job's start and end
    assert w["before"] == pytest.approx(0.5) and w["after"] == pytest.approx(0.75)


def test_overlapping_host_spans_count_once():
    s = summarise({"waiting for the readers": [(0.0, 2.0), (0.5, 1.5)]},
                  {"encode": [(0.0, 0.5), (1.5, 2.0)]})
    assert s["idle"] == pytest.approx(1.0)
    assert s["idle_while"] == pytest.approx({"waiting for the readers": 1.0, "elsewhere": 0.0})


def test_a_job_with_the_timeline_installed(tmp_path, settings, encoder, monkeypatch):
    """One encode span per call of the encoder (encode_images on the CPU; on CUDA the call
    that queues a batch), inside the job's encode stage on the CPU; the runner and the
    encoder are as before once it is uninstalled."""
    make_raster(tmp_path / "a" / "one.tif", size=400, seed=3)
    settings = dataclasses.replace(settings, job=dataclasses.replace(settings.job,
                                                                      batch_size=8))
    name = _encode_call(encoder)  # the call the runner makes
    cpu = name == "encode_images"
    calls = []
    encode = getattr(encoder, name)

    def counted(images):
        calls.append(len(images))
        return encode(images)

    monkeypatch.setattr(encoder, name, counted)
    handed = []
    real_put = BackgroundWriter.put

    def put(writer, batch, vectors):
        if batch is not None:
            handed.append(len(batch))
        real_put(writer, batch, vectors)

    monkeypatch.setattr(BackgroundWriter, "put", put)
    before = (runner.resample_deferred, runner.tile_loader, BackgroundWriter.put)
    timeline = Timeline(encoder).install()
    profile = Profile(encoder, skip=1, batches=2).install()  # over the timeline's wrapper
    try:
        report = IndexJob(tmp_path / "idx", settings, encoder, progress=False).run(
            [str(tmp_path / "a")])
    finally:
        profile.uninstall()
        wrapped = vars(encoder)[name].__qualname__
        timeline.uninstall()  # before any assertion: later tests get the real runner
    assert wrapped.startswith("Timeline.")
    assert (runner.resample_deferred, runner.tile_loader, BackgroundWriter.put) == before
    assert vars(encoder)[name] is counted
    assert {"encode_images", "encode_images_later"} & set(vars(encoder)) == {name}
    s = summarise(timeline.host, timeline.device_spans())
    assert report.tiles_written > 0 and s["batches"] == len(calls) >= 2
    assert len(timeline.host["queueing the encode"]) == len(calls)
    assert len(timeline.host["waiting for vectors"]) == (0 if cpu else len(calls))
    assert len(timeline.host["waiting for the readers"]) >= 1
    # Each batch, and the end marker (on CUDA the readers' batches go to the GPU in chunks
    # of batch_size: as many hand-offs as batches, not as calls)
    assert len(timeline.host["handing to the writer"]) == len(handed) + 1
    if cpu:
        assert len(handed) == len(calls)
    assert s["device"]["encode"] > 0
    if cpu:  # the encoding is the main thread's own time there (on CUDA: queued)
        assert s["device"]["encode"] <= report.stages["encode"]
    assert set(s["idle_while"]) == {*HOST, "elsewhere"}
    assert sum(s["idle_while"].values()) == pytest.approx(s["idle"], abs=1e-9)
    assert s["span"] == pytest.approx(s["idle"] + sum(s["device"].values()), abs=1e-6)
    assert timeline.summary().startswith("timeline of the encoder (the CPU" if cpu else
                                         "timeline of the GPU stream")
    table = profile.table()
    assert "ProfilerStep*" in table and "aten::" in table  # the 2 calls after the first


def test_a_profile_window_the_job_never_reached_says_so(tmp_path, settings, encoder):
    make_raster(tmp_path / "a" / "one.tif", size=200, seed=3)
    name = _encode_call(encoder)
    had = vars(encoder).get(name)  # (an older pytest's monkeypatch may leave a bound method)
    profile = Profile(encoder, skip=50, batches=2).install()
    try:
        IndexJob(tmp_path / "idx", settings, encoder, progress=False).run([str(tmp_path / "a")])
    finally:
        profile.uninstall()
    assert vars(encoder).get(name) is had
    assert profile.table().startswith("profile: the job had too few batches")


class _QueuedEncoder:
    """Stands in for a CUDA encoder: encode_images_later queues (returns at once) and the
    returned function waits for the vectors."""

    device = SimpleNamespace(type="cuda")

    def __init__(self):
        self.waited = 0

    def encode_images_later(self, images):
        def vectors():
            time.sleep(0.01)
            self.waited += 1
            return np.zeros((len(images), 4), np.float32)

        return vectors


class _HostClock:
    """The CUDA clock's interface with host times for marks (no GPU here)."""

    cuda = True

    def mark(self):
        return time.perf_counter()

    def seconds(self, mark):
        return mark

    def settle(self):
        pass


def test_on_cuda_the_queued_call_and_the_wait_for_vectors_are_timed_apart():
    enc = _QueuedEncoder()
    timeline = Timeline(enc, clock=_HostClock()).install()
    try:
        wait = enc.encode_images_later(np.zeros((3, 3, 8, 8), np.uint8))  # as the runner calls
        assert enc.waited == 0  # queued, not waited for
        assert wait().shape == (3, 4) and enc.waited == 1
    finally:
        timeline.uninstall()
    assert "encode_images_later" not in vars(enc)
    (queued,) = timeline.host["queueing the encode"]
    (waited,) = timeline.host["waiting for vectors"]
    assert queued[1] <= waited[0] and waited[1] - waited[0] >= 0.01
    assert len(timeline.device_spans()["encode"]) == 1
