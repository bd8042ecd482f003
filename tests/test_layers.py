"""The layers of DESIGN.md, checked on the source: every project import points down.

One refinement of DESIGN.md: GRAFT *training* reads satellite rasters, and it reads them
with the indexer's archive readers (discovery, raster inspection and scaling, web-mercator
reads) so that training patches look exactly like indexed tiles. Those modules
(`indexer.config/dataset/discover/errors/raster/tiling`) import nothing from the encoder but
`encoder.model`; the training modules that use them sit above them. The rest of the encoder
(model, prompts, images, evaluation, losses, teacher cache, pair geometry) imports no other
layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("encoder", "indexer", "search", "ui")
ARCHIVE_READERS = {"indexer.config", "indexer.dataset", "indexer.discover", "indexer.errors",
                   "indexer.raster", "indexer.tiling"}
TRAINING = {"encoder.graft.data", "encoder.graft.settings", "encoder.graft.train",
            "encoder.cli"}


def project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield mod.removesuffix(".__init__"), path


def allowed(mod: str, imported: str) -> bool:
    top, other = mod.split(".")[0], imported.split(".")[0]
    if other == top:
        return not (top == "indexer" and imported.startswith("encoder.graft"))
    if top == "encoder":
        return mod in TRAINING and imported in ARCHIVE_READERS
    if top == "indexer":
        return other == "encoder" and not imported.startswith("encoder.graft")
    if top == "search":
        return other in ("encoder", "indexer") and not imported.startswith("encoder.graft")
    if top == "ui":  # the explorer talks HTTP through the client; the demo sits on top
        return imported == "search.client" or mod == "ui.demo"
    return False


@pytest.mark.parametrize("mod, path", list(modules()), ids=lambda v: str(v).split("/")[-1])
def test_imports_point_down(mod, path):
    bad = sorted(i for i in project_imports(path) if not allowed(mod, i))
    assert not bad, f"{mod} imports {bad} against the layers"


def test_the_checker_catches_a_wrong_import():
    assert not allowed("encoder.model", "indexer.config")
    assert not allowed("encoder.graft.train", "indexer.job")
    assert not allowed("indexer.job", "search.engine")
    assert not allowed("ui.app", "search.engine")
    assert allowed("encoder.graft.data", "indexer.raster")
