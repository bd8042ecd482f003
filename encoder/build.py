"""Building the open_clip model an `EncoderSpec` names: a preset (its architecture and
activation, its file read in its layout) or an open_clip model with a checkpoint, a
`pretrained` tag or seeded random weights. The built model is checked to use the activation
its weights were trained with."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

from encoder.checkpoints import sidecar_quick_gelu
from encoder.download import locate
from encoder.identity import EncoderError, EncoderSpec
from encoder.layouts import read_layout
from encoder.presets import GRAFT_LIGHTNING, Preset, get_preset
from encoder.weightfile import check_weights_file, load_error

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class Built:
    model: nn.Module
    name: str  # the open_clip architecture
    quick_gelu: bool
    preset: Preset | None
    weights_file: Path | None  # the file the weights came from (None: tag or random)


def build(spec: EncoderSpec) -> Built:
    """`spec` must be resolved (EncoderSpec.resolved)."""
    built = _from_preset(spec) if spec.preset else _from_open_clip(spec)
    check_activation(built.model, built.quick_gelu)
    built.model.eval()
    return built


def _from_preset(spec: EncoderSpec) -> Built:
    preset = get_preset(spec.preset)
    if spec.checkpoint and spec.random_weights:
        raise EncoderError("encoder: set checkpoint or random_weights = true, not both")
    name = resolve_model_name(preset.architecture)
    quick = preset.activation == "quick_gelu"
    torch.manual_seed(spec.seed)
    with _quiet_open_clip():
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick)
    if preset.layout == GRAFT_LIGHTNING:  # GRAFT's projector for patch tokens
        width = model.visual.transformer.width
        model.visual.patch_head = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, model.visual.output_dim, bias=False))
    if spec.random_weights:
        return Built(model, name, quick, preset, None)
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise EncoderError(f"encoder.checkpoint: {spec.checkpoint} does not exist")
    else:
        path = locate(preset)
    state = read_layout(path, preset.layout)
    if preset.text_from:  # the text tower (and logit scale) come from another preset's file
        donor = get_preset(preset.text_from)
        text = read_layout(locate(donor), donor.layout)
        state = {**{k: v for k, v in text.items() if not k.startswith("visual.")}, **state}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EncoderError(f"encoder preset {preset.name}: "
                           f"{load_error(path, name, e)}") from None
    return Built(model, name, quick, preset, path)


def _from_open_clip(spec: EncoderSpec) -> Built:
    name = resolve_model_name(spec.model)
    if sum([bool(spec.checkpoint), bool(spec.pretrained), spec.random_weights]) != 1:
        raise EncoderError(
            "encoder: set exactly one of checkpoint (local file), pretrained (open_clip tag, "
            "needs a connected machine) or random_weights = true (tests only)")
    pretrained: str | None = None
    quick = bool(open_clip.get_model_config(name).get("quick_gelu", False))
    if spec.checkpoint:
        if not Path(spec.checkpoint).is_file():
            raise EncoderError(f"encoder.checkpoint: {spec.checkpoint} does not exist")
        check_weights_file(spec.checkpoint)  # TorchScript, HTML, truncated: one line
        pretrained = spec.checkpoint
        quick = quick or sidecar_quick_gelu(Path(spec.checkpoint))
    elif spec.pretrained:
        pretrained = spec.pretrained
        # OpenAI's weights were trained with QuickGELU; open_clip only warns when the model
        # config lacks it, and the embeddings come out wrong.
        tag = open_clip.get_pretrained_cfg(name, spec.pretrained) or {}
        quick = quick or bool(tag.get("quick_gelu", False))
    torch.manual_seed(spec.seed)
    try:
        with _quiet_open_clip():
            model = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick)
    except Exception as e:  # open_clip raises many types for bad/missing weights
        if spec.checkpoint:
            raise EncoderError(f"encoder: {load_error(spec.checkpoint, name, e)}") from None
        msg = ("download failed (this machine is offline, or the weights are not in the local "
               "cache): set encoder.checkpoint to a local weights file (or "
               "encoder.random_weights = true for a trial run)") if spec.pretrained else (
            str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise EncoderError(f"encoder: cannot load weights pretrained={spec.pretrained!r} for "
                           f"{name}: {msg}") from None
    return Built(model, name, quick, None, Path(spec.checkpoint) if spec.checkpoint else None)


def activations(model: nn.Module) -> set[str]:
    """The activation classes of the model's transformer MLPs ("quick_gelu", "gelu")."""
    found = set()
    for m in model.modules():
        if isinstance(m, open_clip.transformer.QuickGELU):
            found.add("quick_gelu")
        elif isinstance(m, nn.GELU):
            found.add("gelu")
    return found


def check_activation(model: nn.Module, quick_gelu: bool) -> None:
    want = "quick_gelu" if quick_gelu else "gelu"
    got = activations(model)
    if got and got != {want}:
        raise EncoderError(f"encoder: the model was built with {'/'.join(sorted(got))} but its "
                           f"weights were trained with {want}; its embeddings would be wrong")


def resolve_model_name(model: str) -> str:
    """Accept a registered open_clip name or a path to a model-config JSON file."""
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise EncoderError(f"encoder.model: model config file {model} does not exist")
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise EncoderError(f"encoder.model: {model} is not a readable JSON model config "
                               f"({e.__class__.__name__})") from None
        if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(
                config):
            raise EncoderError(f"encoder.model: {model} is not an open_clip model config "
                               "(needs embed_dim, vision_cfg and text_cfg)")
        open_clip.add_model_config(path)
        return path.stem
    if open_clip.get_model_config(model) is None:
        raise EncoderError(
            f"encoder.model: unknown open_clip model {model!r} "
            "(use a name from open_clip.list_models() or a model-config .json path)"
        )
    return model


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs through the root logger (random init warnings, download errors); what
    matters reaches the user as an EncoderError instead."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)
