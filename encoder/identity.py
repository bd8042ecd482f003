"""Which encoder, and which embedding space: torch-free, so a config or an index can name an
encoder without loading a deep-learning stack."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

# The weights when a spec names none: what index_config.toml and the README document.
DEFAULT_PRETRAINED = "openai"


class EncoderError(ValueError):
    """The encoder cannot be built from the given settings (one-line message)."""


@dataclass(frozen=True)
class EncoderSpec:
    """How to build an encoder: an open_clip model name (or model-config JSON path) + weights."""

    model: str = "ViT-B-16"
    pretrained: str = ""
    checkpoint: str = ""
    random_weights: bool = False
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]"})
    # "auto" (CUDA when visible, else CPU), "cpu", "cuda" or "cuda:N".
    device: str = "auto"

    def resolved(self) -> EncoderSpec:
        """This spec with the documented default weights (open_clip's `openai` tag) when it
        names none: ViT-B-16 with OpenAI's weights, as index_config.toml says."""
        if self.checkpoint or self.pretrained or self.random_weights:
            return self
        return dataclasses.replace(self, pretrained=DEFAULT_PRETRAINED)


@dataclass(frozen=True)
class EncoderIdentity:
    """What makes two encoders produce the same embedding space."""

    architecture: str
    config_sha256: str
    weights_sha256: str
    embed_dim: int
    image_size: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderIdentity:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def short(self) -> str:
        return f"{self.architecture}@{self.weights_sha256[:12]}"
