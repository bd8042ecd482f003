"""Exact top-k by inner product: over a base held in memory, or streamed chunk by chunk (the
ground truth of bench/search.py at any size)."""

from __future__ import annotations

import numpy as np


class TopK:
    """Running exact top-k by inner product over a base seen chunk by chunk. Once every
    query holds k, a chunk's scores are only compared with each query's k-th best (few
    beat it), not partitioned whole."""

    def __init__(self, nq: int, k: int):
        self.k = k
        self.s = np.full((nq, k), -np.inf, dtype=np.float32)
        self.i = np.full((nq, k), -1, dtype=np.int64)

    def update(self, sc: np.ndarray, ids: np.ndarray) -> None:
        """sc [Q, m]: scores of the base rows `ids` [m]."""
        k, (nq, m) = self.k, sc.shape
        if np.isneginf(self.s[:, -1]).any():  # the first chunk(s): partition
            if m > k:
                top = np.argpartition(sc, m - k, axis=1)[:, m - k:]
                sc, cand = np.take_along_axis(sc, top, 1), ids[top]
            else:
                cand = np.broadcast_to(ids, sc.shape)
            s = np.concatenate([self.s, sc], axis=1)
            i = np.concatenate([self.i, cand], axis=1)
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
            self.s, self.i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
            return
        r, c = np.nonzero(sc > self.s[:, -1:])
        if not len(r):
            return
        rows = np.concatenate([np.repeat(np.arange(nq), k), r])
        s = np.concatenate([self.s.ravel(), sc[r, c]])
        i = np.concatenate([self.i.ravel(), ids[c]])
        order = np.lexsort((-s, rows))  # by query, best first; each query has >= k
        take = np.searchsorted(rows[order], np.arange(nq))[:, None] + np.arange(k)
        self.s, self.i = s[order][take], i[order][take]


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000):
    """Brute force top-k by inner product over a base held in memory, chunked (kept
    separate from TopK: it checks the streamed truth)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for s in range(0, len(base), chunk):
        sc = queries @ base[s:s + chunk].T
        top = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + s], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    return best_i
