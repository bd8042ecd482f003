"""Named published encoders: which open_clip architecture, which file from where, in which
layout, with which activation, normalisation, input size and training resolution. Torch-free,
so a config can name a preset (and take its ground sample distance) without loading a model.

Every entry was checked against its authors' published code where that was possible from
here; what could not be checked is said in the entry's `unverified` text (and the README).
No weights were opened on this machine (it has no model hub): the layouts are exercised by
tests on random-weight files written in each layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from encoder.identity import EncoderError

# open_clip's (= OpenAI CLIP's) normalisation; every preset below was trained with it.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# File layouts (encoder.layouts reads each into open_clip's state-dict keys):
OPEN_CLIP = "open_clip"            # a plain open_clip state dict
GEORSCLIP = "georsclip"            # open_clip keys, or RS5M training keys renamed
TRAINING_ZIP = "open_clip_training_zip"  # a zip holding {'state_dict': {'module.<key>'}}
GRAFT_LIGHTNING = "graft_lightning"  # Lightning ckpt: HF CLIP vision + patch projector
LAYOUTS = (OPEN_CLIP, GEORSCLIP, TRAINING_ZIP, GRAFT_LIGHTNING)
ACTIVATIONS = ("quick_gelu", "gelu")

DEFAULT_PRESET = "openai-vit-b-16"


@dataclass(frozen=True)
class Weights:
    """Where a preset's file comes from: a Hugging Face repo + file, or a plain URL."""

    hf_repo: str = ""
    hf_file: str = ""
    url: str = ""
    sha256: str = ""  # checked after a download when known ("" = not published)

    @property
    def file_name(self) -> str:
        """The name the file has in satfind's weights folder."""
        return (self.hf_file or self.url).rsplit("/", 1)[-1]

    @property
    def address(self) -> str:
        """Where a person downloads it from by hand."""
        if self.hf_repo:
            return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.hf_file}"
        return self.url


@dataclass(frozen=True)
class Figure:
    """A zero-shot accuracy the authors published (not measured here)."""

    dataset: str
    top1: float
    source: str


@dataclass(frozen=True)
class Preset:
    name: str
    architecture: str  # open_clip model name
    activation: str  # "quick_gelu" (fine-tuned from OpenAI CLIP) or "gelu"
    layout: str
    weights: Weights | None  # None: the authors publish no file (give encoder.checkpoint)
    gsd_m: float  # ground pixel size of its training imagery: the default tiling.target_gsd_m
    licence: str
    base: str  # what it was trained from
    text_from: str = ""  # another preset whose file supplies the text tower (GRAFT)
    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    prompt_set: str = "satfind-rs-v1"
    figures: tuple[Figure, ...] = ()
    unverified: str = ""


_GEORSCLIP_SRC = "github.com/om-ai-lab/RS5M README lines 97-100"
_SKYCLIP_SRC = "github.com/wangzhecheng/SkyScript README lines 120-128 (mean of 7 sets)"

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        "openai-vit-b-16", "ViT-B-16", "quick_gelu", OPEN_CLIP,
        Weights("timm/vit_base_patch16_clip_224.openai", "open_clip_pytorch_model.bin"),
        gsd_m=10.0, licence="MIT", base="OpenAI CLIP (web images, no remote-sensing tuning)",
        figures=(Figure("EuroSAT", 55.94, "open_clip docs/openclip_results.csv row 71 "
                                          "(CLIP_benchmark, not the CLIP paper)"),),
        unverified="gsd_m is satfind's default (10 m, Sentinel-2 class), not a training "
                   "resolution: CLIP was trained on web photos"),
    Preset(
        "remoteclip-vit-b-32", "ViT-B-32", "quick_gelu", OPEN_CLIP,
        Weights("chendelong/RemoteCLIP", "RemoteCLIP-ViT-B-32.pt"),
        gsd_m=1.0, licence="Apache-2.0", base="OpenAI CLIP ViT-B/32 (via ITRA)",
        unverified="activation: the authors' retrieval.py (lines 49-57) builds the model with "
                   "pretrained='openai', i.e. QuickGELU, while the README's demo builds GELU; "
                   "gsd_m: its caption/detection/segmentation sets (UCM, DOTA, DIOR, Potsdam, "
                   "...) are mostly sub-metre to a few metres, no figure is published; no "
                   "per-dataset zero-shot figures in the README"),
    Preset(
        "remoteclip-vit-l-14", "ViT-L-14", "quick_gelu", OPEN_CLIP,
        Weights("chendelong/RemoteCLIP", "RemoteCLIP-ViT-L-14.pt"),
        gsd_m=1.0, licence="Apache-2.0", base="OpenAI CLIP ViT-L/14 (via ITRA)",
        unverified="activation and gsd_m as for remoteclip-vit-b-32"),
    Preset(
        "georsclip-vit-b-32", "ViT-B-32", "quick_gelu", GEORSCLIP,
        Weights("Zilun/GeoRSCLIP", "ckpt/RS5M_ViT-B-32.pt"),
        gsd_m=1.0, licence="MIT (code) / CC-BY-4.0 (model card)",
        base="OpenAI CLIP ViT-B/32", figures=(
            Figure("EuroSAT", 61.40, _GEORSCLIP_SRC), Figure("RESISC45", 72.74, _GEORSCLIP_SRC),
            Figure("AID", 74.42, _GEORSCLIP_SRC)),
        unverified="gsd_m: RS5M mixes fMoW (sub-metre), MillionAID (0.5-153 m), BigEarthNet "
                   "(10 m) and web images without a GSD; licence: the repository (MIT) and "
                   "the model card (CC-BY-4.0) disagree"),
    Preset(
        "georsclip-vit-l-14", "ViT-L-14", "quick_gelu", GEORSCLIP,
        Weights("Zilun/GeoRSCLIP", "ckpt/RS5M_ViT-L-14.pt"),
        gsd_m=1.0, licence="MIT (code) / CC-BY-4.0 (model card)",
        base="OpenAI CLIP ViT-L/14 (assumed)",
        unverified="the base checkpoint (so the activation) of the L-14 is stated nowhere in "
                   "the authors' code or model card; QuickGELU assumed (OpenAI is the only "
                   "source of the 336 px L-14 they also publish)"),
    Preset(
        "georsclip-vit-h-14", "ViT-H-14", "gelu", GEORSCLIP,
        Weights("Zilun/GeoRSCLIP", "ckpt/RS5M_ViT-H-14.pt"),
        gsd_m=1.0, licence="MIT (code) / CC-BY-4.0 (model card)",
        base="OpenCLIP ViT-H/14 laion2b_s32b_b79k", figures=(
            Figure("EuroSAT", 67.47, _GEORSCLIP_SRC), Figure("RESISC45", 73.83, _GEORSCLIP_SRC),
            Figure("AID", 76.33, _GEORSCLIP_SRC)),
        unverified="gsd_m as for georsclip-vit-b-32"),
    Preset(
        "skyclip-vit-b-32", "ViT-B-32", "gelu", TRAINING_ZIP,
        Weights(url="https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/"
                    "SkyCLIP_ViT_B32_top50pct.zip"),
        gsd_m=1.0, licence="MIT", base="OpenCLIP ViT-B/32 laion2b_e16",
        figures=(Figure("7-set mean", 53.02, _SKYCLIP_SRC),),
        unverified="the member inside the zip (<name>/epoch_20.pt) is known from third-party "
                   "code only (satfind takes the one .pt, else the highest epoch); the GELU "
                   "base (laion2b_e16) is implied by the README's comparison, not stated; "
                   "gsd_m: SkyScript spans 0.1 m (SWISSIMAGE) to 30 m (Landsat), no median"),
    Preset(
        "skyclip-vit-l-14", "ViT-L-14", "quick_gelu", TRAINING_ZIP,
        Weights(url="https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/"
                    "SkyCLIP_ViT_L14_top30pct.zip"),
        gsd_m=1.0, licence="MIT", base="OpenAI CLIP ViT-L/14 (--force-quick-gelu)",
        figures=(Figure("7-set mean", 59.91, _SKYCLIP_SRC),),
        unverified="the zip member and gsd_m as for skyclip-vit-b-32"),
    Preset(
        "graft-naip", "ViT-B-16", "quick_gelu", GRAFT_LIGHTNING, None,
        gsd_m=1.0, licence="unknown", base="OpenAI CLIP ViT-B/16 (HF clip-vit-base-patch16)",
        text_from="openai-vit-b-16",
        unverified="no weights file from the authors was found: give encoder.checkpoint = a "
                   "GRAFT Lightning checkpoint; its layout is known from third-party code"),
    Preset(
        "graft-sentinel2", "ViT-B-16", "quick_gelu", GRAFT_LIGHTNING, None,
        gsd_m=10.0, licence="unknown", base="OpenAI CLIP ViT-B/16 (HF clip-vit-base-patch16)",
        text_from="openai-vit-b-16",
        unverified="as for graft-naip"),
)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise EncoderError(f"encoder.preset: unknown preset {name!r} (known: "
                           f"{', '.join(PRESETS)})") from None
