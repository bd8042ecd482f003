"""GRAFT end to end on a generated world: pairs (CSV photos, time matching), teacher cache,
training that measurably learns, checkpoints and --resume, the exported encoder in
SatelliteEncoder and satfind-index, and the pixel-level similarity map."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoder.identity import EncoderSpec
from encoder.images import square_tile
from encoder.model import SatelliteEncoder
from indexer.config import load_settings
from indexer.rasters import hashing
from tests.graft_world import _ground_photo, _satellite_scene, make_world
from training.cli import train_main
from training.pairs import build_pairs, raster_catalogue
from training.photos import PairError, load_photos
from training.settings import load_train_config
from training.teacher import TeacherCache, load_photo
from training.trainer import Trainer
from training.validation import retrieval_recall_at_1

TEACHER = """
[encoder]
model = "satfind-tiny"
random_weights = true
seed = 0
device = "cpu"

[tiling]
target_gsd_m = 10.0
"""


def write_config(root: Path, name: str = "train.toml", **train) -> Path:
    base = {"photos": "train_photos.csv",
            "rasters": ["world_20210615.tif", "world_20240601.tif"],
            "time_window_days": 60, "steps": 150, "batch_size": 32, "lr": 1e-3,
            "warmup_steps": 10, "checkpoint_every": 50, "seed": 0, **train}
    lines = [f"{k} = {json.dumps(v)}" for k, v in base.items()]
    path = root / name
    path.write_text(TEACHER + "\n[train]\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def teacher():
    return SatelliteEncoder(EncoderSpec(model="satfind-tiny", random_weights=True, seed=0,
                                        device="cpu"))


@pytest.fixture(scope="module")
def trained(world):
    root = world.train_csv.parent
    cfg = write_config(root, out="run")
    assert train_main(["--config", str(cfg), "-q"]) == 0
    return root / "run"


def heldout_recall(world, visual_of: SatelliteEncoder, teacher: SatelliteEncoder, out: Path):
    """Satellite -> ground recall@1 over scenes no training step saw."""
    settings, train = load_train_config(write_config(world.train_csv.parent, "heldout.toml",
                                                     photos="heldout_photos.csv", jitter=0.0))
    rasters, _ = raster_catalogue(list(train.rasters), settings)
    photos = load_photos(train.photos)
    pairs = build_pairs(photos, rasters, settings, train, teacher.image_size, out)
    ground = torch.from_numpy(np.stack([
        teacher.encode_images(load_photo(p.path, teacher.image_size)[None])[0]
        for p in photos]))
    return retrieval_recall_at_1(visual_of.model.visual, visual_of, pairs, ground,
                                 np.arange(len(pairs.samples)))


def test_training_learns_the_ground_satellite_alignment(world, trained, teacher, tmp_path):
    export = trained / "satfind-graft.pt"
    student = SatelliteEncoder(load_settings(trained / "index_config.toml").encoder)
    after, chance = heldout_recall(world, student, teacher, tmp_path / "h1")
    before, _ = heldout_recall(world, teacher, teacher, tmp_path / "h2")
    print(f"held-out recall@1: untrained {before:.3f}, trained {after:.3f}, chance {chance:.3f}")
    assert after >= 3 * chance
    assert after >= 2 * before
    # The export records its teacher, whose weights training left untouched, and keeps the
    # teacher's text tower: text queries land in the space the photos were embedded in.
    meta = json.loads(export.with_suffix(".json").read_text())
    assert meta["teacher"] == teacher.identity.to_dict()
    assert student.trained_from == teacher.identity.to_dict()
    assert student.identity.weights_sha256 != teacher.identity.weights_sha256
    texts = ["a red field", "a lake"]
    np.testing.assert_allclose(student.encode_text(texts), teacher.encode_text(texts), atol=1e-6)


def test_metrics_and_checkpoints(trained):
    lines = [json.loads(ln) for ln in (trained / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in lines if "loss" in r]
    assert train_steps == list(range(1, 151))
    val = {r["step"]: r["val_recall_at_1"] for r in lines if "val_recall_at_1" in r}
    assert sorted(val) == [0, 50, 100, 150]
    assert val[150] > val[0]
    first, last = lines[1], lines[-2]
    assert last["loss"] < first["loss"] and 0 <= last["acc"] <= 1
    assert [p.name for p in sorted((trained / "checkpoints").glob("*.pt"))] == [
        "step-0000100.pt", "step-0000150.pt"]  # keep_checkpoints = 2
    counts = json.loads((trained / "pairs.json").read_text())["counts"]
    assert counts["samples"] == counts["photos"] == 160
    assert 12 <= counts["val"] <= 32 and counts["train"] + counts["val"] == 160


def test_time_matching_picks_the_acquisition_of_the_photos(world, teacher, tmp_path):
    root = world.train_csv.parent
    photos = load_photos(world.train_csv)

    def pairs_for(**kw):
        settings, train = load_train_config(write_config(root, "t.toml", **kw))
        rasters, _ = raster_catalogue(list(train.rasters), settings)
        return build_pairs(photos, rasters, settings, train, teacher.image_size,
                           tmp_path / f"p{len(list(tmp_path.iterdir()))}")

    matched = pairs_for(time_window_days=60)
    assert {Path(r).name for r in matched.rasters} == {"world_20210615.tif"}
    newest = pairs_for(time_window_days=0)
    assert {Path(r).name for r in newest.rasters} == {"world_20240601.tif"}
    # Photos from June 1-28 2021, raster from June 15: a 3-day window keeps only some.
    narrow = pairs_for(time_window_days=3)
    assert 0 < narrow.counts["no_raster_in_time"] < len(photos)
    assert narrow.counts["samples"] + narrow.counts["no_raster_in_time"] == len(photos)
    with pytest.raises(PairError, match="none within the time window"):
        pairs_for(time_window_days=60, rasters=["world_20240601.tif"])


def test_untrained_student_fails_on_the_same_world(world, teacher, tmp_path):
    """The satellite view of class c is coloured like another class's photos: before
    training the teacher's own image tower ranks the wrong photos first."""
    root = world.train_csv.parent
    settings, train = load_train_config(write_config(root, "u.toml"))
    rasters, _ = raster_catalogue(list(train.rasters), settings)
    pairs = build_pairs(load_photos(train.photos), rasters, settings, train,
                        teacher.image_size, tmp_path / "u")
    ground = torch.from_numpy(TeacherCache(tmp_path / "cache", teacher).embed(
        [p.path for p in pairs.photos]))
    rec, chance = retrieval_recall_at_1(teacher.model.visual, teacher, pairs, ground,
                                        np.arange(len(pairs.samples)))
    assert rec < 2 * chance


def test_teacher_cache_is_keyed_by_content_and_teacher(world, teacher, tmp_path, monkeypatch):

    photos = sorted((world.train_csv.parent / "photos").glob("*.jpg"))[:5]
    cache = TeacherCache(tmp_path, teacher)
    first = cache.embed([str(p) for p in photos])
    assert cache.computed == 5 and cache.hits == 0
    np.testing.assert_allclose(
        first[0], teacher.encode_images(load_photo(str(photos[0]), 64)[None])[0], atol=1e-6)
    copy = tmp_path / "renamed.jpg"
    shutil.copy(photos[0], copy)
    again = TeacherCache(tmp_path, teacher)  # a new process: reads the parts from disk
    hashed = []
    real_sha = hashing.file_sha256
    monkeypatch.setattr(hashing, "file_sha256",
                        lambda p, **kw: hashed.append(p) or real_sha(p, **kw))
    second = again.embed([str(p) for p in photos] + [str(copy)])
    assert again.computed == 0 and again.hits == 6
    assert hashed == [str(copy)]  # unchanged photos are known by path, size and mtime
    np.testing.assert_array_equal(second[:5], first)
    other = SatelliteEncoder(EncoderSpec(model="satfind-tiny", random_weights=True, seed=1,
                                         device="cpu"))
    third = TeacherCache(tmp_path, other)
    third.embed([str(photos[0])])
    assert third.computed == 1 and third.dir != cache.dir


def test_resume_gives_the_same_encoder_as_an_uninterrupted_run(world, monkeypatch, capsys):
    root = world.train_csv.parent
    small = {"steps": 12, "checkpoint_every": 5, "batch_size": 8, "grad_accum": 2}
    straight = write_config(root, "straight.toml", out="straight", **small)
    assert train_main(["--config", str(straight), "-q"]) == 0

    cut = write_config(root, "cut.toml", out="cut", **small)
    real_step = Trainer._step
    calls = {"n": 0}

    def ctrl_c_during_step(self, step, *a, **kw):
        if step == 6 and not calls["n"]:  # the 7th step: it completes, then the run stops
            calls["n"] += 1
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, step, *a, **kw)

    monkeypatch.setattr(Trainer, "_step", ctrl_c_during_step)
    assert train_main(["--config", str(cut), "-q"]) == 130
    assert "interrupted at step 7" in capsys.readouterr().err
    # Starting again without --resume would overwrite the run: refused.
    assert train_main(["--config", str(cut), "-q"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert train_main(["--config", str(cut), "-q", "--resume"]) == 0
    assert "steps 7..12" in capsys.readouterr().out

    def image_tower(run: str) -> str:
        return json.loads((root / run / "satfind-graft.json").read_text())["image_tower_sha256"]

    assert image_tower("cut") == image_tower("straight")
    steps = [json.loads(ln)["step"] for ln in (root / "cut" / "metrics.jsonl").read_text()
             .splitlines() if "loss" in ln]
    assert steps == list(range(1, 13))  # no step logged twice, none missing
    changed = write_config(root, "cut.toml", out="cut", **{**small, "lr": 5e-4, "steps": 20})
    assert train_main(["--config", str(changed), "-q", "--resume"]) == 2
    assert "config changed" in capsys.readouterr().err

    # A run from before tiling.warp (its patches warped by GDAL; the fingerprint's tiling
    # without "warp"): the default (fast) is another config, and says how to resume it.
    last = sorted((root / "cut" / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(last, weights_only=False)
    state["config"]["tiling"] = state["config"]["tiling"].replace(", warp='fast'", "")
    torch.save(state, last)
    cut = write_config(root, "cut.toml", out="cut", **small)  # as the run was started
    assert train_main(["--config", str(cut), "-q", "--resume"]) == 2
    assert '[tiling] warp = "gdal" resumes it' in capsys.readouterr().err
    gdal = root / "gdal.toml"
    gdal.write_text(cut.read_text().replace("[tiling]\n", '[tiling]\nwarp = "gdal"\n'))
    assert train_main(["--config", str(gdal), "-q", "--resume"]) == 0


def test_trained_encoder_indexes_and_highlights(world, trained, teacher, tmp_path):
    from indexer.cli import main as index_main
    from indexer.store.snapshot import IndexSnapshot

    cfg = trained / "index_config.toml"
    assert index_main([str(world.rasters[0]), "--index", str(tmp_path / "idx"),
                       "--config", str(cfg), "-q"]) == 0
    student = SatelliteEncoder(load_settings(cfg).encoder)
    assert IndexSnapshot.open(tmp_path / "idx").identity == student.identity

    # Pixel level: a tile that is class 0 on the left and class 1 on the right; the map for
    # a class-0 ground photo is higher on the left, and the other way round.
    rng = np.random.default_rng(5)
    tile = np.concatenate([_satellite_scene(0, rng, 64)[:, :, :32],
                           _satellite_scene(1, rng, 64)[:, :, 32:]], axis=2)
    photos = [teacher.encode_images(
        square_tile(Image.fromarray(_ground_photo(c, rng)), 64)[None])[0] for c in (0, 1)]
    left, right = (student.similarity_map(tile, q) for q in photos)
    assert left.shape == (4, 4)
    assert left[:, :2].mean() > left[:, 2:].mean()
    assert right[:, 2:].mean() > right[:, :2].mean()


def test_config_errors_are_one_line(world, tmp_path, capsys):
    root = world.train_csv.parent
    bad = write_config(root, "bad.toml", photos="missing.csv", out=str(tmp_path / "x"))
    assert train_main(["--config", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert "missing.csv" in err and err.count("\n") == 1
    bad = write_config(root, "bad.toml", batch_size=0)
    assert train_main(["--config", str(bad), "-q"]) == 2
    assert "train.batch_size = 0 is out of range" in capsys.readouterr().err
    s, t = load_train_config(write_config(root, "ok.toml"))
    assert dataclasses.asdict(t)["photos"].endswith("train_photos.csv")


def test_index_config_documents_the_train_defaults():
    import tomllib

    from training.settings import TrainSettings

    text = (Path(__file__).parents[1] / "index_config.toml").read_text()
    block = text[text.index("# [train]"):].splitlines()
    table = tomllib.loads("\n".join(ln.removeprefix("# ") for ln in block))["train"]
    defaults = dataclasses.asdict(TrainSettings())
    assert set(table) == set(defaults)
    for k, v in table.items():
        if k not in ("photos", "rasters"):
            assert v == (list(defaults[k]) if isinstance(defaults[k], tuple) else defaults[k]), k


def _train_process(cfg: Path, *extra: str):
    import os
    import subprocess
    import sys

    code = "import sys; from training.cli import train_main; sys.exit(train_main())"
    return subprocess.Popen([sys.executable, "-c", code, "--config", str(cfg), "-q", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            cwd=Path(__file__).parents[1])


def _wait_for(pred, proc, seconds: float = 120) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not pred():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln)["step"] for ln in path.read_text().splitlines()
            if ln.endswith("}") and "loss" in ln]


def test_ctrl_c_and_sigterm_in_a_real_process_checkpoint_and_resume(world):
    import signal

    root = world.train_csv.parent
    cfg = write_config(root, "sigint.toml", out="sigint", steps=100000, checkpoint_every=10,
                       batch_size=8)
    run = root / "sigint"
    proc = _train_process(cfg)
    try:
        _wait_for(lambda: len(_logged_steps(run)) >= 12, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "continue with --resume" in err and "Traceback" not in err
    (ckpt,) = sorted((run / "checkpoints").glob("*.pt"))[-1:]
    saved = int(ckpt.stem.split("-")[1])
    assert saved >= 12 and saved == max(_logged_steps(run))

    proc = _train_process(cfg, "--resume")
    try:
        _wait_for(lambda: max(_logged_steps(run), default=0) >= saved + 3, proc)
        proc.send_signal(signal.SIGTERM)  # a preempted job: same orderly stop
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    steps = _logged_steps(run)
    assert steps == list(range(1, len(steps) + 1))  # continued where it stopped, no repeats


class Interrupted(Exception):
    pass


def test_patch_reading_resumes_and_workers_agree(world, teacher, tmp_path, monkeypatch):
    import training.pairs as data

    root = world.train_csv.parent
    settings, train = load_train_config(write_config(root, "r.toml"))
    rasters, _ = raster_catalogue(list(train.rasters), settings)
    photos = load_photos(train.photos)
    straight = build_pairs(photos, rasters, settings, train, 64, tmp_path / "straight")
    parallel = build_pairs(photos, rasters, settings, train, 64, tmp_path / "parallel",
                           workers=2)
    np.testing.assert_array_equal(parallel.patches, straight.patches)

    monkeypatch.setattr(data, "PROGRESS_EVERY", 32)
    real = data.PatchDataset.__getitem__
    seen, cut = [], [True]

    def read(self, item):
        k = self.start + item
        seen.append(k)
        if k == 100 and cut:
            cut.clear()
            raise Interrupted  # stands for Ctrl-C or a kill: nothing is cleaned up
        return real(self, item)

    monkeypatch.setattr(data.PatchDataset, "__getitem__", read)
    with pytest.raises(Interrupted):
        build_pairs(photos, rasters, settings, train, 64, tmp_path / "cut")
    assert not (tmp_path / "cut" / "pairs.json").exists()
    saved = json.loads((tmp_path / "cut" / ".pairs-progress.json").read_text())["next"]
    assert 64 <= saved <= 100
    seen.clear()
    resumed = build_pairs(photos, rasters, settings, train, 64, tmp_path / "cut")
    assert seen[0] == saved  # nothing before the saved position is read again
    np.testing.assert_array_equal(resumed.patches, straight.patches)
    assert resumed.counts == straight.counts
    assert not (tmp_path / "cut" / ".pairs-progress.json").exists()


def test_where_map_peaks_at_the_planted_patch(world, trained, tmp_path):
    """The API's where-map with the GRAFT-trained toy encoder: a tile of class-1 texture with
    a class-0 patch planted in its top-left quarter, queried by a tile that is all class 0,
    peaks in that quarter."""
    import rasterio
    from fastapi.testclient import TestClient
    from rasterio.transform import from_origin
    from rasterio.warp import transform as warp_transform

    from indexer.job.pipeline import IndexJob
    from search.engine import SearchEngine
    from search.http.app import create_app
    from search.settings import ServeConfig

    settings = load_settings(trained / "index_config.toml")
    settings = dataclasses.replace(settings, job=dataclasses.replace(settings.job, workers=0))
    student = SatelliteEncoder(settings.encoder)
    rng = np.random.default_rng(3)

    def texture(cls: int, n: int) -> np.ndarray:
        reps = -(-n // 60)
        return np.tile(_satellite_scene(cls, rng, 60), (1, reps, reps))[:, :n, :n]

    def write(path: Path, data: np.ndarray, x0: float, y0: float) -> Path:
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                           count=3, dtype="uint8", crs="EPSG:32632",
                           transform=from_origin(x0, y0, 10.0, 10.0)) as dst:
            dst.write(data)
        return path

    x0, y0 = 600_000.0, 5_100_000.0
    background = texture(1, 192)
    arch = tmp_path / "arch"
    arch.mkdir()
    first = write(arch / "mixed.tif", background, x0, y0)
    IndexJob(tmp_path / "probe", settings, student, progress=False, log=lambda m: None).run(
        [str(first)])
    probe = SearchEngine(tmp_path / "probe", ServeConfig(settings), encoder=student)
    t = probe.snapshot.tiles(["west", "south", "east", "north"]).to_pylist()
    mid = t[len(t) // 2]
    (xa, xb), (ya, yb) = warp_transform("EPSG:4326", "EPSG:32632", [mid["west"], mid["east"]],
                                        [mid["north"], mid["south"]])
    c0, c1 = int((xa - x0) // 10) + 1, int((xa + xb) / 2 - x0) // 10  # top-left quarter
    r0, r1 = int((y0 - ya) // 10) + 1, int(y0 - (ya + yb) / 2) // 10
    planted = background.copy()
    planted[:, r0:r1, c0:c1] = texture(0, 192)[:, r0:r1, c0:c1]
    write(arch / "mixed.tif", planted, x0, y0)
    write(arch / "pure0.tif", texture(0, 96), x0 + 5000, y0)
    IndexJob(tmp_path / "idx", settings, student, progress=False, log=lambda m: None).run(
        [str(arch)])
    eng = SearchEngine(tmp_path / "idx", ServeConfig(settings), encoder=student)
    rows = eng.snapshot.tiles(["id", "source", "west", "east", "north", "south"]).to_pylist()
    target = next(r["id"] for r in rows if r["source"].endswith("mixed.tif")
                  and abs(r["west"] - mid["west"]) < 1e-9 and abs(r["north"] - mid["north"])
                  < 1e-9)
    query = next(r["id"] for r in rows if r["source"].endswith("pure0.tif"))
    with TestClient(create_app(eng)) as c:
        body = c.get(f"/tiles/{target}/where.json", params={"tile": query}).json()
    grid = np.asarray(body["grid"])
    assert body["pixels"] == "source"
    assert (body["peak"]["row"], body["peak"]["col"]) in {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert grid[:2, :2].mean() > grid[2:, 2:].mean()
    assert mid["west"] <= body["peak"]["lon"] <= (mid["west"] + mid["east"]) / 2


def test_a_bf16_teacher_trains_a_float32_student_and_exports_the_float32_text_tower(
        world, teacher, capsys):
    """encoder.precision = bf16 (the CUDA default, here forced on the CPU): the frozen teacher
    embeds the photos with bf16 weights, but the student starts from (and keeps) float32
    weights and the export carries the float32 text tower, so the export's text queries are
    the float32 teacher's; the photo cache is kept apart from a float32 teacher's."""
    root = world.train_csv.parent
    cfg = write_config(root, "bf16.toml", out="bf16", steps=4, batch_size=8,
                       checkpoint_every=4)
    cfg.write_text(cfg.read_text().replace('device = "cpu"\n',
                                           'device = "cpu"\nprecision = "bf16"\n'))
    assert train_main(["--config", str(cfg), "-q"]) == 0
    run = root / "bf16"
    state = torch.load(run / "satfind-graft.pt", weights_only=True)["state_dict"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    for k, v in teacher.model.state_dict().items():
        if not k.startswith("visual."):
            assert torch.equal(state[k], v), k  # bit for bit: not rounded through bf16
    exported = SatelliteEncoder(load_settings(run / "index_config.toml").encoder)
    texts = ["a red field", "a lake"]
    np.testing.assert_allclose(exported.encode_text(texts), teacher.encode_text(texts),
                               atol=1e-6)
    ckpt = torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert {v.dtype for v in ckpt["student"].values() if v.is_floating_point()} \
        == {torch.float32}
    caches = [p.parent.name for p in (run / "teacher-cache").glob("*/teacher.json")]
    assert len(caches) == 1
    from training.teacher import teacher_key

    assert caches[0] != teacher_key(teacher)  # bf16 photo vectors are cached apart
    assert caches[0] == teacher_key(SatelliteEncoder(dataclasses.replace(
        teacher.spec, precision="bf16")))
    # Resuming it with a float32 teacher would mix photo vectors of two types: refused.
    cfg.write_text(cfg.read_text().replace('precision = "bf16"', 'precision = "fp32"'))
    assert train_main(["--config", str(cfg), "-q", "--resume"]) == 2
    assert "config changed" in (err := capsys.readouterr().err) and "teacher_precision" in err
