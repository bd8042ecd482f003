"""A linear classifier on the stored tile vectors, trained from a label set: L2-regularised
logistic regression (Newton steps, classes weighted equally), evaluated with spatially
blocked cross-validation (tiles of one coarse web-mercator block never straddle a train
and a test fold, as GeoVibes does), then used to rank the whole archive."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search.query import QueryError

BLOCK_ZOOM_DROP = 3  # CV blocks: cells 2^3 = 8 tiles on a side
FOLDS = 5


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 30) -> np.ndarray:
    """Weights [d + 1] (last = bias) of a logistic regression of y (0/1) on x."""
    n, d = x.shape
    xb = np.hstack([x.astype(np.float64), np.ones((n, 1))])
    pos = max(int(y.sum()), 1)
    weight = np.where(y > 0, n / (2 * pos), n / (2 * max(n - pos, 1)))
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    w = np.zeros(d + 1)
    for _ in range(steps):
        p = sigmoid(xb @ w)
        g = xb.T @ (weight * (p - y)) + reg * w
        h = (xb * (weight * p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


def blocks(z: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A spatial block id per tile: its cell BLOCK_ZOOM_DROP zooms up."""
    return (z << 52) | ((x >> BLOCK_ZOOM_DROP) << 26) | (y >> BLOCK_ZOOM_DROP)


@dataclass
class Report:
    labels: int
    positives: int
    folds: int  # folds that held both classes in train and test
    precision: float | None  # of tiles predicted positive (p >= 0.5), pooled over folds
    recall: float | None
    auc: float | None  # held-out ranking: P(a positive scores above a negative)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _auc(score: np.ndarray, y: np.ndarray) -> float | None:
    pos, neg = score[y > 0], score[y == 0]
    if not len(pos) or not len(neg):
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2)
                 / (len(pos) * len(neg)))


def cross_validate(x: np.ndarray, y: np.ndarray, block: np.ndarray) -> Report:
    uniq = np.unique(block)
    fold_of_block = {b: i % FOLDS for i, b in enumerate(np.random.default_rng(0).permutation(
        uniq))}
    fold = np.asarray([fold_of_block[b] for b in block])
    held_p, held_y, used = [], [], 0
    for f in range(FOLDS):
        test, train = fold == f, fold != f
        if len(set(y[train])) < 2 or not test.any():
            continue
        w = fit(x[train], y[train])
        held_p.append(sigmoid(x[test] @ w[:-1] + w[-1]))
        held_y.append(y[test])
        used += 1
    if not used:
        return Report(len(y), int(y.sum()), 0, None, None, None)
    p, t = np.concatenate(held_p), np.concatenate(held_y)
    predicted = p >= 0.5
    tp = int((predicted & (t > 0)).sum())
    precision = tp / int(predicted.sum()) if predicted.any() else None
    recall = tp / int((t > 0).sum()) if (t > 0).any() else None
    return Report(len(y), int(y.sum()), used, precision, recall, _auc(p, t))


def train(vectors: np.ndarray, labels: np.ndarray, block: np.ndarray
          ) -> tuple[np.ndarray, float, Report]:
    """(direction [d], bias, CV report) from labelled vectors; 1 = positive."""
    if labels.sum() < 1 or (labels == 0).sum() < 1:
        raise QueryError("the classifier needs at least one positive and one negative")
    report = cross_validate(vectors, labels, block)
    w = fit(vectors, labels)
    return w[:-1].astype(np.float32), float(w[-1]), report
