"""When the ANN is (re-)trained and for what size (`TrainingPlan`), and IVF-PQ training on
a thread of its own, so that the writer goes on committing (and the job's encoder goes on
encoding) while FAISS's k-means runs.

The thread trains on a sample fixed when it starts (the same sample, from the same seed,
that training in the commit would take: the result is bit for bit the same), then encodes
the vectors committed so far with the new structure, catching up with what the writer
commits meanwhile. Nothing is written to the index directory here: a later commit of the
writer takes the result (`AnnFiles.rewrite`), atomically as ever, and encodes only the rows
committed since the thread's last catch-up.

FAISS runs here on TRAIN_THREADS OpenMP threads (a per-thread setting: the writer's own
FAISS calls keep theirs), a quarter of the cores: the job's reader processes keep every core
busy meanwhile, and OpenMP threads that outnumber the free cores spin in their barriers (2
threads beside 2 readers on 2 cores trained in 13.5 s, 1 thread in 5.3 s); too few, and a
job's stream ends before the training does and its last commit waits (2 threads on 16 cores:
9.6 s, 4.7 s of it waited for). BENCHMARKS.md has the runs. `wait()` (the last commit, when
reading is over) lets the encoding that is left use every core.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.config import StoreSettings
from indexer.store.vector_index import CoarseKMeans, VectorIndex, set_threads
from indexer.store.vectors import open_rows

TRAIN_THREADS = max(1, (os.cpu_count() or 1) // 4)
CHUNK = 65536  # vectors encoded per step (the stop flag is checked between steps)
CATCH_UP_ROUNDS = 4  # passes over rows committed while the thread worked


@dataclass(frozen=True)
class TrainingPlan:
    """When the writer (re-)trains the ANN, and for what size. The rule: a Flat index
    becomes IVF-PQ at store.ivf_min_vectors; an IVF-PQ one is re-trained at
    store.retrain_growth times the size it was trained for.

    `expected` (IndexWriter.expect: the job gives its plan's tiles) is the size the run
    ends at, F. Where a training made for F can serve to the run's end (the index holds
    F / retrain_growth) and the index holds enough points for its k-means, the writer
    (re-)trains for F then, the first training too; a growth re-training that F's would
    follow within one growth step is left to it. Else the growth rule alone, whose last
    re-training can fall in a run's last seconds and hold its last commit for the whole
    training (a 980,000-tile job re-trained at 800,000: its last commit waited 41 s for it;
    BENCHMARKS.md)."""

    settings: StoreSettings
    dim: int
    expected: int | None = None

    def target(self, n: int) -> int:
        """The size an ANN trained at `n` vectors is made for: F where it serves to the
        run's end (n >= F / store.retrain_growth) and `n` vectors are enough points for its
        k-means; else `n`."""
        f, growth = self.expected, self.settings.retrain_growth
        if f is None or f <= n or not growth or n * growth < f:
            return n
        return f if n >= VectorIndex.min_training_size(f, self.dim, self.settings) else n

    def due(self, flat: bool, trained_at: int, n: int, retrain: bool) -> bool:
        """Whether an index of `n` vectors (Flat, or an IVF-PQ made for `trained_at`) is due
        for training; `retrain`: whether an IVF-PQ can be re-trained at all (it needs the
        float16 copies)."""
        st = self.settings
        target = self.target(n)
        if flat:  # or, for a run that ends past ivf_min_vectors, earlier
            return n >= st.ivf_min_vectors or (target > n and target >= st.ivf_min_vectors)
        growth = st.retrain_growth
        if not (growth and retrain):
            return False
        if target > n:  # a training for the run's size can be made now
            return target >= growth * trained_at
        grew = n >= growth * trained_at
        if grew and self.expected is not None and n < self.expected <= n * growth ** 2:
            return False  # the run's own training comes before this one would be outgrown
        return grew


class BackgroundTraining:
    """Trains an IVF-PQ for `n` vectors on `sample` and encodes rows 0.. of `source`
    (float16 copies, row = tile id, `rows()` of them committed) or of `exact` (float32,
    row = tile id: a Flat index without float16 copies). `kmeans`: the IVF's k-means and
    the vectors' lists computed there (VectorIndex.train_ivfpq)."""

    def __init__(self, sample: np.ndarray, n: int, settings: StoreSettings,
                 rows: Callable[[], int], source: Path | None = None,
                 exact: np.ndarray | None = None, kmeans: CoarseKMeans | None = None):
        self.n = n
        self._kmeans = kmeans
        self._rows = rows
        self._source, self._exact = source, exact
        self._dim = sample.shape[1]
        self._stop, self._hurry = threading.Event(), threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self.index: VectorIndex | None = None  # the trained structure, holding nothing
        self.params: dict = {}
        self.codes = np.zeros((0, 0), dtype=np.uint8)  # codes of rows 0..len(codes)-1
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(sample, settings),
                                        name="satfind-ivf-training", daemon=True)
        self._thread.start()

    def _run(self, sample: np.ndarray, settings: StoreSettings) -> None:
        t0 = time.perf_counter()
        try:
            set_threads(TRAIN_THREADS)
            index, self.params = VectorIndex.train_ivfpq(sample, self.n, settings,
                                                         self._kmeans)
            del sample
            parts: list[np.ndarray] = []
            done = 0
            for _ in range(CATCH_UP_ROUNDS):
                upto = self._rows() if self._exact is None else len(self._exact)
                if upto <= done:
                    break
                vectors = self._vectors(upto)
                for lo in range(done, upto, CHUNK):
                    if self._stop.is_set():
                        return
                    if self._hurry.is_set():
                        set_threads(os.cpu_count() or 1)
                    parts.append(index.encode(vectors[lo:min(lo + CHUNK, upto)]))
                done = upto
            self.codes = (np.concatenate(parts) if parts
                          else np.zeros((0, index.code_size), dtype=np.uint8))
            self.index = index
        except BaseException as e:  # noqa: BLE001 - raised in the writer's thread by result()
            self._error = e
        finally:
            self.seconds = time.perf_counter() - t0
            self._done.set()

    def _vectors(self, upto: int) -> np.ndarray:
        if self._exact is not None:
            return self._exact[:upto]
        return open_rows(self._source, upto, self._dim)

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        """Until the thread is done; its encoding from here on uses every core."""
        self._hurry.set()
        self._done.wait()

    def result(self) -> tuple[VectorIndex, dict, np.ndarray]:
        """(the trained, empty index; what to record about it; codes of rows 0..len-1),
        once done(). Raises what the thread raised."""
        if not self.done():
            raise RuntimeError("the IVF-PQ training has not finished")
        if self._error is not None:
            raise self._error
        if self.index is None:
            raise RuntimeError("the IVF-PQ training was stopped")
        return self.index, self.params, self.codes

    def stop(self) -> None:
        """Ask the thread to stop at its next step (k-means itself runs to its end)."""
        self._stop.set()
