"""The text side of a query: a prompt ensemble is one batched forward, prompt sets fill in the
GSD and sensor, and the optional int8 text tower (CPU serving) agrees with fp32."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from encoder.identity import EncoderError, EncoderSpec
from encoder.model import SatelliteEncoder
from encoder.prompts import PROMPT_SETS, ensemble_text_embedding, get_prompt_set


def test_an_ensemble_is_one_batched_forward(encoder, monkeypatch):
    calls = []
    real = encoder.model.encode_text
    monkeypatch.setattr(encoder.model, "encode_text", lambda t: (calls.append(len(t)), real(t))[1])
    ensemble_text_embedding(encoder, "a quarry")
    assert calls == [len(encoder.prompts.templates)]


def test_aware_prompt_sets_name_the_gsd_and_sensor():
    aware = get_prompt_set("sensor-gsd-v1")
    filled = aware.for_imagery(10.0, "Sentinel-2")
    assert filled[0] == "a 10 m Sentinel-2 image of {}."
    assert aware.for_imagery(0.6)[0] == "a 0.6 m satellite image of {}."
    assert all("{gsd}" not in t and "{sensor}" not in t for t in aware.for_imagery())
    assert get_prompt_set().templates == PROMPT_SETS["satfind-rs-v1"].templates
    with pytest.raises(EncoderError, match="unknown prompt set"):
        get_prompt_set("v0")


def test_the_encoder_takes_its_prompt_set_from_the_spec():
    enc = SatelliteEncoder(EncoderSpec(model="satfind-tiny", random_weights=True,
                                       prompt_set="clip-eurosat-v1"))
    assert enc.prompts.name == "clip-eurosat-v1"
    a = ensemble_text_embedding(enc, "river")
    b = ensemble_text_embedding(enc, "river", get_prompt_set("satfind-rs-v1").templates)
    assert not np.allclose(a, b)


def test_int8_text_tower_agrees_with_fp32_and_keeps_the_identity(settings):
    from search.engine import SearchEngine  # noqa: F401 (the server's path below)

    fp32 = SatelliteEncoder(settings.encoder)
    q = SatelliteEncoder(settings.encoder)
    assert q.quantize_text() and not q.quantize_text()  # once
    texts = ["solar farm next to a river", "a quarry", "dense residential area", "a harbour"]
    cos = (fp32.encode_text(texts) * q.encode_text(texts)).sum(axis=1)
    assert cos.min() >= 0.99, cos
    assert q.identity == fp32.identity
    img = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), np.uint8)
    np.testing.assert_array_equal(q.encode_images(img), fp32.encode_images(img))


def test_the_server_quantises_the_text_tower_when_asked(tmp_path, settings, encoder):
    from indexer.job.pipeline import IndexJob
    from search.engine import SearchEngine
    from search.settings import SearchSettings, ServeConfig
    from tests.helpers import make_raster

    make_raster(tmp_path / "a" / "s.tif", size=128)
    IndexJob(tmp_path / "idx", settings, encoder, progress=False, log=lambda m: None).run(
        [str(tmp_path / "a")])
    own = SatelliteEncoder(settings.encoder)
    cfg = ServeConfig(settings, dataclasses.replace(SearchSettings(), text_int8=True))
    eng = SearchEngine(tmp_path / "idx", cfg, encoder=own)
    assert own.text_int8
    v = eng.text_vector("a quarry")
    assert float(v @ ensemble_text_embedding(encoder, "a quarry")) >= 0.99
