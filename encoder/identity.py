"""Which encoder, and which embedding space: torch-free, so a config or an index can name an
encoder without loading a deep-learning stack."""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, asdict, dataclass, field

# The weights of an open_clip model that names none (`model = "ViT-L-14"` alone).
DEFAULT_PRETRAINED = "openai"
# Number types an encoder's weights can run in (encoder.precision).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The encoder of a spec that names neither a preset nor a model: what index_config.toml and
# the README document (encoder.presets has it).
DEFAULT_PRESET = "openai-vit-b-16"


class EncoderError(ValueError):
    """The encoder cannot be built from the given settings (one-line message)."""


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise EncoderError(f"encoder.precision must be one of {', '.join(PRECISIONS)}, got "
                           f"{precision!r}")


@dataclass(frozen=True)
class EncoderSpec:
    """How to build an encoder: a named preset (encoder.presets), or an open_clip model name
    (or model-config JSON path) + weights."""

    # A published encoder by name; its weights come from its file (downloaded into the
    # weights folder, or `checkpoint`) or are random (`random_weights`).
    preset: str = ""
    model: str = ""
    pretrained: str = ""
    checkpoint: str = ""
    random_weights: bool = False
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]"})
    # "auto" (CUDA when visible, else CPU), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    # Text prompt templates (encoder.prompts): "" = the preset's set.
    prompt_set: str = ""
    # The sensor named by resolution/sensor-aware prompt sets ("" = "satellite").
    prompt_sensor: str = ""
    # The weights' number type (encoder.precision): "auto" = bf16 on CUDA (fp16 where the
    # GPU has no bf16), float32 on the CPU; or "fp32", "bf16", "fp16" anywhere. Not part of
    # the identity: the fast path's vectors agree with fp32's (tests/test_precision.py).
    precision: str = "auto"
    # torch.compile the image tower (CUDA: compiles once per batch shape, tens of seconds at
    # start; bench/encoder.py says whether a job earns it back).
    compile: bool = False
    # On CUDA: each image batch shape that comes back runs as a CUDA graph (encoder.graphs),
    # one launch instead of ~150 and the host work around them; no effect on the CPU or
    # with `compile`.
    cuda_graphs: bool = False

    def resolved(self) -> EncoderSpec:
        """This spec with the documented defaults filled in: no preset and no model = the
        `openai-vit-b-16` preset; an open_clip model with no weights = OpenAI's (`openai`)."""
        check_precision(self.precision)
        if self.preset and self.model:
            raise EncoderError("encoder: set preset or model, not both (a preset names its "
                               "own architecture)")
        if self.preset and self.pretrained:
            raise EncoderError("encoder: pretrained is an open_clip tag for `model`; a preset "
                               "names its own weights (or give encoder.checkpoint)")
        if not self.preset and not self.model:
            return dataclasses.replace(self, preset=DEFAULT_PRESET)
        if self.model and not (self.checkpoint or self.pretrained or self.random_weights):
            return dataclasses.replace(self, pretrained=DEFAULT_PRETRAINED)
        return self


@dataclass(frozen=True)
class EncoderIdentity:
    """What makes two encoders produce the same embedding space."""

    architecture: str
    config_sha256: str
    weights_sha256: str
    embed_dim: int
    image_size: int
    # The named preset it was built as ("" = none): two presets never share a space, even
    # with equal random weights in tests.
    preset: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderIdentity:
        fields = cls.__dataclass_fields__
        return cls(**{k: d[k] for k in fields if k in d or fields[k].default is MISSING})

    def short(self) -> str:
        name = f"{self.preset} ({self.architecture})" if self.preset else self.architecture
        return f"{name}@{self.weights_sha256[:12]}"
