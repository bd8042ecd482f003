"""Where a build's commit time goes, measured from outside the store: while a benchmark
builds, the writer's steps are wrapped with timers (the store itself keeps no timings).
Steps nest: a re-training's time includes its k-means, its sample read and the re-encoding
of every code."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

from indexer.store import ann, vectors, writer
from indexer.store.vector_index import VectorIndex

# key -> (owner, attribute, what it is)
STEPS = {
    "row_files_s": (vectors.RowFileWriter, "write_at",
                    "appended row files written (float16 copies, codes)"),
    "encode_s": (ann.AnnFiles, "append", "codes of new tiles (encode, append)"),
    "add_s": (VectorIndex, "add_codes", "codes into the in-memory index"),
    "parts_s": (writer, "write_part", "parts written (Parquet pair + Arrow rows)"),
    "manifest_s": (writer, "write_manifest", "manifest written"),
    "training_s": (writer.IndexWriter, "_maybe_train_ivf",
                   "IVF-PQ (re-)training, all of it"),
    "train_s": (VectorIndex, "train_ivfpq", "  of which k-means + PQ"),
    "rewrite_s": (ann.AnnFiles, "rewrite", "  of which every code re-encoded"),
}


class StoreClock:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.trained_on: list[int] = []  # sample sizes of the trainings

    def snapshot(self) -> dict[str, float]:
        return {k: self.seconds[k] for k in STEPS}

    @contextmanager
    def running(self):
        saved = []
        try:
            for key, (owner, name, _) in STEPS.items():
                raw = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
                saved.append((owner, name, raw))
                setattr(owner, name, self._timed(key, raw))
            yield self
        finally:
            for owner, name, raw in reversed(saved):
                setattr(owner, name, raw)

    def _timed(self, key: str, raw):
        fn = raw.__func__ if isinstance(raw, classmethod) else raw
        clock = self

        def timed(*a, **k):
            if key == "train_s":
                clock.trained_on.append(len(a[1]))  # (cls, sample, n, settings)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock.seconds[key] += time.perf_counter() - t0

        return classmethod(timed) if isinstance(raw, classmethod) else timed
