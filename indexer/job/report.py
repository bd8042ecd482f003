"""What one indexing run did, and its summary line."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from indexer.errors import InputError


@dataclass
class JobReport:
    rasters_indexed: int = 0  # newly indexed (or completed) in this run
    rasters_unchanged: int = 0  # already fully indexed: nothing to do
    rasters_replaced: int = 0  # same path, new content: old tiles removed
    problems: list[InputError] = field(default_factory=list)
    tiles_written: int = 0
    tiles_nodata: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    # Seconds per stage (main thread: waiting for tiles, encoding, waiting for the writer;
    # the writer thread; the reader processes together), for benchmarks and the debug log.
    stages: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def tiles_per_s(self) -> float:
        return (self.tiles_written + self.tiles_nodata) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        skipped = len(self.problems)
        why = " (reasons above)" if skipped else ""
        parts = [
            f"rasters: {self.rasters_indexed} indexed, {self.rasters_unchanged} already indexed, "
            f"{skipped} skipped{why}",
            f"tiles: {self.tiles_written} written, {self.tiles_nodata} skipped as nodata",
            f"{self.tiles_per_s:.1f} tiles/s in {self.seconds:.1f} s",
        ]
        if self.rasters_replaced:
            parts.insert(1, f"{self.rasters_replaced} replaced")
        head = "interrupted, committed so far: " if self.interrupted else ""
        return head + " | ".join(parts)

    def stage_line(self) -> str:
        """Where the time went, e.g. for the debug log."""
        return "stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items())
