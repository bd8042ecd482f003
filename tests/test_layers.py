"""DESIGN.md's package rules, checked on the source with no exceptions: every project import
points down, FAISS is called from one module, the store's internals stay inside it, errors
carry no HTTP status, and opening an index or loading a config loads no deep-learning stack."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("encoder", "indexer", "training", "search", "ui")

# What each package may import of the project (besides itself).
MAY_IMPORT = {
    "encoder": set(),
    "indexer": {"encoder"},
    "training": {"indexer", "encoder"},
    "search": {"indexer", "encoder"},
    "ui": set(),  # and search.client (HTTP only), below
}
# Inside the indexer: the archive and the store are independent; the job uses both.
INDEXER_PARTS = {
    "indexer.rasters": {"indexer.rasters", "indexer.config", "indexer.configfile",
                        "indexer.errors", "indexer.logs"},
    "indexer.store": {"indexer.store", "indexer.config", "indexer.configfile", "indexer.errors",
                      "indexer.logs", "indexer.critical"},
    "indexer.configfile": set(),
    "indexer.config": {"indexer.configfile", "indexer.errors"},
    "indexer.errors": set(),
    "indexer.logs": set(),
    "indexer.critical": set(),
}
# The store's public modules; the rest (layout, manifest, vector files, the vector-index seam)
# are its internals: nothing outside indexer.store may import them.
STORE_PUBLIC = {"indexer.store.writer", "indexer.store.snapshot", "indexer.store.tiles"}
# Modules that must not import torch (checked in a subprocess below as well).
TORCH_FREE = ("indexer.store", "indexer.config", "indexer.configfile", "encoder.identity")
ONLY_FAISS_MODULE = "indexer.store.vector_index"


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import mod`
    return found


def project_modules() -> set[str]:
    return {name for name, _ in modules()} | {name for name, p in modules()
                                              if p.name == "__init__.py"}


def modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield mod.removesuffix(".__init__"), path


def _within(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def violations(mod: str, imported: set[str], known: set[str]) -> list[str]:
    """Every rule `mod` breaks by importing `imported` (names that are project modules, or
    third-party top-level names)."""
    bad = []
    top = mod.split(".")[0]
    for imp in sorted(imported):
        other = imp.split(".")[0]
        if other == "faiss" and mod != ONLY_FAISS_MODULE:
            bad.append(f"{imp} (only {ONLY_FAISS_MODULE} calls FAISS)")
        if other == "torch" and any(_within(mod, m) for m in TORCH_FREE):
            bad.append(f"{imp} (opening an index / reading a config loads no torch)")
        if other == "fastapi" and not _within(mod, "search.http"):
            bad.append(f"{imp} (HTTP lives in search.http)")
        if other not in PACKAGES or imp not in known:
            continue
        if other != top:
            ok = other in MAY_IMPORT[top] or (top == "ui" and imp == "search.client")
            if not ok:
                bad.append(f"{imp} ({top} may import {sorted(MAY_IMPORT[top]) or 'nothing'})")
                continue
        if _within(imp, "indexer.store") and not _within(mod, "indexer.store") and not any(
                _within(imp, pub) for pub in STORE_PUBLIC) and imp != "indexer.store":
            bad.append(f"{imp} (store internals: use {sorted(STORE_PUBLIC)})")
        if top == "indexer" and other == "indexer":
            part = next((p for p in INDEXER_PARTS if _within(mod, p)), None)
            if part is not None and not any(_within(imp, a) for a in INDEXER_PARTS[part]):
                bad.append(f"{imp} ({part} may import {sorted(INDEXER_PARTS[part])})")
        if top == "encoder" and _within(mod, "encoder.identity") and imp != mod:
            bad.append(f"{imp} (encoder.identity stands alone)")
    return bad


KNOWN = project_modules()


@pytest.mark.parametrize("mod, path", list(modules()), ids=lambda v: str(v).split("/")[-1])
def test_imports_follow_the_rules(mod, path):
    bad = violations(mod, imports_of(path), KNOWN)
    assert not bad, f"{mod} imports against DESIGN.md: {bad}"


def test_the_checker_catches_wrong_imports():
    known = KNOWN | {"indexer.store.layout"}
    assert violations("encoder.model", {"indexer.config"}, known)
    assert violations("indexer.job.pipeline", {"training.trainer"}, known)
    assert violations("indexer.job.pipeline", {"search.engine"}, known)
    assert violations("ui.app", {"search.engine"}, known)
    assert violations("search.engine", {"faiss"}, known)
    assert violations("search.engine", {"indexer.store.layout"}, known)
    assert violations("indexer.store.snapshot", {"torch"}, known)
    assert violations("indexer.rasters.reader", {"indexer.store.writer"}, known)
    assert violations("indexer.store.writer", {"indexer.rasters.inspect"}, known)
    assert violations("search.engine", {"fastapi"}, known)
    assert not violations("training.pairs", {"indexer.rasters.reader"}, known)
    assert not violations("search.engine", {"indexer.store.snapshot"}, known)
    assert not violations("ui.app", {"search.client"}, known)


def test_errors_carry_no_http_status():
    """The API maps exceptions to statuses in one table (search.http.app.STATUS). (The HTTP
    client's error reports the status of a response it received: it is not below HTTP.)"""
    for mod, path in modules():
        if _within(mod, "search.http") or mod == "search.client":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
            if not any(b.endswith(("Error", "Exception", "Error_")) for b in bases):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.Attribute) and sub.attr in ("status", "status_code"):
                    pytest.fail(f"{mod}.{node.name} carries an HTTP status")


def _modules_loaded(code: str) -> set[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code += "\nimport sys\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_opening_an_index_and_loading_a_config_import_no_torch(tmp_path):
    loaded = _modules_loaded(
        "import indexer.store, indexer.config, encoder.identity\n"
        "from indexer.store.snapshot import IndexSnapshot\n"
        "from indexer.store.writer import IndexWriter\n"
        "from indexer.store.tiles import TileTable\n"
        "from indexer.config import load_settings\n"
        f"load_settings({str(ROOT / 'index_config.toml')!r})")
    assert "torch" not in loaded and "open_clip" not in loaded
    assert "faiss" in loaded  # the check is real: the store's own stack was imported


def test_command_help_imports_no_torch():
    for mod in ("indexer.cli", "training.cli", "search.cli"):
        loaded = _modules_loaded(f"import {mod}")
        assert "torch" not in loaded, f"importing {mod} (as --help does) loads torch"
