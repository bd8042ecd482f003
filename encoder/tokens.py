"""Patch-token maps of a ViT image tower, projected into the joint space (GRAFT's pixel-level
loss trains them; similarity maps read them)."""

from __future__ import annotations

import torch

from encoder.identity import EncoderError


def token_grid(visual: torch.nn.Module, image_size: int) -> int:
    """Patch tokens per side of a square input to a ViT image tower with a projection (what
    patch-token features need)."""
    patch = getattr(visual, "patch_size", None)
    if patch is None or getattr(visual, "proj", None) is None or not hasattr(
            visual, "forward_intermediates"):
        raise EncoderError("encoder: patch-token features need an open_clip ViT image tower "
                           "with a projection")
    return image_size // (patch[0] if isinstance(patch, (tuple, list)) else patch)


def image_tokens(visual: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A ViT image tower's pooled embedding [B, D] and its patch tokens projected into the
    joint space, [B, grid, grid, D] (unnormalised); x is square. The tokens go through the
    tower's `patch_head` (LayerNorm + Linear, GRAFT's patch projector) when it has one, else
    through the pooled embedding's own final LayerNorm and projection."""
    grid = token_grid(visual, x.shape[-1])
    head = getattr(visual, "patch_head", None)
    out = visual.forward_intermediates(x, indices=1, normalize_intermediates=head is None,
                                       output_fmt="NLC")
    last = out["image_intermediates"][-1]
    tokens = head(last) if head is not None else last @ visual.proj
    return out["image_features"], tokens.reshape(len(x), grid, grid, -1)
