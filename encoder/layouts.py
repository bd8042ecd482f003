"""Reading a preset's weights file, in the layout its authors published, into open_clip's
state-dict keys. Nothing is unpickled beyond tensors and plain containers
(`torch.load(weights_only=True)`), and every file is sniffed first (encoder.weightfile).

- `open_clip`: a plain open_clip state dict (RemoteCLIP, OpenAI CLIP from open_clip's hub).
- `georsclip`: GeoRSCLIP's files; a plain state dict, or a raw RS5M training checkpoint
  (`{'state_dict': ...}` with `text_backbone.` / `image_backbone.` prefixes, renamed as the
  authors' inference/convert_weight.py does).
- `open_clip_training_zip`: open_clip's training script checkpoint
  `{'epoch', 'name', 'state_dict': {'module.<key>': ...}, 'optimizer'}` inside a zip
  (SkyCLIP); the .pt member is extracted once beside the zip.
- `graft_lightning`: a PyTorch Lightning checkpoint whose `state_dict` holds a Hugging Face
  `CLIPVisionModelWithProjection` under `satellite_image_backbone.` and the patch-token
  projector `projector.0` (LayerNorm) / `projector.1` (Linear, no bias). Converted here to
  open_clip's `visual.*` keys plus `visual.patch_head.*` (no transformers import needed).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

from encoder.identity import EncoderError
from encoder.presets import GEORSCLIP, GRAFT_LIGHTNING, OPEN_CLIP, TRAINING_ZIP
from encoder.weightfile import check_weights_file, load_error

StateDict = dict[str, torch.Tensor]


def load_file(path: Path) -> dict:
    """Sniff, then load tensors only (memory-mapped where the format allows)."""
    fmt = check_weights_file(path)
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file as load_safetensors

            return load_safetensors(str(path))
        return torch.load(path, map_location="cpu", weights_only=True,
                          mmap=fmt == "torch-zip")
    except Exception as e:  # pickle, zip and safetensors errors have many types
        raise EncoderError(load_error(path, "this preset", e)) from None


def read_layout(path: Path, layout: str) -> StateDict:
    """The file at `path`, in `layout`, as open_clip state-dict keys."""
    if layout == TRAINING_ZIP:
        path = extract_checkpoint(path)
    obj = load_file(path)
    if layout == OPEN_CLIP:
        return _tensors(path, obj)
    if layout == GEORSCLIP:
        return georsclip_keys(_tensors(path, _unwrap(obj)))
    if layout == TRAINING_ZIP:
        return strip_module(_tensors(path, _unwrap(obj, required=True, path=path)))
    if layout == GRAFT_LIGHTNING:
        return graft_keys(_tensors(path, _unwrap(obj, required=True, path=path)), path)
    raise EncoderError(f"encoder: unknown weights layout {layout!r}")


def _unwrap(obj, required: bool = False, path: Path | None = None):
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if required:
        raise EncoderError(f"{path}: not a training checkpoint (no 'state_dict' in it)")
    return obj


def _tensors(path: Path, obj) -> StateDict:
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise EncoderError(f"{path}: not a state dict (expected names mapped to tensors)")
    return obj


def strip_module(sd: StateDict) -> StateDict:
    """DistributedDataParallel's `module.` prefix off every key."""
    return {k.removeprefix("module."): v for k, v in sd.items()}


def georsclip_keys(sd: StateDict) -> StateDict:
    """RS5M training keys -> open_clip keys (text_backbone.X -> X, image_backbone.X ->
    visual.X); keys already in open_clip form pass through."""
    out = {}
    for k, v in strip_module(sd).items():
        if k.startswith("text_backbone."):
            k = k.removeprefix("text_backbone.")
        elif k.startswith("image_backbone."):
            k = "visual." + k.removeprefix("image_backbone.")
        out[k] = v
    return out


def extract_checkpoint(archive: Path) -> Path:
    """The .pt inside a training-checkpoint zip, extracted once into `<zip>.d/` (atomic:
    a `.part` file renamed). One .pt member, else the highest `epoch_N.pt`."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = [i for i in z.infolist() if i.filename.endswith((".pt", ".pth"))
                       and not i.is_dir()]
            if not members:
                raise EncoderError(f"{archive}: no .pt checkpoint inside the zip")
            member = max(members, key=lambda i: (_epoch(i.filename), i.filename))
            out = archive.with_name(archive.name + ".d") / Path(member.filename).name
            if out.is_file() and out.stat().st_size == member.file_size:
                return out
            out.parent.mkdir(parents=True, exist_ok=True)
            part = out.with_name(out.name + ".part")
            with z.open(member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            part.replace(out)
            return out
    except zipfile.BadZipFile:
        raise EncoderError(f"{archive}: truncated or damaged zip (download it again)") from None
    except OSError as e:
        raise EncoderError(f"{archive}: cannot extract the checkpoint ({e.strerror})") from None


def _epoch(name: str) -> int:
    m = re.search(r"epoch_(\d+)\.pth?$", name)
    return int(m.group(1)) if m else -1


# --- GRAFT: Hugging Face CLIP vision tower -> open_clip VisionTransformer -----------------
_HF_BLOCK = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
GRAFT_PREFIX = "satellite_image_backbone."


def graft_keys(sd: StateDict, path: Path) -> StateDict:
    """GRAFT's Lightning state dict -> open_clip `visual.*` keys + `visual.patch_head.*` (the
    projector GRAFT applies to patch tokens). The text tower is not in the file."""
    if not any(k.startswith(GRAFT_PREFIX) for k in sd) or "projector.1.weight" not in sd:
        raise EncoderError(f"{path}: not a GRAFT checkpoint (expected "
                           f"{GRAFT_PREFIX}vision_model.* and projector.* keys)")
    hf = {k.removeprefix(GRAFT_PREFIX): v for k, v in sd.items() if k.startswith(GRAFT_PREFIX)}
    out = hf_clip_vision_to_open_clip(hf, path)
    out["visual.patch_head.0.weight"] = sd["projector.0.weight"]
    out["visual.patch_head.0.bias"] = sd["projector.0.bias"]
    out["visual.patch_head.1.weight"] = sd["projector.1.weight"]
    return out


def hf_clip_vision_to_open_clip(hf: StateDict, path: Path) -> StateDict:
    """A transformers `CLIPVisionModelWithProjection` state dict -> open_clip `visual.*`.
    q/k/v projections are stacked into one in_proj; the projection is transposed."""
    hf = dict(hf)
    hf.pop("vision_model.embeddings.position_ids", None)  # a buffer in old transformers
    out: StateDict = {}

    def take(src: str, dst: str, fn=None) -> None:
        try:
            t = hf.pop(src)
        except KeyError:
            raise EncoderError(f"{path}: not a Hugging Face CLIP vision tower (no "
                               f"{GRAFT_PREFIX}{src})") from None
        out[dst] = fn(t) if fn else t

    emb = "vision_model.embeddings."
    take(emb + "class_embedding", "visual.class_embedding")
    take(emb + "patch_embedding.weight", "visual.conv1.weight")
    take(emb + "position_embedding.weight", "visual.positional_embedding")
    for p in ("weight", "bias"):
        take(f"vision_model.pre_layrnorm.{p}", f"visual.ln_pre.{p}")
        take(f"vision_model.post_layernorm.{p}", f"visual.ln_post.{p}")
    take("visual_projection.weight", "visual.proj", lambda w: w.t().contiguous())
    layers = sorted({int(m.group(1)) for k in hf
                     if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))})
    for i in layers:
        src, dst = f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            qkv = [hf.pop(f"{src}self_attn.{n}_proj.{p}", None) for n in "qkv"]
            if any(t is None for t in qkv):
                raise EncoderError(f"{path}: layer {i} lacks q/k/v projections")
            out[f"{dst}attn.in_proj_{p}"] = torch.cat(qkv, dim=0)
            for a, b in _HF_BLOCK.items():
                take(f"{src}{a}.{p}", f"{dst}{b}.{p}")
    if hf:
        raise EncoderError(f"{path}: {len(hf)} key(s) of the vision tower satfind does not "
                           f"map, e.g. {GRAFT_PREFIX}{next(iter(hf))}")
    return out
