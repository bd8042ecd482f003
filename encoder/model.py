"""`SatelliteEncoder`: an open_clip model that embeds uint8 tiles and text into one space.

Built by encoder.build from a named preset (encoder.presets: its file, downloaded or placed
by hand, read in its authors' layout) or an open_clip model with a local checkpoint, a
`pretrained` tag or seeded random weights (tests and benchmarks; asked for explicitly).
Every index records the encoder's identity (preset, architecture, config with activation,
weights hash) so that a search never mixes embedding spaces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from encoder.build import build
from encoder.checkpoints import check_sidecar, state_dict_sha256
from encoder.graphs import GraphedTower
from encoder.identity import EncoderError, EncoderIdentity, EncoderSpec
from encoder.precision import dtype_name, weight_dtype
from encoder.prompts import PromptSet, get_prompt_set
from encoder.tokens import image_tokens


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
        built = build(spec)
        model, name = built.model, built.name
        self.preset = built.preset
        self.model_name = name
        self.quick_gelu = built.quick_gelu
        # A GRAFT checkpoint names the CLIP it was aligned to; its text tower must be that
        # CLIP's, or text queries would land in another space.
        self.trained_from: dict | None = None
        if spec.checkpoint and self.preset is None:
            self.trained_from = check_sidecar(Path(spec.checkpoint), model)
        config = dict(open_clip.get_model_config(name))
        if built.quick_gelu:
            config["quick_gelu"] = True
        if getattr(model.visual, "patch_head", None) is not None:
            config["patch_head"] = "layernorm+linear"
        self.identity = EncoderIdentity(
            architecture=name,
            config_sha256=hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
            weights_sha256=state_dict_sha256(model),
            embed_dim=int(config["embed_dim"]),
            image_size=_image_size(model),
            preset=spec.preset,
        )
        if self.preset is not None and self.preset.image_size != self.identity.image_size:
            raise EncoderError(f"encoder preset {self.preset.name}: {name} takes "
                               f"{self.identity.image_size} px, the preset says "
                               f"{self.preset.image_size}")
        self.device = _pick_device(spec.device)
        self.model = model.to(self.device)
        self.dtype = torch.float32
        self.set_precision(spec.precision)
        if self.preset is not None:
            mean, std = self.preset.mean, self.preset.std
        else:
            pcfg = open_clip.get_model_preprocess_cfg(model)
            mean, std = pcfg["mean"], pcfg["std"]
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add on the uint8 pixels (prepare)
        m64, s64 = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        self._scale = (1.0 / (255.0 * s64)).float().to(self.device).view(1, 3, 1, 1)
        self._shift = (-m64 / s64).float().to(self.device).view(1, 3, 1, 1)
        self._copy_stream = None  # CUDA: host-to-device copies (_to_device), made at first use
        self.tokenizer = open_clip.get_tokenizer(name)
        self.prompts: PromptSet = get_prompt_set(
            spec.prompt_set or (self.preset.prompt_set if self.preset else ""))

    @property
    def image_size(self) -> int:
        return self.identity.image_size

    @property
    def dim(self) -> int:
        return self.identity.embed_dim

    def set_precision(self, precision: str) -> None:
        """Cast the weights to `precision`'s dtype on this device (encoder.precision); the
        identity keeps the float32 weights' hash. A GRAFT student is copied from the float32
        tower first (training.trainer), then its teacher is cast."""
        dtype = weight_dtype(precision, self.device)
        if dtype != self.dtype and getattr(self, "text_int8", False):
            raise EncoderError("encoder: the text tower is int8 (quantize_text); its precision "
                               "is fixed")
        self.model = self.model.to(dtype)
        self.dtype = dtype
        self._encode_image = self.model.encode_image
        if self.spec.compile:
            self._encode_image = torch.compile(self.model.encode_image, dynamic=False)
        # Graphs read the weights where they were when captured: new ones for new weights.
        self.graphs = None
        self.set_cuda_graphs(self.spec.cuda_graphs)

    def set_cuda_graphs(self, on: bool) -> None:
        """Image batches as CUDA graphs (encoder.cuda_graphs) or not; graphs already
        captured are kept while on. No effect on the CPU or with encoder.compile."""
        if not (on and self.device.type == "cuda" and not self.spec.compile):
            self.graphs = None
        elif self.graphs is None:
            self.graphs = GraphedTower(self._vectors)

    def _vectors(self, x: torch.Tensor) -> torch.Tensor:
        """The prepared batch -> L2-normalised float32 vectors, on its device."""
        return F.normalize(self._encode_image(x).float(), dim=-1)

    @property
    def precision(self) -> str:
        """"fp32", "bf16" or "fp16": what the weights run in."""
        return dtype_name(self.dtype)

    def autocast(self):
        """Mixed precision on CUDA (bf16 where supported), none on the CPU: for float32
        modules beside this encoder (a GRAFT student). The encoder's own towers run in their
        weights' dtype (`precision`) without it."""
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def prepare(self, images: np.ndarray | torch.Tensor,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 batch [N, 3, H, W] or [N, H, W, 3] -> the model's normalised input, in
        `dtype` on the encoder's device (resized there when not the model's size). At the
        model's size one pass: the uint8 pixels times 1 / (255 std) plus -mean / std,
        computed in float32 and written in `dtype`."""
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
        x = self._to_device(x)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x.float().div_(255.0), size=(s, s), mode="bilinear",
                              antialias=True, align_corners=False)
            return ((x - self._mean) / self._std).to(dtype)
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
        return torch.addcmul(self._shift, x, self._scale, out=out)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Host pixels onto a CUDA device through a copy stream of their own, so that the
        copy of one batch overlaps the encoding of the one before (encode_images_later);
        elsewhere a plain copy."""
        if self.device.type != "cuda" or x.device.type == "cuda":
            return x.to(self.device, non_blocking=True)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            y = x.to(self.device, non_blocking=True)
        compute.wait_stream(self._copy_stream)
        y.record_stream(compute)  # its memory is not reused while `compute` still reads it
        return y

    def encode_images(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 batch -> float32 [N, D], L2-normalised."""
        return self.encode_images_later(images)()

    @torch.inference_mode()
    def encode_images_later(self, images: np.ndarray | torch.Tensor
                            ) -> Callable[[], np.ndarray]:
        """Start encoding a uint8 batch; returns a function that waits for its vectors (as
        encode_images gives them). On CUDA the work is queued on the GPU and this returns at
        once: a caller that starts batch i+1 before it waits for batch i keeps the GPU busy
        while it hands batch i on. Pixels in pageable memory are copied before this returns;
        page-locked ones may still be on their way (torch's pinned allocator keeps them until
        the copy is done: drop them, but do not write into them). On the CPU the work is
        done here."""
        if len(images) == 0:
            empty = np.zeros((0, self.dim), dtype=np.float32)
            return lambda: empty
        x = self.prepare(images, self.dtype)
        if self.device.type != "cuda":
            out = self._vectors(x).cpu().numpy()
            return lambda: out
        host = torch.empty((len(x), self.dim), dtype=torch.float32, pin_memory=True)
        if self.graphs is None:
            host.copy_(self._vectors(x), non_blocking=True)
        else:
            with self.graphs.lock:  # a graph's output is its next replay's: copied first
                host.copy_(self.graphs(x), non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def vectors() -> np.ndarray:
            done.synchronize()
            return host.numpy()

        return vectors

    @torch.inference_mode()
    def similarity_map(self, tile: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Where in one tile a query embedding matches: cosine similarity of each ViT patch
        token (projected into the joint space, as GRAFT's pixel-level loss trains it) with
        `query` [D]. tile: uint8 [3, H, W] or [H, W, 3] -> float32 [grid, grid]."""
        x = self.prepare(np.asarray(tile)[None], self.dtype)
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
        feats = self.model.encode_text(tokens)
        return F.normalize(feats.float(), dim=-1).cpu().numpy()

    def quantize_text(self) -> bool:
        """Run the text transformer with dynamic int8 Linear layers (CPU only; for serving:
        1.7x faster per query on 2 cores, cosine >= 0.999 to fp32 on random ViT-B-16 weights,
        bench/text.py). The identity keeps the fp32 weights' hash. False where it does not
        apply (CUDA, or already done)."""
        if (self.device.type != "cpu" or self.dtype != torch.float32
                or getattr(self, "text_int8", False)):
            return False
        import copy
        import warnings

        with warnings.catch_warnings():  # torch.ao's deprecation notices, on every server start
            warnings.simplefilter("ignore")
            text = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(self.model.transformer), {torch.nn.Linear}, dtype=torch.qint8)
        # open_clip asks the first MLP weight for its dtype; a quantised Linear's weight is a
        # method, so the tower says float32 itself.
        text.get_cast_dtype = lambda: torch.float32
        self.model.transformer = text
        self.text_int8 = True
        return True


def _image_size(model: torch.nn.Module) -> int:
    size = getattr(model.visual, "image_size", None)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise EncoderError(f"encoder: non-square input size {size} is not supported")
        size = size[0]
    if not size:
        raise EncoderError("encoder: the model does not declare its input image size")
    return int(size)
