"""IVF-PQ training time against the size of the training sample (VectorIndex.train_ivfpq,
512-d unit vectors, the store's default settings): FAISS's PQ k-means is several times
faster per point from about 16,000 points than below, which sets PQ_TRAIN_POINTS.

    python bench/pq_train.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.config import StoreSettings  # noqa: E402
from indexer.store.vector_index import VectorIndex  # noqa: E402


def main() -> int:
    rng = np.random.default_rng(0)
    n = 50_000  # the index size training is for (sets nlist: 447)
    print(f"{os.cpu_count()} CPUs; IVF-PQ for {n} vectors of 512-d, default store settings")
    print(f"{'sample':>8} {'seconds':>8} {'ms per 1,000 points':>20}")
    for size in (9_984, 12_000, 15_000, 16_384, 22_350):
        x = rng.normal(size=(size, 512)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        t = time.perf_counter()
        VectorIndex.train_ivfpq(x, n, StoreSettings())
        s = time.perf_counter() - t
        print(f"{size:>8} {s:>8.2f} {s / size * 1e6:>20.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
