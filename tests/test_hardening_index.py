"""Indexing under hostile or careless input (issue 10): NaN pixels, the antimeridian,
devices and FIFOs, runaway rasters, bad JSON, symlinked folders, full or read-only disks,
killed workers, out-of-range config values, STAC hrefs outside the archive, native warnings."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import signal
import subprocess
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from indexer import cli
from indexer.config import load_settings
from indexer.configfile import ConfigError
from indexer.job.pipeline import IndexJob
from indexer.job.plan import plan_sources
from indexer.job.read import TileDataset
from indexer.job.report import JobReport
from indexer.rasters.discovery import discover
from indexer.rasters.grid import lon_spans
from indexer.store.snapshot import IndexSnapshot
from indexer.store.writer import IndexWriter
from tests.conftest import OFFLINE_CONFIG, make_raster, run_cli
from tests.helpers import snapshot_sql


def _with(settings, **sections):
    return dataclasses.replace(settings, **{
        name: dataclasses.replace(getattr(settings, name), **fields)
        for name, fields in sections.items()})


def _run(idx, settings, encoder, archives):
    return IndexJob(idx, settings, encoder, progress=False).run([str(a) for a in archives])


def _cli(*args: str) -> int:
    return cli.main([*args, "--config", str(OFFLINE_CONFIG), "-q"])


def _means(snap) -> dict[tuple[int, int], float]:
    """Mean thumbnail brightness per (x, y)."""
    out = {}
    for t in snap.tiles(["id", "x", "y"]).to_pylist():
        img = np.asarray(Image.open(io.BytesIO(snap.thumbnail(t["id"]))).convert("L"), float)
        valid = img[img > 5]
        out[(t["x"], t["y"])] = float(valid.mean()) if valid.size else 0.0
    return out


# --- 5: NaN and inf are nodata ------------------------------------------------------------

def test_one_nan_pixel_does_not_blacken_a_float_raster(tmp_path, settings, encoder):
    data = np.random.default_rng(0).uniform(100, 3000, (3, 256, 256)).astype(np.float32)
    data[:, 10, 10] = np.nan
    data[0, 200, 30] = np.inf
    make_raster(tmp_path / "a" / "f.tif", data=data)  # no nodata value declared
    report = _run(tmp_path / "idx", settings, encoder, [tmp_path / "a"])
    assert report.tiles_written > 4 and not report.problems
    snap = IndexSnapshot.open(tmp_path / "idx")
    means = list(_means(snap).values())
    assert min(means) > 40, "tiles came out black"
    vecs = snap.get_vectors(snap.tiles(["id"])["id"].to_numpy())
    assert len(np.unique(vecs.round(3), axis=0)) == len(vecs), "identical vectors"


def test_a_raster_without_a_finite_pixel_is_skipped_in_one_line(tmp_path, settings, encoder):
    make_raster(tmp_path / "a" / "good.tif", size=128, seed=1)
    make_raster(tmp_path / "a" / "nan.tif", data=np.full((3, 128, 128), np.nan, np.float32),
                lon=11.95)
    report = _run(tmp_path / "idx", settings, encoder, [tmp_path / "a"])
    (p,) = report.problems
    assert "nan.tif" in str(p) and "no finite pixel" in str(p)
    assert report.rasters_indexed == 1


# --- 6: the antimeridian ------------------------------------------------------------------

def test_lon_spans():
    assert lon_spans(10, 20, 1.0) == ((10, 20, 0.0),)
    assert lon_spans(179.5, 180.5, 1.0) == ((179.5, 180.0, 0.0), (-180.0, -179.5, -360.0))
    assert lon_spans(180.5, 181.5, 1.0) == ((-179.5, -178.5, -360.0),)
    assert lon_spans(-180.5, -179.5, 2.0) == ((179.5, 180.0, 720.0), (-180.0, -179.5, 0.0))
    assert lon_spans(0, 360, 1.0) == ((0, 180.0, 0.0), (-180.0, 0, -360.0))
    assert lon_spans(179.0, 181.0, 0.0) == ((179.0, 180.0, 0.0), (-180.0, -179.0, 0.0))


def _two_sided(tmp_path, name, crs, transform, width, height, line_col):
    """A raster dark west of the antimeridian (column < line_col), bright east of it."""
    data = np.full((3, height, width), 60, np.uint8)
    data[:, :, line_col:] = 200
    path = tmp_path / "a" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3,
                       dtype="uint8", crs=crs, transform=transform) as dst:
        dst.write(data)
    return path


def _check_two_sides(snap, zoom):
    means = _means(snap)
    last = 2**zoom - 1
    west = {xy: m for xy, m in means.items() if xy[0] > last // 2}
    east = {xy: m for xy, m in means.items() if xy[0] <= last // 2}
    assert west and east, f"only one side of the antimeridian was indexed: {sorted(means)}"
    assert max(x for x, _ in west) == last and min(x for x, _ in east) == 0
    # each side shows its own pixels (allowing the tiles the line cuts through)
    assert np.median(list(west.values())) < 110 < np.median(list(east.values()))


def test_utm_raster_across_the_antimeridian(tmp_path, settings, encoder):
    from rasterio.warp import transform as warp

    # UTM 60S around Fiji; the 180th meridian runs through the middle of the raster.
    (x180,), (y,) = warp("EPSG:4326", "EPSG:32760", [180.0], [-16.5])
    size, res = 400, 10.0
    left, top = x180 - size * res / 2, y + size * res / 2
    path = _two_sided(tmp_path, "fiji.tif", "EPSG:32760", from_origin(left, top, res, res),
                      size, size, size // 2)
    s = _with(settings, tiling={"zoom": 15})
    report = _run(tmp_path / "idx", s, encoder, [path])
    assert not report.problems, report.problems
    _check_two_sides(IndexSnapshot.open(tmp_path / "idx"), 15)


def test_lonlat_raster_from_179_5_to_180_5(tmp_path, settings, encoder):
    path = _two_sided(tmp_path, "ll.tif", "EPSG:4326", from_origin(179.5, -16.0, 0.005, 0.005),
                      200, 200, 100)
    report = _run(tmp_path / "idx", _with(settings, tiling={"zoom": 10}), encoder, [path])
    assert not report.problems
    _check_two_sides(IndexSnapshot.open(tmp_path / "idx"), 10)


def test_lonlat_raster_written_past_180_is_read_at_its_real_place(tmp_path, settings, encoder):
    data = np.full((3, 200, 200), 200, np.uint8)
    make = dict(driver="GTiff", width=200, height=200, count=3, dtype="uint8", crs="EPSG:4326",
                transform=from_origin(180.5, -16.0, 0.005, 0.005))
    (tmp_path / "a").mkdir()
    with rasterio.open(tmp_path / "a" / "east.tif", "w", **make) as dst:
        dst.write(data)
    report = _run(tmp_path / "idx", _with(settings, tiling={"zoom": 10}), encoder,
                  [tmp_path / "a"])
    assert not report.problems, report.problems
    snap = IndexSnapshot.open(tmp_path / "idx")
    bounds = snap.tiles(["west", "east"]).to_pylist()
    assert all(-180 <= b["west"] < -178 for b in bounds)
    assert min(_means(snap).values()) > 150


def test_web_mercator_raster_past_the_world_edge(tmp_path, settings, encoder):
    res = 100.0
    path = _two_sided(tmp_path, "merc.tif", "EPSG:3857",
                      from_origin(20037508.34 - 100 * res, -1800000.0, res, res), 200, 200, 100)
    report = _run(tmp_path / "idx", _with(settings, tiling={"zoom": 11}), encoder, [path])
    assert not report.problems, report.problems
    _check_two_sides(IndexSnapshot.open(tmp_path / "idx"), 11)


# --- 7: devices, FIFOs, runaway rasters -----------------------------------------------------

def test_device_and_fifo_are_refused_not_read(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    lst = tmp_path / "list.txt"
    lst.write_text(f"/dev/zero\n{fifo}\n")
    # one real process for all three; a hang would raise TimeoutExpired (and kill it)
    r = run_cli("/dev/zero", str(fifo), str(lst), "--index", str(tmp_path / "idx"),
                "--config", str(OFFLINE_CONFIG), "-q", timeout=90)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    refused = [ln for ln in r.stderr.splitlines() if "not a regular file" in ln]
    assert len(refused) == 4  # /dev/zero and the FIFO, directly and through the list


def _sparse_giant(path: Path, side: int = 100_000) -> Path:
    """A small file that claims side x side pixels (blocks never written)."""
    from rasterio.warp import transform as warp

    (x,), (y,) = warp("EPSG:4326", "EPSG:32632", [11.88], [43.46])
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3,
                       dtype="uint8", crs="EPSG:32632", transform=from_origin(x, y, 5.0, 5.0),
                       tiled=True, compress="deflate", sparse_ok=True) as dst:
        dst.write(np.full((3, 256, 256), 99, np.uint8),
                  window=rasterio.windows.Window(0, 0, 256, 256))
    assert path.stat().st_size < 3_000_000
    return path


def test_runaway_raster_is_a_one_line_skip(tmp_path, settings, encoder):
    giant = _sparse_giant(tmp_path / "a" / "giant.tif")
    make_raster(tmp_path / "a" / "good.tif", size=128)
    lines = []
    job = IndexJob(tmp_path / "idx", settings, encoder, progress=False, log=lines.append)
    report = job.run([str(tmp_path / "a")])
    (p,) = report.problems
    assert str(giant) in str(p) and "job.max_tiles_per_raster" in str(p)
    assert report.rasters_indexed == 1
    assert any(line.startswith("plan: 1 raster(s) to index") for line in lines)


def test_plans_are_lazy_memory_does_not_grow_with_tiles(tmp_path, settings, encoder):
    giant = _sparse_giant(tmp_path / "a" / "giant.tif")
    s = _with(settings, job={"max_tiles_per_raster": 10**9})
    report = JobReport()
    with IndexWriter(tmp_path / "idx", encoder.identity, s.store) as w:
        plans, pendings = plan_sources(w, discover([str(giant)], s.discovery)[0], s,
                                       encoder.image_size, report, problem=print)
    ds = TileDataset(plans, encoder.image_size, s.tiling, s.job)
    assert sum(ds.tiles(i) for i in range(len(ds))) == pendings[0].remaining > 2_000_000
    assert len(pickle.dumps(ds)) < 20_000  # what each worker process receives
    far = ds[len(ds) - 1]  # the last strip is computed, not looked up
    assert (far["x"][-1], far["y"]) == (plans[-1].block.x1, plans[-1].block.y1)


# --- 8: one bad file does not sink the run --------------------------------------------------

def test_deep_json_and_a_bad_collection_item_do_not_sink_the_run(tmp_path, settings, encoder):
    a = tmp_path / "a"
    good = make_raster(a / "good.tif", size=128)
    other = make_raster(a / "other.tif", size=128, lon=11.95)
    (a / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "ok", "geometry": None,
            "properties": {"datetime": "2020-05-01T00:00:00Z", "platform": "sat-1"},
            "links": [], "assets": {"data": {"href": "other.tif", "roles": ["data"],
                                             "type": "image/tiff"}}}
    broken = {"type": "Feature", "stac_version": "1.0.0", "id": "broken"}
    (a / "items.json").write_text(json.dumps({"type": "FeatureCollection",
                                              "features": [broken, item]}))
    report = _run(tmp_path / "idx", settings, encoder, [a])
    assert report.rasters_indexed == 2, report.problems
    (p,) = report.problems
    assert "items.json (feature 0)" in str(p)
    rows = snapshot_sql(IndexSnapshot.open(tmp_path / "idx"),
        "SELECT source, any_value(sensor) AS s FROM tiles GROUP BY 1").to_pylist()
    sensors = {r["source"]: r["s"] for r in rows}
    assert sensors[str(other)] == "sat-1" and str(good) in sensors


def test_symlinked_subfolders_are_followed_and_loops_end(tmp_path, settings, encoder):
    real = tmp_path / "elsewhere"
    make_raster(real / "linked.tif", size=128)
    a = tmp_path / "a"
    make_raster(a / "here.tif", size=128, lon=11.95)
    (a / "sub").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(a, target_is_directory=True)  # a cycle back to the archive
    sources, problems = discover([str(a)], settings.discovery)
    assert not problems
    assert sorted(Path(s.path).name for s in sources) == ["here.tif", "linked.tif"]


# --- 9: one line, exit 2, index intact ------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A real 3 MB filesystem (tmpfs) to fill up; skips where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _index_then_grow(idx: Path, tmp_path: Path) -> tuple[Path, int]:
    a = tmp_path / "a"
    make_raster(a / "one.tif", size=128)
    assert _cli(str(a), "--index", str(idx)) == 0
    gen = json.loads((idx / "manifest.json").read_text())["generation"]
    make_raster(tmp_path / "b" / "big.tif", size=1600, seed=5, lon=11.99)
    return tmp_path / "b", gen


def test_full_disk_is_one_line_and_keeps_the_last_commit(small_fs, tmp_path, capsys):
    idx = small_fs / "idx"
    more, gen = _index_then_grow(idx, tmp_path)
    before = IndexSnapshot.open(idx).ntotal
    filler = small_fs / "filler"
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    filler.write_bytes(b"\0" * max(0, free - 150_000))
    capsys.readouterr()
    assert _cli(str(more), "--index", str(idx)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device" in err and f"intact at commit {gen}" in err
    assert IndexSnapshot.open(idx).ntotal == before


def test_read_only_index_is_one_line(small_fs, tmp_path, capsys):
    idx = small_fs / "idx"
    more, gen = _index_then_grow(idx, tmp_path)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        capsys.readouterr()
        assert _cli(str(more), "--index", str(idx)) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Read-only file system" in err
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert IndexSnapshot.open(idx).generation == gen


def test_index_path_under_a_file_is_one_line(tmp_path, capsys):
    make_raster(tmp_path / "a" / "one.tif", size=128)
    (tmp_path / "file").write_text("x")
    assert _cli(str(tmp_path / "a"), "--index", str(tmp_path / "file" / "idx")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and "file" in err


def test_a_killed_reader_process_is_one_line(tmp_path, capfd, monkeypatch):
    from indexer.job import read as dataset

    make_raster(tmp_path / "a" / "big.tif", size=1200, seed=2)  # 225 tiles
    real = dataset.TileDataset.__getitem__

    def dying(self, i):
        if i == len(self) * 2 // 3:  # a strip two thirds in
            os.kill(os.getpid(), signal.SIGKILL)  # in the forked worker
        return real(self, i)

    monkeypatch.setattr(dataset.TileDataset, "__getitem__", dying)
    rc = _cli(str(tmp_path / "a"), "--index", str(tmp_path / "idx"))
    err = capfd.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "worker process died" in err and "intact at commit" in err
    snap = IndexSnapshot.open(tmp_path / "idx")
    ids = snap.tiles(["id"])["id"].to_pylist()
    assert len(ids) == len(set(ids)) == snap.ntotal  # opens, no duplicates


@pytest.mark.timeout(120)
def test_a_reader_killed_mid_hand_over_is_one_line_without_its_signal(tmp_path, capfd,
                                                                      monkeypatch):
    """A reader killed with half a batch in the data pipe, its SIGCHLD unheard (as once in
    CI, where the job then waited forever in the main thread's read of the rest): the
    job's reader watch ends the read, and the death is one line, in torch's words."""
    import struct
    import sys
    import time

    from torch.utils.data._utils import signal_handling

    from indexer.job import read as dataset

    make_raster(tmp_path / "a" / "big.tif", size=1200, seed=2)  # 225 tiles
    real = dataset.TileDataset.__getitem__

    def dying(self, i):
        if i == len(self) * 2 // 3:  # in the forked reader: torch's worker loop's queue
            frame = sys._getframe()
            while "data_queue" not in frame.f_locals:
                frame = frame.f_back
            queue = frame.f_locals["data_queue"]
            time.sleep(1.0)  # its batches before are taken, their shared memory too
            with queue._wlock:  # between two whole messages: a header, a few bytes of 1 MiB
                os.write(queue._writer.fileno(), struct.pack("!i", 1 << 20) + b"half a batch")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, i)

    monkeypatch.setattr(dataset.TileDataset, "__getitem__", dying)
    monkeypatch.setattr(signal_handling, "_set_SIGCHLD_handler", lambda: None)
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # nobody hears the death
    try:
        t = time.monotonic()
        rc = _cli(str(tmp_path / "a"), "--index", str(tmp_path / "idx"))
        took = time.monotonic() - t
    finally:
        signal.signal(signal.SIGCHLD, previous)
    err = capfd.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "worker process died" in err and "killed by signal: Killed" in err
    assert "intact at commit" in err and took < 60, (err, took)
    snap = IndexSnapshot.open(tmp_path / "idx")
    ids = snap.tiles(["id"])["id"].to_pylist()
    assert len(ids) == len(set(ids)) == snap.ntotal  # opens, no duplicates


def test_a_reader_dying_mid_hand_over_is_its_death(monkeypatch):
    """A reader killed while handing a batch over surfaces as the data queue's EOFError (or
    a ConnectionError) before torch's SIGCHLD handler says which reader died: the job asks
    torch's check (waiting a bounded time), and reports the death, not the EOFError; with
    no reader dead, the error is left as it is."""
    import time

    import torch

    from indexer.job import runner

    def dead():
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")

    monkeypatch.setattr(torch._C, "_error_if_any_worker_fails", dead)
    for e in (EOFError(), ConnectionResetError(104, "reset"),
              RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")):
        got = runner.reader_death(e)
        assert got is not None and "worker process died (DataLoader worker (pid 4242) is " \
            "killed by signal: Killed" in str(got)
    monkeypatch.setattr(torch._C, "_error_if_any_worker_fails", lambda: None)
    monkeypatch.setattr(runner, "DEATH_WAIT_S", 0.2)
    t = time.monotonic()
    assert runner.reader_death(EOFError()) is None and time.monotonic() - t < 1.0
    assert runner.reader_death(ValueError("no")) is None
    assert runner.reader_death(RuntimeError("something else")) is None


# --- 10: every numeric key has a range ------------------------------------------------------

def _settings_classes():
    from encoder.identity import EncoderSpec
    from indexer.config import DiscoverySettings, JobSettings, StoreSettings, TilingSettings
    from search.settings import ApiSettings, SearchSettings
    from training.settings import TrainSettings

    return {"encoder": EncoderSpec, "discovery": DiscoverySettings, "tiling": TilingSettings,
            "job": JobSettings, "store": StoreSettings, "search": SearchSettings,
            "api": ApiSettings, "train": TrainSettings}


def test_every_numeric_setting_declares_a_range():
    from typing import get_type_hints

    for section, cls in _settings_classes().items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            numeric = hints[f.name] in (int, float) or str(hints[f.name]).startswith(
                ("tuple[int", "tuple[float"))
            if numeric:
                assert "range" in f.metadata, f"{section}.{f.name} has no declared range"


@pytest.mark.parametrize("section,key,value,needle", [
    ("tiling", "target_gsd_m", "inf", "finite"),
    ("tiling", "target_gsd_m", "nan", "finite"),
    ("tiling", "reflectance_divisor", "nan", "finite"),
    ("tiling", "target_gsd_m", "-1", "out of range"),
    ("job", "workers", "100000", "job.workers = 100000 is out of range"),
    ("job", "batch_size", "-1", "out of range"),
    ("job", "gpus_per_actor", "0", "out of range"),
    ("store", "nlist", "-1", "out of range"),
    ("search", "text_cache_size", "-1", "search.text_cache_size = -1 is out of range"),
    ("search", "negative_weight", "nan", "finite"),
    ("api", "max_upload_bytes", "0", "out of range"),
    ("encoder", "seed", "-1", "out of range"),
])
def test_out_of_range_values_are_refused_at_load(tmp_path, section, key, value, needle):
    from search.settings import load_serve_config

    cfg = tmp_path / "c.toml"
    text = '[encoder]\nmodel = "satfind-tiny"\nrandom_weights = true\n'
    text += f"{key} = {value}\n" if section == "encoder" else f"[{section}]\n{key} = {value}\n"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_serve_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and f"{section}.{key}" in msg


def test_pq_m_that_does_not_divide_the_dimension_fails_at_start(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(OFFLINE_CONFIG.read_text().replace("[store]", "[store]\npq_m = 7"))
    make_raster(tmp_path / "a" / "one.tif", size=128)
    rc = cli.main([str(tmp_path / "a"), "--index", str(tmp_path / "idx"), "--config", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "store.pq_m = 7 does not divide" in err and "\n" not in err
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("encoder_lines,needle", [
    ('model = "satfind-tiny"\nrandom_weights = true\ndevice = "meta"', "encoder.device"),
    ('model = "bad.json"\nrandom_weights = true', "not a readable JSON model config"),
])
def test_bad_encoder_settings_are_one_line(tmp_path, capsys, encoder_lines, needle):
    (tmp_path / "bad.json").write_text("{not json")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[encoder]\n{encoder_lines}\n")
    make_raster(tmp_path / "a" / "one.tif", size=128)
    rc = cli.main([str(tmp_path / "a"), "--index", str(tmp_path / "idx"), "--config", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err


def test_index_config_documents_the_new_keys():
    s = load_settings(Path(__file__).parents[1] / "index_config.toml")
    assert s.job.max_tiles_per_raster == 1_000_000
    text = (Path(__file__).parents[1] / "index_config.toml").read_text()
    for key in ("max_tiles_per_raster", "allowed_roots", "max_image_pixels",
                "max_concurrent_decodes", "trusted_hosts"):
        assert key in text, key


# --- 11: STAC hrefs stay inside the archive -------------------------------------------------

@pytest.mark.parametrize("href", ["../../etc/passwd", "/etc/passwd", "../outside.tif"])
def test_stac_hrefs_outside_the_item_folder_are_refused(tmp_path, settings, href):
    make_raster(tmp_path / "outside.tif", size=64)
    a = tmp_path / "a"
    a.mkdir()
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "x", "geometry": None,
            "properties": {"datetime": "2020-05-01T00:00:00Z"}, "links": [],
            "assets": {"data": {"href": href, "roles": ["data"], "type": "image/tiff"}}}
    (a / "item.json").write_text(json.dumps(item))
    sources, problems = discover([str(a / "item.json")], settings.discovery)
    assert not sources
    (p,) = problems
    assert "outside the item's folder" in str(p)
    allowed = dataclasses.replace(settings.discovery, allowed_roots=(str(tmp_path),))
    if href == "../outside.tif":  # an allowed root lets it in
        assert len(discover([str(a / "item.json")], allowed)[0]) == 1


# --- 13: native warnings are one summary line ------------------------------------------------

def _corrupt_jpeg_tiles(path: Path) -> Path:
    """A tiled JPEG GeoTIFF whose tiles decode with libjpeg warnings (data still readable)."""
    make_raster(path, size=1024, compress="jpeg", tiled=True, blockxsize=256, blockysize=256,
                seed=3)
    b = bytearray(path.read_bytes())
    with rasterio.open(path) as src:
        blocks = [(int(src.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=1)),
                   int(src.get_tag_item(f"BLOCK_SIZE_{i}_{j}", "TIFF", bidx=1)))
                  for i in range(4) for j in range(4)]
    for off, size in blocks:
        b[off + size // 2: off + size - 2] = b"\0" * (size - 2 - size // 2)
    path.write_bytes(bytes(b))
    return path


def test_gdal_and_faiss_warnings_become_one_summary_line(tmp_path, capfd):
    _corrupt_jpeg_tiles(tmp_path / "a" / "noisy.tif")
    make_raster(tmp_path / "a" / "many.tif", size=3200, lon=11.99, seed=9)  # ~1,600 tiles
    cfg = tmp_path / "c.toml"
    cfg.write_text(OFFLINE_CONFIG.read_text().replace(
        "[store]", "[store]\npq_m = 8").replace("ivf_min_vectors = 50000",
                                                "ivf_min_vectors = 1000"))
    rc = cli.main([str(tmp_path / "a"), "--index", str(tmp_path / "idx"), "--config", str(cfg),
                   "-q"])
    err = capfd.readouterr().err
    assert rc == 0, err
    assert "IVF-PQ" in IndexSnapshot.open(tmp_path / "idx").manifest.index.chosen
    assert "CPLE_" not in err.replace(err.split("(first: ")[-1], "") and "WARNING" not in err
    (summary,) = [ln for ln in err.splitlines() if "warning(s) from GDAL/FAISS" in ln]
    count = int(summary.split("satfind-index: ")[1].split(" ")[0])
    assert count > 10 and "-v shows them" in summary
    assert len(err.strip().splitlines()) == 2  # the plan line and the summary line
    # the tile bounds are real mercator tiles (the run still indexed everything it could)
    t = IndexSnapshot.open(tmp_path / "idx").tiles(["x", "y", "z", "west"]).to_pylist()[0]
    assert mercantile.bounds(t["x"], t["y"], t["z"]).west == pytest.approx(t["west"])
