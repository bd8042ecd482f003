"""Training batches: dihedral augmentation that moves photo positions with the pixels, batch
assembly from the pair set, and the micro-batch order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.pairs import PairSet


def dihedral(patch: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One of the 8 flips / quarter turns of a [3, S, S] patch; photo pixel positions (in
    [0, S)) follow it."""
    s = patch.shape[-1]
    if k & 4:
        patch, rows, cols = patch.transpose(0, 2, 1), cols, rows
    if k & 1:
        patch, cols = patch[:, :, ::-1], s - cols
    if k & 2:
        patch, rows = patch[:, ::-1, :], s - rows
    eps = 1e-3
    return patch, np.clip(rows, 0, s - eps), np.clip(cols, 0, s - eps)


@dataclass
class Batch:
    images: np.ndarray  # uint8 [B, 3, S, S]
    photos: np.ndarray  # the batch's distinct photo indices [M]
    positives: np.ndarray  # bool [B, M]
    pixel_pairs: np.ndarray  # int64 [K, 4]: patch, token row, token col, photo column


def make_batch(pairs: PairSet, idx: np.ndarray, grid: int, rng: np.random.Generator | None
               ) -> Batch:
    """Samples -> a training batch; a photo inside several patches is one column, positive
    for each of them."""
    columns: dict[int, int] = {}
    images, pos, pix = [], [], []
    for b, i in enumerate(idx):
        s = pairs.samples[i]
        patch = np.asarray(pairs.patches[i])
        rows, cols = np.asarray(s.rows), np.asarray(s.cols)
        if rng is not None:
            patch, rows, cols = dihedral(patch, rows, cols, int(rng.integers(8)))
        images.append(np.ascontiguousarray(patch))
        cell = s.size / grid
        for j, r, c in zip(s.photos, rows, cols, strict=True):
            m = columns.setdefault(j, len(columns))
            pos.append((b, m))
            pix.append((b, int(r // cell), int(c // cell), m))
    positives = np.zeros((len(idx), len(columns)), dtype=bool)
    positives[tuple(np.asarray(pos).T)] = True
    return Batch(np.stack(images), np.fromiter(columns, dtype=np.int64, count=len(columns)),
                 positives, np.asarray(pix, dtype=np.int64))


def micro_batch_indices(train_index: np.ndarray, batch_size: int, seed: int, micro: int
                        ) -> np.ndarray:
    """The `micro`-th micro-batch of an endless stream of seeded per-epoch shuffles: the same
    for a run and its resume, with no sampler state to save."""
    n = len(train_index)
    start = micro * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset:offset + batch_size - len(out)].tolist())
    return train_index[np.asarray(out)]
