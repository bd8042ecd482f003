"""The IVF's coarse k-means and the assignment of vectors to its lists on the encoder's
device (job.kmeans_on), for the store (VectorIndex.train_ivfpq, VectorIndex.encode), which
imports no torch: numpy in, numpy out.

FAISS on the CPU cores does both with BLAS: a run's training for 980,000 tiles is k-means
of ~99,000 points into 1,979 lists (10 iterations) and then the list of every vector held
(1,979 inner products of 512-d each), minutes of CPU beside the job's readers; each is a
few matrix products that a GPU does in milliseconds. FAISS keeps the rest: the PQ
codebooks' training and the codes of the residuals.

On CUDA the work runs on a stream of its own: the training thread and the writer thread that
call it wait for their own work only, not for the encoder's batches queued on the job's
stream (which a copy from pageable memory or a result's copy back would wait behind).

Spherical k-means as FAISS trains an inner-product IVF (ClusteringParameters.spherical):
the first centroids a seeded random choice of the points, each iteration every point to
its centroid of highest inner product, each centroid its points' mean, normalised; an
empty centroid takes half of the largest cluster (FAISS splits a cluster likewise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

SEED = 1234
SPLIT_EPS = 1.0 / 1024  # how far an empty centroid and the one it splits are pushed apart
SCORES_BYTES = 1 << 28  # the inner products of one chunk of points (float32)


class DeviceKMeans:
    """Coarse k-means and assignment on `device` (store.vector_index.CoarseKMeans)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _own_stream(self) -> contextlib.AbstractContextManager:
        """The calling thread's work on this object's CUDA stream (elsewhere: as it is)."""
        if self._stream is None:
            return contextlib.nullcontext()
        return torch.cuda.stream(self._stream)

    def centroids(self, sample: np.ndarray, k: int, iters: int) -> np.ndarray:
        with self._own_stream():
            return self._centroids(sample, k, iters)

    def _centroids(self, sample: np.ndarray, k: int, iters: int) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)).to(self.device)
        n = len(x)
        if not 0 < k <= n:
            raise ValueError(f"k-means of {n} points into {k} centroids")
        g = torch.Generator().manual_seed(SEED)
        c = x[torch.randperm(n, generator=g)[:k].to(self.device)].clone()
        for _ in range(iters):
            lists = self._nearest(x, c)
            sums = torch.zeros_like(c).index_add_(0, lists, x)
            counts = torch.bincount(lists, minlength=k)
            c = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
            for j in torch.nonzero(counts == 0).flatten().tolist():
                big = int(torch.argmax(counts))  # split the largest cluster in two
                push = torch.ones_like(c[big])
                push[1::2] = -1
                c[j] = c[big] * (1 + SPLIT_EPS * push)
                c[big] = c[big] * (1 - SPLIT_EPS * push)
                counts[j] = counts[big] // 2
                counts[big] -= counts[j]
            c = torch.nn.functional.normalize(c, dim=1)
        return c.float().cpu().numpy()

    def assigner(self, centroids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        with self._own_stream():
            c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(
                self.device)

        def assign(vectors: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
            with self._own_stream():
                return self._nearest(x.to(self.device), c).cpu().numpy()
        return assign

    def _nearest(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """int64 [N]: each row of x's centroid of highest inner product, in chunks of
        rows whose scores fit SCORES_BYTES."""
        step = max(1, SCORES_BYTES // (4 * len(c)))
        return torch.cat([(x[lo:lo + step] @ c.T).argmax(1) for lo in range(0, len(x), step)])
