"""The IVF's coarse k-means and list assignment: FAISS on the CPU cores against torch on a
device (job.kmeans_on, indexer/job/device_kmeans.py), side by side in one run.

Trains the IVF-PQ a job of --size tiles trains (nlist 2 sqrt(N), a sample of 50 points a
list, 512-d synthetic embeddings) each way, encodes --encode vectors with it, and measures
recall@10 of the IVF-PQ alone (no re-rank, nprobe 16) over them against exact search. On a
CUDA machine `torch-cuda` is the job's GPU path; on a CPU `torch-cpu` runs the same code.

    python bench/kmeans.py --size 980000 --encode 200000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic import EmbeddingWorld  # noqa: E402
from indexer.config import StoreSettings  # noqa: E402
from indexer.job.device_kmeans import DeviceKMeans  # noqa: E402
from indexer.store.vector_index import KMEANS_ITERS, VectorIndex, ivf_params  # noqa: E402


class TimedKMeans(DeviceKMeans):
    """DeviceKMeans, timing its k-means (the rest of train_ivfpq is FAISS's PQ training)."""

    seconds = 0.0

    def centroids(self, sample, k, iters):
        t = time.perf_counter()
        out = super().centroids(sample, k, iters)  # back on the host: the device is done
        self.seconds = time.perf_counter() - t
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=980_000, help="the index size trained for")
    ap.add_argument("--encode", type=int, default=200_000, help="vectors encoded and searched")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--ways", nargs="+", default=["faiss", "torch-cpu"]
                    + (["torch-cuda"] if torch.cuda.is_available() else []))
    a = ap.parse_args()
    st = StoreSettings()
    world = EmbeddingWorld(dim=512)
    nlist, _ = ivf_params(a.size, 512, st)
    k = VectorIndex.training_size(a.size, 512, st)
    sample = world.sample(k, 1).astype(np.float32)
    x = world.sample(a.encode, 2).astype(np.float32)
    q = world.sample(a.queries, 3).astype(np.float32)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"# bench/kmeans.py on {os.cpu_count()} cores ({card}): IVF{nlist} for "
          f"{a.size:,}, k-means of {k:,} points x {KMEANS_ITERS} iterations; "
          f"{a.encode:,} vectors encoded")
    print("| round | way | k-means s | PQ training s | encode s / 100k | recall@10 (IVF-PQ, "
          "nprobe 16) |")
    print("|---|---|---|---|---|---|")
    for r in range(1, a.rounds + 1):
        for way in a.ways:
            km = None if way == "faiss" else TimedKMeans(torch.device(way.split("-")[1]))
            t = time.perf_counter()
            idx, _ = VectorIndex.train_ivfpq(sample, a.size, st, km)
            t_train = time.perf_counter() - t
            t_km = km.seconds if km is not None else 0.0
            t = time.perf_counter()
            codes = idx.encode(x)
            t_enc = time.perf_counter() - t
            idx.add_codes(codes, np.arange(len(x), dtype=np.int64))
            found = idx.search(q, 10, nprobe=16)[1]
            recall = np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth, strict=True)])
            if km is None:  # FAISS's train holds its k-means: ~ the whole, less the PQ's
                t_km, t_pq = float("nan"), t_train
            else:
                t_pq = t_train - t_km
            print(f"| {r} | {way} | {t_km:.2f} | {t_pq:.2f} (with k-means: {t_train:.2f}) | "
                  f"{t_enc / len(x) * 1e5:.2f} | {recall:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
