"""bench/timeline.py: the device's busy and idle time per batch, and what the main thread did
while the device was idle (bench/index.py --timeline)."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import numpy as np
import pytest

import indexer.job.runner as runner
from bench.timeline import HOST, Profile, Timeline, summarise
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


def test_overlapping_host_spans_count_once():
    s = summarise({"waiting for the readers": [(0.0, 2.0), (0.5, 1.5)]},
                  {"encode": [(0.0, 0.5), (1.5, 2.0)]})
    assert s["idle"] == pytest.approx(1.0)
    assert s["idle_while"] == pytest.approx({"waiting for the readers": 1.0, "elsewhere": 0.0})


def test_a_job_with_the_timeline_installed(tmp_path, settings, encoder, monkeypatch):
    """On the CPU: one encode span per call of the encoder, inside the job's encode stage;
    the runner and the encoder are as before once it is uninstalled."""
    make_raster(tmp_path / "a" / "one.tif", size=400, seed=3)
    settings = dataclasses.replace(settings, job=dataclasses.replace(settings.job,
                                                                      batch_size=8))
    before = (runner.resample_deferred, runner.tile_loader, BackgroundWriter.put)
    calls = []
    encode = encoder.encode_images

    def counted(images):
        calls.append(len(images))
        return encode(images)

    monkeypatch.setattr(encoder, "encode_images", counted)  # the call the runner makes
    timeline = Timeline(encoder).install()
    profile = Profile(encoder, skip=1, batches=2).install()  # over the timeline's wrapper
    try:
        report = IndexJob(tmp_path / "idx", settings, encoder, progress=False).run(
            [str(tmp_path / "a")])
    finally:
        profile.uninstall()
        assert vars(encoder)["encode_images"].__qualname__.startswith("Timeline.")
        timeline.uninstall()
    assert (runner.resample_deferred, runner.tile_loader, BackgroundWriter.put) == before
    assert vars(encoder)["encode_images"] is counted and "encode_images_later" not in vars(encoder)
    s = summarise(timeline.host, timeline.device_spans())
    assert report.tiles_written > 0 and s["batches"] == len(calls) >= 2
    assert len(timeline.host["queueing the encode"]) == len(calls)
    assert len(timeline.host["waiting for the readers"]) >= 1
    assert len(timeline.host["handing to the writer"]) == len(calls) + 1  # + the end marker
    assert 0 < s["device"]["encode"] <= report.stages["encode"]  # inside the job's timer
    assert set(s["idle_while"]) == {*HOST, "elsewhere"}
    assert sum(s["idle_while"].values()) == pytest.approx(s["idle"], abs=1e-9)
    assert s["span"] == pytest.approx(s["idle"] + sum(s["device"].values()), abs=1e-6)
    assert timeline.summary().startswith("timeline of the encoder (the CPU")
    table = profile.table()
    assert "ProfilerStep*" in table and "aten::" in table  # the 2 calls after the first


def test_a_profile_window_the_job_never_reached_says_so(tmp_path, settings, encoder):
    make_raster(tmp_path / "a" / "one.tif", size=200, seed=3)
    profile = Profile(encoder, skip=50, batches=2).install()
    try:
        IndexJob(tmp_path / "idx", settings, encoder, progress=False).run([str(tmp_path / "a")])
    finally:
        profile.uninstall()
    assert "encode_images" not in vars(encoder)
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
