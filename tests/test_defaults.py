"""The code's built-in defaults are the documented ones (index_config.toml, README), and the
default encoder fails offline in one line that says what to set."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from encoder.identity import EncoderSpec
from indexer import cli
from indexer.config import GDAL_REMOTE_DEFAULTS, Settings, load_settings
from indexer.configfile import ConfigError
from tests.helpers import ROOT, make_raster


def test_built_in_defaults_are_the_documented_ones():
    documented = load_settings(ROOT / "index_config.toml")
    built_in = Settings()
    for section in ("discovery", "tiling", "job", "store", "remote"):
        assert getattr(documented, section) == getattr(built_in, section), section
    text = (ROOT / "index_config.toml").read_text()
    for key, value in GDAL_REMOTE_DEFAULTS.items():  # the built-in GDAL options, documented
        assert f"#   {key} = \"{value}\"" in text, key
    doc_encoder = tomllib.loads((ROOT / "index_config.toml").read_text())["encoder"]
    assert EncoderSpec().resolved() == dataclasses.replace(built_in.encoder, **doc_encoder)
    assert EncoderSpec().resolved().preset == "openai-vit-b-16"
    assert documented.tiling.target_gsd_m == built_in.tiling.target_gsd_m == 10.0
    # an open_clip model without weights named: OpenAI's, as before presets
    assert EncoderSpec(model="ViT-L-14").resolved().pretrained == "openai"
    # naming weights replaces the default ones (no "set exactly one" clash)
    assert EncoderSpec(model="ViT-B-16", checkpoint="x.pt").resolved().pretrained == ""


def test_no_config_offline_is_one_line_naming_what_to_set(tmp_path, monkeypatch, capsys):
    make_raster(tmp_path / "a" / "scene.tif", size=64)
    monkeypatch.chdir(tmp_path)  # no ./index_config.toml here: built-in defaults
    assert cli.main([str(tmp_path / "a"), "--index", str(tmp_path / "idx"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "openai-vit-b-16" in err[0] and "HF_HUB_OFFLINE=1" in err[0]
    assert "open_clip_pytorch_model.bin" in err[0] and "set encoder.checkpoint" in err[0]
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("table, why", [
    ('gdal = {AWS_SECRET_ACCESS_KEY = "x"}', "looks like a credential"),
    ('gdal = {GDAL_HTTP_HEADERS = "Authorization: Bearer x"}', "looks like a credential"),
    ('gdal = {gdal_http_timeout = "5"}', "is not a GDAL configuration option name"),
    ('gdal = {GDAL_HTTP_TIMEOUT = 5}', "expected a string"),
    ("read_retries = -1", "read_retries"),
])
def test_remote_settings_refuse_credentials_and_bad_options(tmp_path, table, why):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[remote]\n{table}\n")
    with pytest.raises(ConfigError, match=why):
        load_settings(cfg)


def test_remote_gdal_options_merge_over_the_defaults(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[remote]\ngdal = {GDAL_HTTP_MAX_RETRY = "9", AWS_NO_SIGN_REQUEST = "YES"}\n')
    opts = load_settings(cfg).remote.gdal_options()
    assert opts["GDAL_HTTP_MAX_RETRY"] == "9" and opts["AWS_NO_SIGN_REQUEST"] == "YES"
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
