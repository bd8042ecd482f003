"""Prompt templates for text queries on satellite tiles: named, versioned sets (an evaluation
or a cached text embedding names the set it used), chosen per preset or in config.

Resolution- and sensor-aware sets put the tile's ground pixel size and the sensor into the
text ("a 10 m Sentinel-2 image of {}"): CLIP's accuracy on remote sensing depends on the
resolution it is shown (IGARSS 2023), and saying it is one way to tell the text tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encoder.identity import EncoderError

DEFAULT_PROMPT_SET = "satfind-rs-v1"


@dataclass(frozen=True)
class PromptSet:
    name: str  # versioned: a changed template list is a new name
    templates: tuple[str, ...]  # "{}" is the query; "{gsd}" / "{sensor}" in aware sets
    about: str = ""

    @property
    def aware(self) -> bool:
        """Whether it names the ground pixel size or the sensor."""
        return any("{gsd}" in t or "{sensor}" in t for t in self.templates)

    def for_imagery(self, gsd_m: float | None = None, sensor: str = "") -> tuple[str, ...]:
        """The templates with `{gsd}` and `{sensor}` filled ("10 m", "Sentinel-2"); without
        a GSD the words that carry it are dropped."""
        if not self.aware:
            return self.templates
        gsd = f"{gsd_m:g} m" if gsd_m else ""
        out = []
        for t in self.templates:
            t = t.replace("{sensor}", " ".join(sensor.split()) or "satellite")
            t = t.replace("{gsd}", gsd)
            out.append(" ".join(t.replace(" ,", ",").split()).replace("{ }", "{}"))
        return tuple(out)


PROMPT_SETS: dict[str, PromptSet] = {s.name: s for s in (
    # Viewpoint words that tell CLIP it is looking down, in the style of CLIP's prompt
    # ensembles (Radford et al. 2021) and the remote-sensing zero-shot literature.
    PromptSet("satfind-rs-v1", (
        "a satellite image of {}.",
        "an aerial photo of {}.",
        "a satellite photo of {}.",
        "an overhead view of {}.",
        "a remote sensing image of {}.",
        "a top-down view of {}.",
    ), "satfind's default: six overhead-view templates"),
    # CLIP's own EuroSAT templates (openai/CLIP, notebooks/Prompt_Engineering_for_ImageNet
    # and data/prompts.md).
    PromptSet("clip-eurosat-v1", (
        "a centered satellite photo of {}.",
        "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ), "the templates the CLIP paper used for EuroSAT"),
    PromptSet("plain-v1", ("{}",), "the query text alone"),
    PromptSet("sensor-gsd-v1", (
        "a {gsd} {sensor} image of {}.",
        "a {sensor} image of {} at {gsd} resolution.",
        "an overhead {gsd} view of {}.",
        "a {gsd} resolution remote sensing image of {}.",
    ), "resolution- and sensor-aware: the tile GSD and the sensor in the text"),
)}


def get_prompt_set(name: str = "") -> PromptSet:
    try:
        return PROMPT_SETS[name or DEFAULT_PROMPT_SET]
    except KeyError:
        raise EncoderError(f"encoder.prompt_set: unknown prompt set {name!r} (known: "
                           f"{', '.join(PROMPT_SETS)})") from None


# The default set's templates, for callers that pass templates explicitly.
TEMPLATES: tuple[str, ...] = PROMPT_SETS[DEFAULT_PROMPT_SET].templates


def prompts_for(query: str, templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    q = " ".join(query.strip().split())
    return [t.replace("{}", q) for t in templates]


def ensemble_text_embedding(encoder, query: str,
                            templates: tuple[str, ...] | None = None) -> np.ndarray:
    """Mean of the L2-normalised template embeddings (one batched forward), normalised
    again: float32 [D]. `templates` default: the encoder's prompt set, unfilled."""
    if templates is None:
        templates = getattr(encoder, "prompts", PROMPT_SETS[DEFAULT_PROMPT_SET]).for_imagery()
    emb = encoder.encode_text(prompts_for(query, templates))
    v = emb.mean(axis=0)
    return (v / np.linalg.norm(v)).astype(np.float32)
