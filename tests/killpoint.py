"""Run satfind-index, SIGKILLed at a chosen point inside the store (crash tests):

    python -m tests.killpoint SCENARIO ARGS...   (ARGS as for satfind-index)

Scenarios: "append" (half-way through appending rows to a float16/codes/tombstone file),
"part" (before a Parquet part is written), "manifest" (with the new manifest written to its
temporary file, before the rename), "retrain" (half-way through rewriting the ANN codes when
the IVF is trained), "training" (on the ANN's training thread, while the job goes on). Each
fires on a later call, so earlier commits exist.
"""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(scenario: str) -> None:
    from indexer.store import ann, layout, manifest, parts, vectors
    from indexer.store.vector_index import VectorIndex

    calls = {"n": 0}

    def nth(n: int) -> bool:
        calls["n"] += 1
        return calls["n"] == n

    if scenario == "append":
        real = vectors.RowFileWriter.write_at

        def write_at(self, row, values):
            if nth(7) and len(values) > 1:
                real(self, row, values[: len(values) // 2])  # header names the half rows
                _die()
            return real(self, row, values)

        vectors.RowFileWriter.write_at = write_at
    elif scenario == "part":
        real_part = parts.write_parquet

        def write_parquet(table, path, *a, **k):
            if nth(5):
                path.write_bytes(b"PAR1 half")
                _die()
            return real_part(table, path, *a, **k)

        parts.write_parquet = write_parquet
    elif scenario == "manifest":
        real_write = layout.atomic_write_bytes

        def atomic_write_bytes(path, data):
            if path.name == layout.MANIFEST and nth(4):
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                tmp.write_bytes(data)
                _die()
            return real_write(path, data)

        manifest.atomic_write_bytes = atomic_write_bytes
    elif scenario == "retrain":
        ann.CHUNK = 128  # the rewrite goes in several steps; die in the third
        real_rewrite, real_add = ann.AnnFiles.rewrite, VectorIndex.add_codes
        inside = {"on": False}

        def rewrite(self, *a, **k):
            inside["on"] = True
            try:
                return real_rewrite(self, *a, **k)
            finally:
                inside["on"] = False

        def add_codes(self, codes, ids):
            if inside["on"] and nth(3):
                _die()
            return real_add(self, codes, ids)

        ann.AnnFiles.rewrite = rewrite
        VectorIndex.add_codes = add_codes
    elif scenario == "training":
        from indexer.store import training

        def _vectors(self, upto):  # on the training thread, once k-means is done
            _die()

        training.BackgroundTraining._vectors = _vectors
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    _install(sys.argv[1])
    from indexer import cli

    sys.exit(cli.main(sys.argv[2:]))
