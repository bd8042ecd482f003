"""Several encoders (and prompt sets) on the same images: one table, as JSON and Markdown.

A score is shown as "at chance" when chance lies inside its 95 % Wilson interval: with random
weights, or too few images to tell, a number must not read like a result.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Row:
    encoder: str  # preset name (or the config's model)
    identity: str  # architecture@weights hash
    prompt_set: str  # "" for retrieval (captions are embedded as written)
    metric: str  # "accuracy" or "recall@1 text->image"
    score: float
    chance: float
    n: int
    interval: tuple[float, float] = field(default=(0.0, 1.0))
    extra: dict = field(default_factory=dict)

    @property
    def at_chance(self) -> bool:
        lo, hi = self.interval
        return lo <= self.chance <= hi

    @property
    def verdict(self) -> str:
        if self.at_chance:
            return "at chance"
        return "above chance" if self.score > self.chance else "below chance"


def row(encoder: str, identity: str, prompt_set: str, metric: str, score: float, chance: float,
        n: int, **extra) -> Row:
    return Row(encoder, identity, prompt_set, metric, score, chance, n,
               wilson(score * n, n), extra)


@dataclass
class Comparison:
    task: str  # "zeroshot" or "retrieval"
    data: str
    rows: list[Row]

    def markdown(self) -> str:
        extra_keys = sorted({k for r in self.rows for k in r.extra})
        head = ["encoder", "prompts", self.rows[0].metric if self.rows else "score",
                "95 % interval", "chance", "verdict", "n", *extra_keys, "identity"]
        lines = [f"{self.task} on {self.data}", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            lo, hi = r.interval
            cells = [r.encoder, r.prompt_set or "-", f"{r.score:.3f}", f"{lo:.3f}-{hi:.3f}",
                     f"{r.chance:.3f}", r.verdict, str(r.n),
                     *(_fmt(r.extra.get(k)) for k in extra_keys), r.identity]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {"task": self.task, "data": self.data,
                "rows": [{**asdict(r), "interval": list(r.interval), "at_chance": r.at_chance,
                          "verdict": r.verdict} for r in self.rows]}

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.json").write_text(json.dumps(self.to_dict(), indent=1))
        (out / "comparison.md").write_text(self.markdown())


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)
