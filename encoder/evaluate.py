"""Zero-shot classification of an image folder (one class per sub-folder, EuroSAT layout)
with prompt-ensembled class names; accuracy, per-class accuracy and a confusion matrix."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from encoder.images import square_tile
from encoder.prompts import PROMPT_SET_VERSION, ensemble_text_embedding

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
            "prompt_set": PROMPT_SET_VERSION, "classes": self.classes,
            "class_prompts": self.prompts, "per_class_accuracy": self.per_class(),
            "confusion": self.confusion.tolist()}, indent=1))
        lines = ["true\\predicted," + ",".join(self.classes)]
        lines += [f"{c}," + ",".join(str(int(v)) for v in row)
                  for c, row in zip(self.classes, self.confusion, strict=True)]
        (out / "confusion.csv").write_text("\n".join(lines) + "\n")


def zero_shot(encoder, root: Path, limit_per_class: int = 0, batch_size: int = 64,
              progress: bool = False) -> ZeroShotResult:
    classes, paths, labels = image_folder(root, limit_per_class)
    prompts = [class_prompt_name(c) for c in classes]
    text = np.stack([ensemble_text_embedding(encoder, p) for p in prompts])
    preds = []
    from tqdm import tqdm

    for s in tqdm(range(0, len(paths), batch_size), disable=not progress, unit="batch",
                  desc="zero-shot"):
        batch = np.stack([load_tile(p, encoder.image_size) for p in paths[s:s + batch_size]])
        preds.append((encoder.encode_images(batch) @ text.T).argmax(axis=1))
    pred = np.concatenate(preds)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    return ZeroShotResult(classes, prompts, confusion)
