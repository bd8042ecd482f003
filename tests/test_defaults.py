"""The code's built-in defaults are the documented ones (index_config.toml, README), and the
default encoder fails offline in one line that says what to set."""

from __future__ import annotations

import dataclasses
import tomllib

from encoder.identity import EncoderSpec
from indexer import cli
from indexer.config import Settings, load_settings
from tests.helpers import ROOT, make_raster


def test_built_in_defaults_are_the_documented_ones():
    documented = load_settings(ROOT / "index_config.toml")
    built_in = Settings()
    for section in ("discovery", "tiling", "job", "store"):
        assert getattr(documented, section) == getattr(built_in, section), section
    doc_encoder = tomllib.loads((ROOT / "index_config.toml").read_text())["encoder"]
    assert EncoderSpec().resolved() == dataclasses.replace(
        built_in.encoder, **{k: v for k, v in doc_encoder.items() if k != "checkpoint"})
    assert EncoderSpec().resolved().model == "ViT-B-16"
    assert EncoderSpec().resolved().pretrained == "openai"
    # naming weights replaces the default ones (no "set exactly one" clash)
    assert EncoderSpec(checkpoint="x.pt").resolved().pretrained == ""


def test_no_config_offline_is_one_line_naming_what_to_set(tmp_path, monkeypatch, capsys):
    make_raster(tmp_path / "a" / "scene.tif", size=64)
    monkeypatch.chdir(tmp_path)  # no ./index_config.toml here: built-in defaults
    assert cli.main([str(tmp_path / "a"), "--index", str(tmp_path / "idx"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "pretrained='openai'" in err[0] and "ViT-B-16" in err[0]
    assert "set encoder.checkpoint" in err[0]
    assert not (tmp_path / "idx").exists()
