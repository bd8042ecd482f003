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
    """A ViT image tower's pooled embedding [B, D] and its patch tokens, layer-normed and
    projected like the pooled one, [B, grid, grid, D] (unnormalised); x is square."""
    grid = token_grid(visual, x.shape[-1])
    out = visual.forward_intermediates(x, indices=1, normalize_intermediates=True,
                                       output_fmt="NLC")
    tokens = out["image_intermediates"][-1] @ visual.proj
    return out["image_features"], tokens.reshape(len(x), grid, grid, -1)
