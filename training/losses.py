"""The two GRAFT losses, both a multi-positive contrastive form over the ground photos of a
batch:

    L = 1/N sum_i 1/|P(i)| sum_{j in P(i)} -log( exp(q_i . g_j / t) / sum_k exp(q_i . g_k / t) )

- image level: q_i is satellite patch i's embedding; P(i) are the photos inside patch i;
- pixel level: one query per (patch, photo) pair: the patch-token feature at the photo's
  position, with that photo as its positive.

Photos of the batch that fall inside other patches are negatives; a photo inside two
patches is a positive of both. Ground embeddings come from the frozen teacher (no grad).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_positive_contrastive(queries: torch.Tensor, ground: torch.Tensor,
                               positives: torch.Tensor, temperature: torch.Tensor | float
                               ) -> torch.Tensor:
    """queries [N, D], ground [M, D] (both L2-normalised), positives bool [N, M] with at
    least one True per row -> scalar loss."""
    if queries.ndim != 2 or ground.ndim != 2 or positives.shape != (len(queries), len(ground)):
        raise ValueError(f"shapes: queries {tuple(queries.shape)}, ground "
                         f"{tuple(ground.shape)}, positives {tuple(positives.shape)}")
    if not positives.any(dim=1).all():
        raise ValueError("every query needs at least one positive ground photo")
    logits = queries @ ground.detach().T / temperature
    log_p = F.log_softmax(logits, dim=1)
    pos = positives.to(log_p.dtype)
    per_query = -(log_p * pos).sum(dim=1) / pos.sum(dim=1)
    return per_query.mean()


def image_level_loss(sat: torch.Tensor, ground: torch.Tensor, positives: torch.Tensor,
                     temperature: torch.Tensor | float = 0.07) -> torch.Tensor:
    """sat [B, D] satellite embeddings, ground [M, D], positives [B, M]."""
    return multi_positive_contrastive(F.normalize(sat, dim=-1), F.normalize(ground, dim=-1),
                                      positives, temperature)


def pixel_level_loss(tokens: torch.Tensor, ground: torch.Tensor, pairs: torch.Tensor,
                     temperature: torch.Tensor | float = 0.07) -> torch.Tensor:
    """tokens [B, H, W, D] projected patch-token features; ground [M, D]; pairs [K, 4] long
    rows (patch index, token row, token col, photo index): the photo lies in that token.
    Each pair is one query whose positive is its photo; all batch photos are candidates."""
    b, r, c, j = pairs.T
    queries = F.normalize(tokens[b, r, c], dim=-1)
    positives = torch.zeros(len(pairs), len(ground), dtype=torch.bool, device=tokens.device)
    positives[torch.arange(len(pairs), device=tokens.device), j] = True
    return multi_positive_contrastive(queries, F.normalize(ground, dim=-1), positives,
                                      temperature)
