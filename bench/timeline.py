"""Where the encoder's device spends a job's time, batch by batch (bench/index.py --timeline).

The job's stages say how long the main thread spent in each step; they cannot say whether
the GPU was idle meanwhile (queued work runs while the main thread does something else).
This records, around each call of the job's main thread:

- on the encoder's stream (CUDA events, read on the host's clock afterwards): the device
  warp of each read batch (its copies included: the stream waits for them) and the encode
  of each batch;
- on the host: waiting for the readers, queueing the warp, queueing the encode, waiting for
  the vectors, handing each batch to the writer thread.

and then says how long the device was busy with each and idle between batches, and what
the main thread was doing while it was idle. On the CPU the "device" is the main thread
itself (encoding is synchronous there), so idle is simply time the model was not running.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

HOST = ("waiting for the readers", "queueing the warp", "queueing the encode",
        "waiting for vectors", "handing to the writer")
DEVICE = ("warp", "encode")


class _Clock:
    """Points in the encoder stream's work (CUDA events; on the CPU, host times) and their
    times on the host's perf_counter clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize(device)
            self.ref = torch.cuda.Event(enable_timing=True)
            self.ref.record()
            self.ref.synchronize()
            self.host0 = time.perf_counter()

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def seconds(self, mark) -> float:
        if not self.cuda:
            return mark
        return self.host0 + self.ref.elapsed_time(mark) / 1e3

    def settle(self) -> None:
        """Every mark made so far has its time (the device's queued work is done)."""
        if self.cuda:
            torch.cuda.synchronize()


class Timeline:
    """Install before the job runs (it wraps the runner's loader and device warp and the
    encoder's calls), `summary()` after it."""

    def __init__(self, encoder, clock: _Clock | None = None):
        self.encoder = encoder
        self.clock = clock or _Clock(getattr(encoder, "device", torch.device("cpu")))
        self.host: dict[str, list[tuple[float, float]]] = {k: [] for k in HOST}
        self._marks: dict[str, list[tuple[object, object]]] = {k: [] for k in DEVICE}
        self._undo: list[Callable[[], None]] = []

    def install(self) -> Timeline:
        import indexer.job.runner as runner

        real_warp, real_loader = runner.resample_deferred, runner.tile_loader
        host, marks, clock = self.host, self._marks, self.clock

        def warp(batch, device, *rest):  # rest: the thumbnails' size, when on the device
            t, m = time.perf_counter(), clock.mark()
            out = real_warp(batch, device, *rest)
            marks["warp"].append((m, clock.mark()))
            host["queueing the warp"].append((t, time.perf_counter()))
            return out

        def loader(*args, **kwargs):
            it = iter(real_loader(*args, **kwargs))  # the readers start here, as before

            def timed():
                while True:
                    t = time.perf_counter()
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                    host["waiting for the readers"].append((t, time.perf_counter()))
                    yield item

            return timed()

        self._undo.append(_replace(runner, "resample_deferred", warp))
        self._undo.append(_replace(runner, "tile_loader", loader))

        from indexer.job.background import BackgroundWriter

        real_put = BackgroundWriter.put

        def put(writer, *args):  # the job's hand-off of each embedded batch
            t = time.perf_counter()
            real_put(writer, *args)
            host["handing to the writer"].append((t, time.perf_counter()))

        self._undo.append(_replace(BackgroundWriter, "put", put))

        # The call the runner makes: on CUDA it queues the batch and returns a function
        # that waits for its vectors (timed apart); on the CPU it encodes.
        enc = self.encoder
        name = _encode_call(enc)
        later = name == "encode_images_later"
        real_encode = getattr(enc, name)

        def encode(images):
            t, m = time.perf_counter(), clock.mark()
            out = real_encode(images)
            marks["encode"].append((m, clock.mark()))
            host["queueing the encode"].append((t, time.perf_counter()))
            if not later:
                return out

            def wait():
                t = time.perf_counter()
                vectors = out()
                host["waiting for vectors"].append((t, time.perf_counter()))
                return vectors

            return wait

        self._undo.append(_replace(enc, name, encode))
        return self

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def device_spans(self) -> dict[str, list[tuple[float, float]]]:
        self.clock.settle()
        return {k: [(self.clock.seconds(a), self.clock.seconds(b)) for a, b in v]
                for k, v in self._marks.items()}

    def summary(self) -> str:
        return format_summary(summarise(self.host, self.device_spans()), self.clock.cuda)


def _encode_call(encoder) -> str:
    """The encoder's method the job's runner calls per batch (runner.LocalRunner.embedded)."""
    cuda = getattr(getattr(encoder, "device", None), "type", "cpu") == "cuda"
    return ("encode_images_later" if cuda and hasattr(encoder, "encode_images_later")
            else "encode_images")


def _replace(obj, name: str, value) -> Callable[[], None]:
    """obj.name = value (a module's or class's attribute, or an instance's over its class's
    method); returns its undo, which puts back what `obj` itself had (on an instance, a
    wrapper installed before this one, or nothing)."""
    had = vars(obj).get(name)
    setattr(obj, name, value)
    return (lambda: delattr(obj, name)) if had is None else (lambda: setattr(obj, name, had))


class Profile:
    """torch.profiler over `batches` of the job's encoder calls after the first `skip`:
    which calls take the time (the CPU ops of every thread of this process, and on CUDA
    the runtime's calls and the kernels), as a table; `trace`: a Chrome trace file too."""

    def __init__(self, encoder, skip: int = 20, batches: int = 20, trace: str = ""):
        self.encoder, self.trace = encoder, trace
        cuda = getattr(encoder, "device", torch.device("cpu")).type == "cuda"
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.done: torch.profiler.profile | None = None
        self._prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(skip_first=skip, wait=0, warmup=1,
                                             active=batches, repeat=1),
            on_trace_ready=self._ready)
        self._undo: Callable[[], None] | None = None

    def _ready(self, prof) -> None:
        self.done = prof
        if self.trace:
            prof.export_chrome_trace(self.trace)

    def install(self) -> Profile:
        enc = self.encoder
        name = _encode_call(enc)
        real = getattr(enc, name)

        def call(images):
            self._prof.step()
            return real(images)

        self._prof.start()
        self._undo = _replace(enc, name, call)
        return self

    def uninstall(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None
            self._prof.stop()

    def table(self, rows: int = 25) -> str:
        if self.done is None:
            return "profile: the job had too few batches for the profile's window"
        return self.done.key_averages().table(sort_by="self_cpu_time_total",
                                              row_limit=rows)


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlap(a: float, b: float, spans: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in spans)


def summarise(host: dict[str, list[tuple[float, float]]],
              device: dict[str, list[tuple[float, float]]],
              window: tuple[float, float] | None = None) -> dict:
    """Host and device spans (seconds, one clock) -> the device's busy time per kind, its
    idle time between its first and last work and the gaps, and what the host was doing
    during the gaps (time in each host kind; the rest "elsewhere"). `window`: the job's
    start and end on that clock: the idle time before the first work and after the last."""
    busy = _merge([s for spans in device.values() for s in spans])
    if not busy:
        return {"batches": 0}
    gaps = [(busy[i][1], busy[i + 1][0]) for i in range(len(busy) - 1)]
    merged_host = {k: _merge(v) for k, v in host.items()}
    idle = sum(b - a for a, b in gaps)
    idle_while = {k: sum(_overlap(a, b, spans) for a, b in gaps)
                  for k, spans in merged_host.items()}
    idle_while["elsewhere"] = max(0.0, idle - sum(idle_while.values()))
    return {
        "batches": len(device.get("encode", [])),
        "span": busy[-1][1] - busy[0][0],
        "device": {k: sum(b - a for a, b in v) for k, v in device.items()},
        "idle": idle,
        "gaps_over_1ms": sum(1 for a, b in gaps if b - a > 1e-3),
        "largest_gap": max((b - a for a, b in gaps), default=0.0),
        "idle_while": idle_while,
        "host_median_ms": {k: statistics.median(b - a for a, b in v) * 1e3
                           for k, v in host.items() if v},
        "host_total": {k: sum(b - a for a, b in v) for k, v in host.items()},
        "before": busy[0][0] - window[0] if window else None,
        "after": window[1] - busy[-1][1] if window else None,
    }


def format_summary(s: dict, cuda: bool) -> str:
    if not s["batches"]:
        return "timeline: no batch was encoded"
    what = ("GPU stream (CUDA events on the encoder's stream, on the host's clock)" if cuda
            else "encoder (the CPU: the main thread itself)")
    dev = s["device"]
    lines = [
        f"timeline of the {what}, {s['batches']} batches:",
        f"  first work to last: {s['span']:.2f} s = warp {dev.get('warp', 0):.2f} + encode "
        f"{dev.get('encode', 0):.2f} + idle {s['idle']:.2f} s ({s['gaps_over_1ms']} gaps over "
        f"1 ms, the largest {s['largest_gap'] * 1e3:.1f} ms)",
        "  while it was idle the main thread was: " + ", ".join(
            f"{k} {v:.2f} s" for k, v in s["idle_while"].items()),
        "  main thread in all (s): " + ", ".join(
            f"{k} {v:.2f}" for k, v in s["host_total"].items()),
        "  main thread per call (median ms): " + ", ".join(
            f"{k} {v:.2f}" for k, v in s["host_median_ms"].items()),
    ]
    if s.get("before") is not None:
        lines.insert(2, f"  before its first work: {s['before']:.2f} s of the job; after its "
                        f"last: {s['after']:.2f} s")
    return "\n".join(lines)
