"""SatelliteEncoder: offline construction, identity, normalised embeddings, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoder.identity import EncoderError, EncoderSpec
from encoder.model import SatelliteEncoder

TINY = EncoderSpec(model="satfind-tiny", random_weights=True, seed=0, device="cpu")


def test_embeddings_are_normalised_and_deterministic(encoder):
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, size=(5, 3, 64, 64), dtype=np.uint8)
    a = encoder.encode_images(tiles)
    assert a.shape == (5, encoder.dim) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # channels-last input and a different input size go through the same preprocessing
    assert np.allclose(encoder.encode_images(tiles.transpose(0, 2, 3, 1)), a, atol=1e-5)
    big = tiles.repeat(2, axis=2).repeat(2, axis=3)
    assert encoder.encode_images(big).shape == (5, encoder.dim)
    t = encoder.encode_text(["a river", "a solar farm next to a river"])
    assert t.shape == (2, encoder.dim)
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(t[0], t[1])


def test_identity_depends_on_weights_not_on_the_process():
    a, b = SatelliteEncoder(TINY), SatelliteEncoder(TINY)
    assert a.identity == b.identity
    c = SatelliteEncoder(EncoderSpec(model="satfind-tiny", random_weights=True, seed=1))
    assert c.identity.weights_sha256 != a.identity.weights_sha256
    assert c.identity.architecture == a.identity.architecture == "satfind-tiny"
    assert a.identity.embed_dim == 64 and a.identity.image_size == 64


def test_local_checkpoint_loads_the_same_model(tmp_path):
    a = SatelliteEncoder(EncoderSpec(model="satfind-tiny", random_weights=True, seed=7))
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": a.model.state_dict()}, ckpt)
    b = SatelliteEncoder(EncoderSpec(model="satfind-tiny", checkpoint=str(ckpt)))
    assert b.identity == a.identity
    x = np.random.default_rng(1).integers(0, 255, size=(2, 3, 64, 64), dtype=np.uint8)
    assert np.allclose(a.encode_images(x), b.encode_images(x), atol=1e-6)


@pytest.mark.parametrize("spec,needle", [
    (EncoderSpec(model="nope", random_weights=True), "unknown open_clip model"),
    # no weights named: the documented default (OpenAI's), which this model has no file of
    (EncoderSpec(model="satfind-tiny"), "cannot load weights pretrained='openai'"),
    (EncoderSpec(model="satfind-tiny", random_weights=True, pretrained="openai"),
     "set exactly one of"),
    (EncoderSpec(model="satfind-tiny", checkpoint="/no/such.pt"), "does not exist"),
    (EncoderSpec(model="/no/such/config.json", random_weights=True), "does not exist"),
])
def test_bad_specs_are_one_line_errors(spec, needle):
    with pytest.raises(EncoderError, match=needle) as e:
        SatelliteEncoder(spec)
    assert "\n" not in str(e.value)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="not a PyTorch or safetensors weights file"):
        SatelliteEncoder(EncoderSpec(model="satfind-tiny", checkpoint=str(bad)))


def test_bad_image_batch(encoder):
    with pytest.raises(EncoderError, match="uint8"):
        encoder.encode_images(np.zeros((1, 3, 64, 64), dtype=np.float32))


def test_text_similarity_map_is_per_patch_token(encoder):
    from encoder.prompts import ensemble_text_embedding

    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    grid = encoder.text_similarity_map(tile, "a river")
    assert grid.shape == (4, 4) and grid.dtype == np.float32  # 64 px / 16 px patches
    assert np.all(np.abs(grid) <= 1 + 1e-5) and grid.std() > 0
    np.testing.assert_allclose(
        grid, encoder.similarity_map(tile, ensemble_text_embedding(encoder, "a river")))


def test_checkpoint_whose_text_tower_is_not_its_teachers_is_refused(tmp_path):
    import json

    import torch

    from encoder.checkpoints import text_tower_sha256

    teacher = SatelliteEncoder(EncoderSpec(model="satfind-tiny", random_weights=True, seed=0))
    other = SatelliteEncoder(EncoderSpec(model="satfind-tiny", random_weights=True, seed=1))
    ckpt = tmp_path / "graft.pt"
    torch.save({"state_dict": other.model.state_dict()}, ckpt)
    ckpt.with_suffix(".json").write_text(json.dumps({
        "teacher": teacher.identity.to_dict(),
        "text_tower_sha256": text_tower_sha256(teacher.model)}))
    with pytest.raises(EncoderError, match="text tower is not the one"):
        SatelliteEncoder(EncoderSpec(model="satfind-tiny", checkpoint=str(ckpt)))
    torch.save({"state_dict": teacher.model.state_dict()}, ckpt)
    loaded = SatelliteEncoder(EncoderSpec(model="satfind-tiny", checkpoint=str(ckpt)))
    assert loaded.trained_from == teacher.identity.to_dict()
