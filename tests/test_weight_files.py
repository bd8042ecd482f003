"""Bad weight files, each refused in one line that says what the file is, before anything
is unpickled where the bytes tell (TorchScript, HTML, truncated, empty, not weights), and
after a strict load for the rest (another architecture, pickled objects)."""

from __future__ import annotations

import collections

import pytest
import torch

from encoder.identity import EncoderError, EncoderSpec
from encoder.model import SatelliteEncoder
from encoder.weightfile import check_weights_file

TINY = "satfind-tiny"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    model = SatelliteEncoder(EncoderSpec(model=TINY, random_weights=True, seed=3))
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    torch.save(model.model.state_dict(), path)
    return path, model


def _load(path):
    return SatelliteEncoder(EncoderSpec(model=TINY, checkpoint=str(path)))


def _refused(path, why):
    with pytest.raises(EncoderError) as e:
        _load(path)
    line = str(e.value)
    assert why in line and "\n" not in line and str(path) in line, line
    return line


def test_a_plain_state_dict_loads_and_embeds_like_its_model(good):
    path, model = good
    assert check_weights_file(path) == "torch-zip"
    loaded = _load(path)
    assert loaded.identity.weights_sha256 == model.identity.weights_sha256
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    assert torch.allclose(torch.as_tensor(loaded.encode_images(x)),
                          torch.as_tensor(model.encode_images(x)))


def test_files_that_are_not_weights(tmp_path, good):
    path, _ = good
    html = tmp_path / "weights.pt"
    html.write_text("<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")
    _refused(html, "an HTML/XML page, not weights")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refused(truncated, "truncated or damaged")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _refused(empty, "empty file")
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    _refused(text, "not a PyTorch or safetensors weights file")
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    _refused(scripted, "a TorchScript archive")


class _Trainer:  # a pickled object that is not a tensor: weights_only refuses it
    pass


def test_weights_that_do_not_fit_or_hold_objects(tmp_path, good):
    path, _ = good
    sd = torch.load(path, weights_only=True)
    other = collections.OrderedDict(sd)
    first = next(iter(other))
    other[f"renamed.{first}"] = other.pop(first)  # one missing, one unexpected
    wide = next(k for k, v in other.items() if v.ndim == 2)
    other[wide] = torch.zeros(other[wide].shape[0] + 1, other[wide].shape[1])
    wrong = tmp_path / "wrong.pt"
    torch.save(other, wrong)
    line = _refused(wrong, f"not weights of {TINY}")
    assert "1 missing key(s)" in line and "1 unexpected key(s)" in line
    assert "shape mismatch" in line
    objects = tmp_path / "objects.pt"
    torch.save({"state_dict": sd, "trainer": _Trainer()}, objects)
    _refused(objects, "holds objects other than tensors")
