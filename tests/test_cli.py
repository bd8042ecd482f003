"""The six console scripts' own behaviour: --help and --version (fast, no deep-learning stack),
one-line refusals of bad options before any work, and satfind-eval's config and --out."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest
from PIL import Image

import training.cli
from indexer.cli import main as index_main
from search.cli import main as serve_main
from tests.conftest import OFFLINE_CONFIG, ROOT
from training.cli import eval_main, train_main
from ui.cli import main as ui_main
from ui.demo import main as demo_main

COMMANDS = {
    "satfind-index": index_main,
    "satfind-serve": serve_main,
    "satfind-ui": ui_main,
    "satfind-train": train_main,
    "satfind-eval": eval_main,
    "satfind-demo": demo_main,
}
HEAVY = ("torch", "open_clip", "rasterio", "faiss", "training.trainer", "training.pairs",
         "encoder.model")


def _exit_code(main, argv) -> int | str | None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.fixture
def no_work(monkeypatch):
    """Building the encoder fails the test: a refusal must come before any work."""
    import encoder.model

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was built: the refusal came too late")

    monkeypatch.setattr(encoder.model, "SatelliteEncoder", refuse)


@pytest.fixture
def colour_set(tmp_path):
    root = tmp_path / "images"
    for name, rgb in {"RedRoofs": (220, 30, 30), "GreenField": (30, 200, 40)}.items():
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 48), rgb).save(root / name / f"{i}.png")
    return root


# -- --help and --version ------------------------------------------------------------------

@pytest.mark.parametrize("prog", list(COMMANDS))
def test_help_exits_0_with_usage(prog, capsys):
    assert _exit_code(COMMANDS[prog], ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog}") and "--version" in out


@pytest.mark.parametrize("prog", list(COMMANDS))
def test_version(prog, capsys):
    assert _exit_code(COMMANDS[prog], ["--version"]) == 0
    assert capsys.readouterr().out == f"{prog} {importlib.metadata.version('satfind')}\n"


def test_version_without_package_metadata(monkeypatch, capsys):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    for prog, main in COMMANDS.items():
        assert _exit_code(main, ["--version"]) == 0
        assert capsys.readouterr().out == f"{prog} unknown\n"


def test_help_and_version_load_no_deep_learning_stack():
    code = ("import sys\n"
            "from training.cli import eval_main, train_main\n"
            "from indexer.cli import main as a\nfrom search.cli import main as b\n"
            "from ui.cli import main as c\nfrom ui.demo import main as d\n"
            "for m in (eval_main, train_main, a, b, c, d):\n"
            "    for argv in (['--help'], ['--version']):\n"
            "        try:\n            m(argv)\n        except SystemExit:\n            pass\n"
            "for argv in (['zeroshot', '--help'], ['retrieval', '--help']):\n"
            "    try:\n        eval_main(argv)\n    except SystemExit:\n        pass\n"
            "print(' '.join(sys.modules), file=sys.stderr)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stderr.split())
    assert "argparse" in loaded  # the check is real
    assert not [m for m in HEAVY if m in loaded]


# -- satfind-serve ----------------------------------------------------------------------------

def test_serve_bad_log_level_is_a_usage_error(tmp_path, capsys):
    assert _exit_code(serve_main, ["--index", str(tmp_path / "idx"),
                                   "--log-level", "verbose"]) == 2
    err = capsys.readouterr().err
    assert "--log-level" in err and "invalid choice: 'verbose'" in err
    assert "Traceback" not in err


def test_serve_help_lists_the_log_levels(capsys):
    _exit_code(serve_main, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "critical,error,warning,info,debug,trace" in out


# -- satfind-eval: config ---------------------------------------------------------------------

def test_eval_has_one_config_loader():
    assert not hasattr(training.cli, "encoder_spec_from_config")


@pytest.mark.parametrize("text, needle", [
    ('[encoder]\nseed = "seven"\n', "encoder.seed: expected an integer"),
    ("[encoder]\nmodle = 'x'\n", "unknown key 'modle'"),
    ("[ecoder]\nmodel = 'x'\n", "unknown section [ecoder]"),
    ("[encoder\n", "not valid TOML"),
])
def test_eval_bad_config_is_one_line(tmp_path, colour_set, capsys, no_work, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert eval_main(["zeroshot", str(colour_set), "--config", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("satfind-eval: error:") and needle in err and err.count("\n") == 1


def test_eval_missing_config_is_one_line(tmp_path, colour_set, capsys, no_work):
    assert eval_main(["zeroshot", str(colour_set), "--config", str(tmp_path / "no.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("satfind-eval: error:") and "does not exist" in err


# -- satfind-eval: --out and --limit-per-class ------------------------------------------------

def test_eval_writes_nothing_without_out(tmp_path, colour_set, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert eval_main(["zeroshot", str(colour_set), "--config", str(OFFLINE_CONFIG), "-q"]) == 0
    (tmp_path / "c.tsv").write_text("RedRoofs/0.png\tred roofs\nGreenField/0.png\ta field\n")
    assert eval_main(["retrieval", str(colour_set), "--captions", str(tmp_path / "c.tsv"),
                      "--config", str(OFFLINE_CONFIG), "-q"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot accuracy" in out and "recall@1" in out and "results in" not in out
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tsv", "cwd", "images"]


def test_eval_writes_where_out_says(tmp_path, colour_set, capsys):
    out = tmp_path / "new" / "zs"
    assert eval_main(["zeroshot", str(colour_set), "--config", str(OFFLINE_CONFIG), "-q",
                      "--out", str(out)]) == 0
    assert (out / "zeroshot.json").is_file() and (out / "confusion.csv").is_file()
    assert f"results in {out}/" in capsys.readouterr().out


@pytest.mark.parametrize("what", ["zeroshot", "retrieval"])
def test_eval_help_says_out_is_optional(what, capsys):
    _exit_code(eval_main, [what, "--help"])
    assert "nothing is written" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("where", ["file.json", "file.json/sub", ""])
def test_eval_out_not_a_folder_is_refused_before_work(tmp_path, colour_set, capsys, no_work,
                                                      where):
    (tmp_path / "file.json").write_text("keep me")
    out = str(tmp_path / where) if where else ""
    (tmp_path / "c.tsv").write_text("RedRoofs/0.png\tred\nGreenField/0.png\tgreen\n")
    for argv in (["zeroshot", str(colour_set)],
                 ["retrieval", str(colour_set), "--captions", str(tmp_path / "c.tsv")]):
        assert eval_main([*argv, "--config", str(OFFLINE_CONFIG), "--out", out, "-q"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("satfind-eval: error: --out") and err.count("\n") == 1
    assert (tmp_path / "file.json").read_text() == "keep me"


@pytest.mark.parametrize("value", ["-1", "-5", "two", "1.5"])
def test_eval_bad_limit_per_class_is_a_usage_error(tmp_path, colour_set, capsys, no_work,
                                                    value):
    assert _exit_code(eval_main, ["zeroshot", str(colour_set), "--config", str(OFFLINE_CONFIG),
                                  f"--limit-per-class={value}"]) == 2
    err = capsys.readouterr().err
    assert "argument --limit-per-class:" in err and "integer >= 0" in err


def test_eval_limit_per_class_zero_and_positive_accepted(tmp_path, colour_set, monkeypatch,
                                                         capsys):
    monkeypatch.chdir(tmp_path)
    for value in ("0", "1"):
        assert eval_main(["zeroshot", str(colour_set), "--config", str(OFFLINE_CONFIG), "-q",
                          "--limit-per-class", value]) == 0
    out = capsys.readouterr().out
    assert "over 4 images" in out and "over 2 images" in out
