"""`SatelliteEncoder`: an open_clip model that embeds uint8 tiles and text into one space.

Weights come from exactly one of: a local checkpoint file, an open_clip `pretrained` tag
(downloads, so only on a connected machine), or seeded random initialisation (tests and
benchmarks; must be asked for explicitly). Every index records the encoder's identity
(architecture + weights hash) so that a search never mixes embedding spaces.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from encoder.checkpoints import check_sidecar, state_dict_sha256  # noqa: E402
from encoder.identity import EncoderError, EncoderIdentity, EncoderSpec  # noqa: E402
from encoder.tokens import image_tokens  # noqa: E402
from encoder.weightfile import check_weights_file, load_error  # noqa: E402

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)


def _resolve_model_name(model: str) -> str:
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


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise EncoderError(f"encoder.device: {device!r} is not usable: give auto, cpu, cuda "
                           "or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError("encoder.device: 'cuda' requested but no CUDA device is visible")
    return dev


class SatelliteEncoder:
    """Embeds uint8 image tiles and text into one L2-normalised space."""

    def __init__(self, spec: EncoderSpec):
        spec = spec.resolved()
        self.spec = spec
        name = _resolve_model_name(spec.model)
        sources = [bool(spec.checkpoint), bool(spec.pretrained), spec.random_weights]
        if sum(sources) != 1:
            raise EncoderError(
                "encoder: set exactly one of checkpoint (local file), pretrained (open_clip tag, "
                "needs a connected machine) or random_weights = true (tests only)"
            )
        pretrained: str | None = None
        if spec.checkpoint:
            if not Path(spec.checkpoint).is_file():
                raise EncoderError(f"encoder.checkpoint: {spec.checkpoint} does not exist")
            check_weights_file(spec.checkpoint)  # TorchScript, HTML, truncated: one line
            pretrained = spec.checkpoint
        elif spec.pretrained:
            pretrained = spec.pretrained
        torch.manual_seed(spec.seed)
        try:
            with _quiet_open_clip():
                model = open_clip.create_model(name, pretrained=pretrained)
        except Exception as e:  # open_clip raises many types for bad/missing weights
            if spec.checkpoint:
                raise EncoderError(f"encoder: {load_error(spec.checkpoint, name, e)}") from None
            what = f"pretrained={spec.pretrained!r}"
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if spec.pretrained and not spec.checkpoint:
                msg = ("download failed (this machine is offline, or the weights are not in "
                       "the local cache): set encoder.checkpoint to a local weights file (or "
                       "encoder.random_weights = true for a trial run)")
            raise EncoderError(f"encoder: cannot load weights {what} for {name}: {msg}") from None
        model.eval()
        # A GRAFT checkpoint names the CLIP it was aligned to; its text tower must be that
        # CLIP's, or text queries would land in another space.
        self.trained_from: dict | None = None
        if spec.checkpoint:
            self.trained_from = check_sidecar(Path(spec.checkpoint), model)
        self.identity = EncoderIdentity(
            architecture=name,
            config_sha256=hashlib.sha256(
                json.dumps(open_clip.get_model_config(name), sort_keys=True).encode()
            ).hexdigest(),
            weights_sha256=state_dict_sha256(model),
            embed_dim=int(open_clip.get_model_config(name)["embed_dim"]),
            image_size=_image_size(model),
        )
        self.device = _pick_device(spec.device)
        self.model = model.to(self.device)
        pcfg = open_clip.get_model_preprocess_cfg(model)
        self._mean = torch.tensor(pcfg["mean"], dtype=torch.float32, device=self.device).view(
            1, 3, 1, 1
        )
        self._std = torch.tensor(pcfg["std"], dtype=torch.float32, device=self.device).view(
            1, 3, 1, 1
        )
        self.tokenizer = open_clip.get_tokenizer(name)

    @property
    def image_size(self) -> int:
        return self.identity.image_size

    @property
    def dim(self) -> int:
        return self.identity.embed_dim

    def autocast(self):
        """Mixed precision on CUDA (bf16 where supported), none on the CPU."""
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def prepare(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 batch [N, 3, H, W] or [N, H, W, 3] -> the model's normalised float input."""
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise EncoderError(
                f"encode_images: expected a uint8 batch [N, 3, H, W] or [N, H, W, 3], "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        if x.shape[1] != 3:
            raise EncoderError(f"encode_images: expected 3 channels, got shape {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True).float().div_(255.0)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 batch -> float32 [N, D], L2-normalised."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = self.prepare(images)
        with self.autocast():
            feats = self.model.encode_image(x)
        return F.normalize(feats.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def similarity_map(self, tile: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Where in one tile a query embedding matches: cosine similarity of each ViT patch
        token (projected into the joint space, as GRAFT's pixel-level loss trains it) with
        `query` [D]. tile: uint8 [3, H, W] or [H, W, 3] -> float32 [grid, grid]."""
        x = self.prepare(np.asarray(tile)[None])
        with self.autocast():
            _, tokens = image_tokens(self.model.visual, x)
        q = torch.as_tensor(np.asarray(query, dtype=np.float32), device=self.device)
        sim = F.normalize(tokens[0].float(), dim=-1) @ F.normalize(q, dim=0)
        return sim.cpu().numpy()

    def text_similarity_map(self, tile: np.ndarray, text: str) -> np.ndarray:
        """similarity_map for a text query (prompt-ensembled like a search)."""
        from encoder.prompts import ensemble_text_embedding

        return self.similarity_map(tile, ensemble_text_embedding(self, text))

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """list of strings -> float32 [N, D], L2-normalised."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self.autocast():
            feats = self.model.encode_text(tokens)
        return F.normalize(feats.float(), dim=-1).cpu().numpy()


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


def _image_size(model: torch.nn.Module) -> int:
    size = getattr(model.visual, "image_size", None)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise EncoderError(f"encoder: non-square input size {size} is not supported")
        size = size[0]
    if not size:
        raise EncoderError("encoder: the model does not declare its input image size")
    return int(size)
