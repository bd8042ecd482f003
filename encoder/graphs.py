"""The image tower as CUDA graphs (encoder.cuda_graphs): each batch shape that comes back
is captured once, then every batch of that shape is one graph launch instead of ~150
kernel launches and cuDNN's per-call host work (~8 ms of the calling thread per 512 tiles
of ViT-B-16, bench/index.py --profile). The job's runner hands the GPU one shape
(FixedBatches), so a job captures one graph.

A shape is captured the second time it is seen (the first batch runs as it is: a job's
last, odd-sized chunk never pays a capture), at most MAX_SHAPES shapes per encoder (each
holds its own memory pool: the activations of one batch). Capturing is tried once per
shape; where it fails (an operation CUDA cannot capture) that shape stays on the plain
path, and the reason is kept in `failed`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

MAX_SHAPES = 4


class GraphedTower:
    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]):
        """`forward(x)`: the prepared batch -> its vectors (the tower and normalisation),
        captured as it is: it must only launch GPU work (no host reads of GPU values)."""
        self.forward = forward
        self._seen: set[tuple] = set()
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.failed: dict[tuple, str] = {}
        # Copy in, replay and the caller's copy out are queued as one (two threads must not
        # replay one graph between another's replay and its copy out): see __call__.
        self.lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The vectors of `x` (on the GPU, on the current stream). Call under `self.lock`
        and queue the copy of the result before releasing it: the result of a graph is
        overwritten by its next replay (stream order makes a copy queued before that safe)."""
        key = (tuple(x.shape), x.dtype, x.device)
        graph = self._graphs.get(key)
        if graph is None:
            if key not in self._seen or key in self.failed or len(self._graphs) >= MAX_SHAPES:
                self._seen.add(key)
                return self.forward(x)
            graph = self._capture(key, x)
            if graph is None:
                return self.forward(x)
        g, static_in, static_out = graph
        static_in.copy_(x)
        g.replay()
        return static_out

    @property
    def shapes(self) -> int:
        return len(self._graphs)

    def _capture(self, key: tuple, x: torch.Tensor):
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)  # x is ready on the current stream
        try:
            with torch.cuda.stream(side):
                static_in = x.clone()
                self.forward(static_in)  # lazy set-up (handles, plans) on the capture stream
                g = torch.cuda.CUDAGraph()
                # thread_local: the job's other threads (the page-locking of the readers'
                # batches, the writer) go on using CUDA meanwhile.
                with torch.cuda.graph(g, stream=side, capture_error_mode="thread_local"):
                    static_out = self.forward(static_in)
        except RuntimeError as e:  # e.g. an operation that cannot be captured
            self.failed[key] = str(e).splitlines()[0] if str(e) else type(e).__name__
            current.wait_stream(side)
            return None
        current.wait_stream(side)
        self._graphs[key] = (g, static_in, static_out)
        return self._graphs[key]
