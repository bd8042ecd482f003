"""Encoder evaluation: zero-shot classification of an image folder (one class per
sub-folder, EuroSAT layout; prompt-ensembled class names; accuracy, per-class accuracy and a
confusion matrix), and text <-> image retrieval recall@k from a captions file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from encoder.images import square_tile
from encoder.prompts import PromptSet, ensemble_text_embedding, get_prompt_set

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


class EvalError(ValueError):
    """Bad evaluation input (one-line message)."""


def class_prompt_name(folder: str) -> str:
    """'HerbaceousVegetation' -> 'herbaceous vegetation', 'sea_lake' -> 'sea lake'."""
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", folder).replace("_", " ").replace("-", " ")
    return " ".join(words.lower().split())


def image_folder(root: Path, limit_per_class: int = 0) -> tuple[list[str], list[Path], np.ndarray]:
    if not root.is_dir():
        raise EvalError(f"{root}: not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for ci, c in enumerate(classes):
        files = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit_per_class:
            files = files[:limit_per_class]
        paths += files
        labels += [ci] * len(files)
    if len(classes) < 2 or not paths:
        raise EvalError(f"{root}: expected one sub-folder of images per class (at least 2)")
    return classes, paths, np.asarray(labels)


def load_tile(path: Path, size: int) -> np.ndarray:
    """Image -> uint8 [3, size, size]: shortest side resized, centre crop (CLIP-style)."""
    with Image.open(path) as im:
        return square_tile(im, size)


@dataclass
class ZeroShotResult:
    classes: list[str]
    prompts: list[str]
    confusion: np.ndarray  # [true, predicted]
    prompt_set: str = ""
    templates: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / self.confusion.sum())

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)

    def per_class(self) -> dict[str, float]:
        rows = self.confusion.sum(axis=1)
        return {c: float(self.confusion[i, i] / rows[i]) if rows[i] else float("nan")
                for i, c in enumerate(self.classes)}

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "zeroshot.json").write_text(json.dumps({
            "accuracy": self.accuracy, "chance": self.chance, "n": int(self.confusion.sum()),
            "prompt_set": self.prompt_set, "templates": list(self.templates),
            "classes": self.classes,
            "class_prompts": self.prompts, "per_class_accuracy": self.per_class(),
            "confusion": self.confusion.tolist()}, indent=1))
        lines = ["true\\predicted," + ",".join(self.classes)]
        lines += [f"{c}," + ",".join(str(int(v)) for v in row)
                  for c, row in zip(self.classes, self.confusion, strict=True)]
        (out / "confusion.csv").write_text("\n".join(lines) + "\n")


def zero_shot(encoder, root: Path, limit_per_class: int = 0, batch_size: int = 64,
              progress: bool = False, prompts: PromptSet | None = None, gsd_m: float | None = None,
              sensor: str = "") -> ZeroShotResult:
    """Accuracy of the class (prompt-ensembled folder name) whose text embedding is nearest.
    `prompts`: the template set (default: the encoder's); `gsd_m` / `sensor` fill an aware
    set's {gsd} / {sensor}."""
    classes, paths, labels = image_folder(root, limit_per_class)
    names = [class_prompt_name(c) for c in classes]
    pset = prompts or getattr(encoder, "prompts", None) or get_prompt_set()
    templates = pset.for_imagery(gsd_m, sensor)
    text = np.stack([ensemble_text_embedding(encoder, n, templates) for n in names])
    preds = []
    from tqdm import tqdm

    for s in tqdm(range(0, len(paths), batch_size), disable=not progress, unit="batch",
                  desc="zero-shot"):
        batch = np.stack([load_tile(p, encoder.image_size) for p in paths[s:s + batch_size]])
        preds.append((encoder.encode_images(batch) @ text.T).argmax(axis=1))
    pred = np.concatenate(preds)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    return ZeroShotResult(classes, names, confusion, pset.name, templates)


RECALL_AT = (1, 5, 10)


def read_captions(path: Path, image_dir: Path) -> tuple[list[Path], list[str], np.ndarray]:
    """`filename<TAB>caption` per line (several lines may name one image; blank lines and
    lines starting with # are skipped) -> (images, captions, image index of each caption)."""
    if not image_dir.is_dir():
        raise EvalError(f"{image_dir}: not a folder")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: cannot read captions ({e})") from None
    images: dict[str, int] = {}
    captions, owner = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, tab, text = line.partition("\t")
        if not tab or not name.strip() or not text.strip():
            raise EvalError(f"{path}: line {n}: expected filename<TAB>caption")
        name = name.strip()
        if name not in images:
            if not (image_dir / name).is_file():
                raise EvalError(f"{path}: line {n}: image {image_dir / name} does not exist")
            images[name] = len(images)
        captions.append(text.strip())
        owner.append(images[name])
    if len(images) < 2:
        raise EvalError(f"{path}: needs captions for at least 2 images")
    return [image_dir / n for n in images], captions, np.asarray(owner)


@dataclass
class RetrievalResult:
    n_images: int
    n_captions: int
    text_to_image: dict[int, float]  # recall@k: the caption's image in the top k images
    image_to_text: dict[int, float]  # recall@k: one of the image's captions in the top k

    def chance(self, k: int) -> float:
        """Expected text-to-image recall@k of a random ranking."""
        return min(1.0, k / self.n_images)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "retrieval.json").write_text(json.dumps({
            "images": self.n_images, "captions": self.n_captions,
            "text_to_image_recall": self.text_to_image,
            "image_to_text_recall": self.image_to_text,
            "text_to_image_chance": {k: self.chance(k) for k in self.text_to_image}},
            indent=1))


def recall_from_similarity(sim: np.ndarray, owner: np.ndarray, ks=RECALL_AT
                           ) -> tuple[dict[int, float], dict[int, float]]:
    """sim [captions, images]. A tie with a wrong item counts against the query, so a
    constant encoder scores zero."""
    c_idx = np.arange(len(owner))
    own = sim[c_idx, owner]
    t2i_rank = (sim >= own[:, None]).sum(axis=1) - 1  # other images scoring at least as high
    mine = np.zeros(sim.shape, dtype=bool)
    mine[c_idx, owner] = True
    best_own = np.where(mine, sim, -np.inf).max(axis=0)  # per image
    i2t_rank = ((sim >= best_own[None, :]) & ~mine).sum(axis=0)
    return ({k: float((t2i_rank < k).mean()) for k in ks},
            {k: float((i2t_rank < k).mean()) for k in ks})


def retrieval(encoder, image_dir: Path, captions_file: Path, batch_size: int = 64,
              progress: bool = False) -> RetrievalResult:
    """Text-to-image and image-to-text recall@1/5/10 (captions embedded as written)."""
    from tqdm import tqdm

    paths, captions, owner = read_captions(captions_file, image_dir)
    img = np.concatenate([
        encoder.encode_images(np.stack([load_tile(p, encoder.image_size)
                                        for p in paths[s:s + batch_size]]))
        for s in tqdm(range(0, len(paths), batch_size), disable=not progress, unit="batch",
                      desc="images")])
    txt = np.concatenate([encoder.encode_text(captions[s:s + batch_size])
                          for s in range(0, len(captions), batch_size)])
    t2i, i2t = recall_from_similarity(txt @ img.T, owner)
    return RetrievalResult(len(paths), len(captions), t2i, i2t)
