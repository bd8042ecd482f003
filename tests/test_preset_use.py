"""Presets in use: chosen by --encoder on the commands, their training GSD as the default
tiling, recorded in the index (which refuses another preset), and compared by satfind-eval
on the same images (random-weight files in the published layouts; accuracies at chance,
and shown as such)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from encoder import presets as P
from encoder.download import local_path
from encoder.identity import EncoderSpec
from encoder.model import SatelliteEncoder
from indexer import cli as index_cli
from indexer.config import load_settings
from indexer.configfile import ConfigError
from indexer.store.snapshot import IndexSnapshot
from search.settings import load_serve_config
from tests.helpers import OFFLINE_CONFIG, SHARED_DATA, make_raster
from tests.preset_files import tiny, write_layout
from training.cli import eval_main

EUROSAT = SHARED_DATA / "eurosat"


def test_the_preset_gives_the_default_gsd_and_an_explicit_one_wins(tmp_path):
    assert load_settings(None).tiling.target_gsd_m == 10.0
    assert load_settings(None, encoder="graft-naip").tiling.target_gsd_m == 1.0
    assert load_settings(None, encoder="graft-sentinel2").tiling.target_gsd_m == 10.0
    cfg = tmp_path / "c.toml"
    cfg.write_text('[encoder]\npreset = "graft-naip"\n[tiling]\ntarget_gsd_m = 2.5\n')
    assert load_settings(cfg).tiling.target_gsd_m == 2.5
    assert load_settings(cfg, encoder="graft-sentinel2").encoder.preset == "graft-sentinel2"


@pytest.mark.parametrize("toml, why", [
    ('preset = "nope"', "unknown preset 'nope'"),
    ('preset = "skyclip-vit-b-32"\nmodel = "ViT-B-32"', "set preset or model, not both"),
    ('preset = "skyclip-vit-b-32"\npretrained = "openai"', "a preset names its own weights"),
    ('prompt_set = "nope"', "unknown prompt set 'nope'"),
])
def test_bad_encoder_choices_are_one_line_at_load(tmp_path, toml, why):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[encoder]\n{toml}\n")
    with pytest.raises(ConfigError, match=why):
        load_settings(cfg)


def test_every_command_takes_encoder(capsys):
    with pytest.raises(ConfigError, match="--encoder: unknown preset 'x'"):
        load_serve_config(None, encoder="x")
    from training.settings import load_train_config

    with pytest.raises(ConfigError, match="--encoder: unknown preset 'x'"):
        load_train_config(OFFLINE_CONFIG, encoder="x")
    assert index_cli.main(["a.tif", "--index", "i", "--encoder", "x", "-q"]) == 2
    assert "--encoder: unknown preset 'x'" in capsys.readouterr().err
    from search import cli as serve_cli
    from training import cli as train_cli
    from ui import demo

    for main, argv in ((serve_cli.main, []), (train_cli.train_main, []), (demo.main, []),
                       (train_cli.eval_main, ["zeroshot"]), (train_cli.eval_main, ["retrieval"])):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        assert "--encoder" in capsys.readouterr().out


def test_the_index_records_the_preset_and_refuses_another(tmp_path, monkeypatch, capsys):
    """Two presets with equal random weights (same architecture, same seed) still are two
    embedding spaces: the index records the preset and refuses the other one."""
    tiny(monkeypatch, "remoteclip-vit-b-32")
    tiny(monkeypatch, "georsclip-vit-b-32")
    make_raster(tmp_path / "a" / "scene.tif", size=128)
    cfg = tmp_path / "c.toml"
    cfg.write_text(OFFLINE_CONFIG.read_text().replace('model = "satfind-tiny"', "")
                   .replace("target_gsd_m = 5.0", "target_gsd_m = 0"))
    idx = tmp_path / "idx"
    args = [str(tmp_path / "a"), "--index", str(idx), "--config", str(cfg), "-q"]
    assert index_cli.main([*args, "--encoder", "remoteclip-vit-b-32"]) == 0
    snap = IndexSnapshot.open(idx)
    assert snap.identity.preset == "remoteclip-vit-b-32"
    assert snap.recipe.encoder_preset == "remoteclip-vit-b-32"
    assert snap.recipe.target_gsd_m == P.PRESETS["remoteclip-vit-b-32"].gsd_m
    capsys.readouterr()
    make_raster(tmp_path / "b" / "other.tif", size=128, seed=2)
    args[0] = str(tmp_path / "b")
    assert index_cli.main([*args, "--encoder", "georsclip-vit-b-32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "remoteclip-vit-b-32" in err[0] and "georsclip" in err[0]
    assert "(--encoder remoteclip-vit-b-32)" in err[0]
    assert IndexSnapshot.open(idx).ntotal == snap.ntotal
    # the server refuses it too, and says which preset to start with
    from indexer.errors import IndexError_
    from search.engine import SearchEngine

    with pytest.raises(IndexError_, match=r"start with --encoder remoteclip-vit-b-32"):
        SearchEngine(idx, load_serve_config(cfg, encoder="georsclip-vit-b-32"))
    assert SearchEngine(idx, load_serve_config(cfg, encoder="remoteclip-vit-b-32")
                        ).snapshot.ntotal == snap.ntotal


@pytest.mark.skipif(not EUROSAT.is_dir(), reason="../shared/data/eurosat is not here")
def test_eval_compares_prompt_sets_with_the_sensor_and_gsd_in_the_text(tmp_path, capsys):
    out = tmp_path / "out"
    rc = eval_main(["zeroshot", str(EUROSAT), "--config", str(OFFLINE_CONFIG),
                    "--prompts", "satfind-rs-v1", "--prompts", "sensor-gsd-v1",
                    "--sensor", "Sentinel-2", "--gsd", "10", "--limit-per-class", "4",
                    "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "| satfind-rs-v1 |" in table and "| sensor-gsd-v1 |" in table
    aware = json.loads((out / "satfind-tiny-sensor-gsd-v1" / "zeroshot.json").read_text())
    assert "a 10 m Sentinel-2 image of {}." in aware["templates"]
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["prompt_set"] for r in rows] == ["satfind-rs-v1", "sensor-gsd-v1"]
    assert all(r["n"] == 40 for r in rows)


def _published_size_files(weights_dir):
    """Random ViT-B/32 weights (float16 to halve the bytes) in RemoteCLIP's plain layout and
    SkyCLIP's zipped training checkpoint, where the presets look for them."""
    for name, seed in (("remoteclip-vit-b-32", 1), ("skyclip-vit-b-32", 2)):
        preset = P.PRESETS[name]
        torch.manual_seed(seed)
        model = open_clip.create_model(preset.architecture,
                                       force_quick_gelu=preset.activation == "quick_gelu")
        write_layout(preset, {k: v.half() for k, v in model.state_dict().items()},
                     local_path(preset))
        del model


@pytest.mark.skipif(not EUROSAT.is_dir(), reason="../shared/data/eurosat is not here")
def test_eval_compares_two_presets_end_to_end(tmp_path, monkeypatch, capsys):
    """`satfind-eval zeroshot eurosat --encoder A --encoder B` on random-weight files of the
    published architectures: one table, both presets, at chance and said so."""
    monkeypatch.setenv("SATFIND_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    _published_size_files(tmp_path / "weights")
    out = tmp_path / "out"
    rc = eval_main(["zeroshot", str(EUROSAT), "--encoder", "remoteclip-vit-b-32",
                    "--encoder", "skyclip-vit-b-32", "--limit-per-class", "3",
                    "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert len(lines) == 3  # header + two presets
    assert "remoteclip-vit-b-32" in lines[1] and "skyclip-vit-b-32" in lines[2]
    data = json.loads((out / "comparison.json").read_text())
    assert [r["encoder"] for r in data["rows"]] == ["remoteclip-vit-b-32", "skyclip-vit-b-32"]
    for r in data["rows"]:  # random weights: at chance (10 classes), and labelled so
        assert r["n"] == 30 and r["chance"] == pytest.approx(0.1)
        assert r["at_chance"] and r["verdict"] == "at chance" and "at chance" in table
    assert data["rows"][0]["identity"] != data["rows"][1]["identity"]
    assert (out / "comparison.md").read_text().count("| ") >= 3
    assert (out / "skyclip-vit-b-32" / "zeroshot.json").is_file()


def test_a_spec_with_a_preset_and_random_weights_needs_no_file(monkeypatch):
    tiny(monkeypatch, "skyclip-vit-l-14")
    enc = SatelliteEncoder(EncoderSpec(preset="skyclip-vit-l-14", random_weights=True))
    assert enc.identity.preset == "skyclip-vit-l-14" and enc.quick_gelu
