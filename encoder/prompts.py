"""Prompt templates for text queries on satellite tiles, versioned so evaluations and
cached text embeddings can name the set they used."""

from __future__ import annotations

import numpy as np

PROMPT_SET_VERSION = "satfind-rs-v1"
# Remote-sensing templates in the style of CLIP's prompt ensembles (Radford et al. 2021)
# and the RS zero-shot literature: viewpoint words that tell CLIP it is looking down.
TEMPLATES: tuple[str, ...] = (
    "a satellite image of {}.",
    "an aerial photo of {}.",
    "a satellite photo of {}.",
    "an overhead view of {}.",
    "a remote sensing image of {}.",
    "a top-down view of {}.",
)


def prompts_for(query: str, templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    q = " ".join(query.strip().split())
    return [t.format(q) for t in templates]


def ensemble_text_embedding(encoder, query: str,
                            templates: tuple[str, ...] = TEMPLATES) -> np.ndarray:
    """Mean of the L2-normalised template embeddings, normalised again: float32 [D]."""
    emb = encoder.encode_text(prompts_for(query, templates))
    v = emb.mean(axis=0)
    return (v / np.linalg.norm(v)).astype(np.float32)
