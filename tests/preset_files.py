"""Weight files in the published layouts of the encoder presets, for tests (random tensors,
nothing downloaded), and the small test architecture standing in for a preset's."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import torch

from encoder import presets as P

TINY = "satfind-tiny"
TINY_PX = 64


def tiny(monkeypatch, name: str) -> P.Preset:
    """The preset `name` with the small test architecture in place of the published one
    (layout, activation, source and everything else kept)."""
    preset = dataclasses.replace(P.PRESETS[name], architecture=TINY, image_size=TINY_PX)
    monkeypatch.setitem(P.PRESETS, name, preset)
    return preset


def write_layout(preset: P.Preset, state: dict, path: Path) -> None:
    """`state` (open_clip keys) written as the preset's authors publish it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if preset.layout == P.OPEN_CLIP:
        torch.save(state, path)
    elif preset.layout == P.GEORSCLIP:  # the raw RS5M training layout, renamed on load
        raw = {(f"image_backbone.{k[7:]}" if k.startswith("visual.") else
                f"text_backbone.{k}"): v for k, v in state.items()}
        torch.save({"state_dict": raw, "epoch": 3}, path)
    elif preset.layout == P.TRAINING_ZIP:
        member = path.parent / "epoch_20.pt"
        torch.save({"epoch": 20, "name": "SkyCLIP", "state_dict": {
            f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]}}, member)
        with zipfile.ZipFile(path, "w") as z:  # stored, like the published zips' members
            z.write(member, f"{path.stem}/epoch_20.pt")
        member.unlink()
    else:
        raise AssertionError(preset.layout)
