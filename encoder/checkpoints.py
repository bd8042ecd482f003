"""Weights hashes and the sidecar a GRAFT checkpoint carries: which CLIP's text tower it must
be used with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from encoder.identity import EncoderError


def state_dict_sha256(model: torch.nn.Module, skip_prefix: str | None = None) -> str:
    """Hash of all parameters and buffers, in float32, in name order (device-independent);
    names starting with `skip_prefix` left out."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if skip_prefix and name.startswith(skip_prefix):
            continue
        h.update(name.encode())
        t = tensor.detach().to("cpu")
        if t.is_floating_point():
            t = t.float()
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def text_tower_sha256(model: torch.nn.Module) -> str:
    """Hash of everything but the image tower: what text queries depend on."""
    return state_dict_sha256(model, skip_prefix="visual.")


def sidecar_quick_gelu(checkpoint: Path) -> bool:
    """Whether a satfind checkpoint's sidecar says its towers use QuickGELU (a GRAFT encoder
    trained against an OpenAI CLIP does, like its teacher)."""
    try:
        return bool(json.loads(sidecar_path(checkpoint).read_text()).get("quick_gelu", False))
    except (OSError, ValueError, AttributeError):
        return False


def check_sidecar(checkpoint: Path, model: torch.nn.Module) -> dict | None:
    side = sidecar_path(checkpoint)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        teacher = meta["teacher"]
        expected = meta["text_tower_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EncoderError(f"{side}: not a satfind checkpoint description ({e})") from None
    if text_tower_sha256(model) != expected:
        raise EncoderError(f"{checkpoint}: its text tower is not the one of the CLIP it was "
                           f"trained against ({side} says {teacher.get('architecture')}@"
                           f"{str(teacher.get('weights_sha256'))[:12]})")
    return teacher
