"""satfind-eval zeroshot: the accounting on a synthetic set, and a real run on EuroSAT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import OFFLINE_CONFIG, SHARED_DATA
from training.cli import eval_main
from training.evaluate import class_prompt_name, recall_from_similarity, retrieval, zero_shot

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


# -- retrieval ---------------------------------------------------------------------------

def test_recall_accounting_by_hand():
    # 3 images, 4 captions; caption 3 also describes image 0.
    sim = np.array([[0.9, 0.1, 0.0],   # caption 0 -> image 0: rank 0
                    [0.8, 0.5, 0.1],   # caption 1 -> image 1: image 0 above it, rank 1
                    [0.2, 0.3, 0.1],   # caption 2 -> image 2: rank 2
                    [0.1, 0.4, 0.0]])  # caption 3 -> image 0: image 1 above, rank 1
    t2i, i2t = recall_from_similarity(sim, np.array([0, 1, 2, 0]), ks=(1, 2))
    assert t2i == {1: 0.25, 2: 0.75}
    # image 0: best own caption 0.9, no other caption above; image 1: own 0.5, the others
    # (0.1, 0.3, 0.4) below -> rank 0; image 2: own 0.1, caption 1 ties at 0.1 -> rank 1
    assert i2t == {1: 2 / 3, 2: 1.0}
    # A constant encoder (every score tied) is credited nothing.
    t2i, i2t = recall_from_similarity(np.zeros((4, 3)), np.array([0, 1, 2, 0]), ks=(1,))
    assert t2i == {1: 0.0} and i2t == {1: 0.0}


def test_retrieval_right_and_wrong_captions(colour_set, tmp_path):
    lines = ["RedRoofs/0.png\tred roofs", "GreenField/0.png\ta green field",
             "BlueLake/0.png\ta blue lake", "BlueLake/0.png\tblue water"]
    (tmp_path / "good.tsv").write_text("\n".join(lines) + "\n")
    res = retrieval(ColourEncoder(), colour_set, tmp_path / "good.tsv")
    assert res.n_images == 3 and res.n_captions == 4
    assert res.text_to_image[1] == 1.0 and res.image_to_text[1] == 1.0
    swapped = [ln.replace("red", "green") if ln.startswith("Red") else
               ln.replace("green", "red") for ln in lines]
    (tmp_path / "bad.tsv").write_text("\n".join(swapped) + "\n")
    res = retrieval(ColourEncoder(), colour_set, tmp_path / "bad.tsv")
    assert res.text_to_image[1] == 0.5  # the two blue captions still find their lake


@pytest.mark.parametrize("text, needle", [
    ("RedRoofs/0.png red roofs\n", "line 1: expected filename<TAB>caption"),
    ("RedRoofs/9.png\tred\nBlueLake/0.png\tblue\n", "does not exist"),
    ("RedRoofs/0.png\tred\n", "at least 2 images"),
])
def test_bad_captions_are_one_line(colour_set, tmp_path, capsys, text, needle):
    (tmp_path / "c.tsv").write_text(text)
    assert eval_main(["retrieval", str(colour_set), "--captions", str(tmp_path / "c.tsv"),
                      "--config", str(OFFLINE_CONFIG), "-q"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_eurosat_retrieval_end_to_end(tmp_path, capsys):
    eurosat = SHARED_DATA / "eurosat"
    if not eurosat.is_dir():
        pytest.skip(f"EuroSAT subset not available: {eurosat} is absent")
    lines = []
    for cls in sorted(d.name for d in eurosat.iterdir() if d.is_dir()):
        for img in sorted((eurosat / cls).glob("*.jpg"))[:3]:
            lines.append(f"{cls}/{img.name}\ta satellite image of "
                         f"{class_prompt_name(cls)}.")
    (tmp_path / "captions.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ret"
    assert eval_main(["retrieval", str(eurosat), "--captions", str(tmp_path / "captions.tsv"),
                      "--config", str(OFFLINE_CONFIG), "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "recall@1" in text and "recall@10" in text and "30 images, 30 captions" in text
    saved = json.loads((out / "retrieval.json").read_text())
    assert set(saved["text_to_image_recall"]) == {"1", "5", "10"}
    assert saved["text_to_image_chance"]["10"] == pytest.approx(10 / 30)
