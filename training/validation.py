"""Validation: recall@1 of satellite patch -> ground photos on held-out places."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from encoder.model import SatelliteEncoder
from training.pairs import PairSet


@torch.no_grad()
def retrieval_recall_at_1(student: torch.nn.Module, encoder: SatelliteEncoder, pairs: PairSet,
                          ground: torch.Tensor, index: np.ndarray, batch_size: int = 128
                          ) -> tuple[float, float]:
    """Satellite -> ground recall@1 over `index` samples: the candidates are every photo of
    those samples; a hit is a top-1 photo that lies inside the patch. Returns (recall, the
    same for a random ranking)."""
    was_training = student.training
    student.eval()
    cand = sorted({j for i in index for j in pairs.samples[i].photos})
    col = {j: c for c, j in enumerate(cand)}
    g = F.normalize(ground[cand].float(), dim=-1)
    hits, chance = 0, 0.0
    for s in range(0, len(index), batch_size):
        chunk = index[s:s + batch_size]
        x = encoder.prepare(np.stack([np.asarray(pairs.patches[i]) for i in chunk]))
        with encoder.autocast():
            emb = student(x)
        top = (F.normalize(emb.float(), dim=-1) @ g.T).argmax(dim=1).cpu().numpy()
        for i, t in zip(chunk, top, strict=True):
            mine = {col[j] for j in pairs.samples[i].photos}
            hits += int(t) in mine
            chance += len(mine) / len(cand)
    student.train(was_training)
    return hits / len(index), chance / len(index)
