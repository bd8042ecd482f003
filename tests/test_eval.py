"""satfind-eval zeroshot: the accounting on a synthetic set, and a real run on EuroSAT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from encoder.cli import eval_main
from encoder.evaluate import class_prompt_name, zero_shot
from tests.conftest import OFFLINE_CONFIG, SHARED_DATA

COLOURS = {"RedRoofs": (220, 30, 30), "GreenField": (30, 200, 40), "BlueLake": (20, 40, 210)}


class ColourEncoder:
    """Embeds a tile by its dominant channel and a prompt by the colour word in it."""

    image_size = 32
    dim = 3

    def encode_images(self, batch):
        return np.eye(3, dtype=np.float32)[batch.reshape(len(batch), 3, -1).mean(-1).argmax(1)]

    def encode_text(self, texts):
        words = ("red", "green", "blue")
        return np.stack([np.eye(3, dtype=np.float32)[next(i for i, w in enumerate(words)
                                                          if w in t)] for t in texts])


@pytest.fixture
def colour_set(tmp_path):
    for name, rgb in COLOURS.items():
        (tmp_path / name).mkdir()
        for i in range(4 if name != "BlueLake" else 2):
            Image.new("RGB", (40, 48), rgb).save(tmp_path / name / f"{i}.png")
    return tmp_path


def test_prompt_names():
    assert class_prompt_name("HerbaceousVegetation") == "herbaceous vegetation"
    assert class_prompt_name("sea_lake") == "sea lake"


def test_accounting_on_a_set_it_must_get_right(colour_set, tmp_path):
    res = zero_shot(ColourEncoder(), colour_set)
    assert res.classes == sorted(COLOURS)
    assert res.accuracy == 1.0 and res.confusion.sum() == 10
    assert res.confusion.tolist() == [[2, 0, 0], [0, 4, 0], [0, 0, 4]]
    res.write(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "zeroshot.json").read_text())
    assert saved["per_class_accuracy"] == {"BlueLake": 1.0, "GreenField": 1.0, "RedRoofs": 1.0}


def test_eurosat_end_to_end(tmp_path, capsys):
    eurosat = SHARED_DATA / "eurosat"
    if not eurosat.is_dir():
        pytest.skip(f"EuroSAT subset not available: {eurosat} is absent")
    out = tmp_path / "zs"
    rc = eval_main(["zeroshot", str(eurosat), "--config", str(OFFLINE_CONFIG), "--out", str(out),
                    "--limit-per-class", "8", "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "zero-shot accuracy" in text and "(chance 0.100)" in text and "80 images" in text
    saved = json.loads((out / "zeroshot.json").read_text())
    assert saved["n"] == 80 and len(saved["classes"]) == 10
    assert np.asarray(saved["confusion"]).sum() == 80
    assert (out / "confusion.csv").read_text().startswith("true\\predicted,AnnualCrop")


def test_bad_folder_is_one_line(tmp_path, capsys):
    assert eval_main(["zeroshot", str(tmp_path / "nope"), "--config", str(OFFLINE_CONFIG)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("satfind-eval: error:") and "not a folder" in err
