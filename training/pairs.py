"""GRAFT training data: photos + rasters -> satellite patches on disk and a pair manifest.

Rasters are found and read with the indexer's own readers (discovery, band selection,
scaling, nodata rules), so the encoder is trained on patches that look exactly like the
tiles it will index. Each sample's patch is warped once from its raster into a uint8
memory-mapped array (`patches.npy`); training then never waits on GDAL. The Parquet pair
manifest records, per sample, the patch grid, the raster and its acquisition time, every
photo inside with its pixel position, and the train/validation split.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import mercantile
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rasterio.errors import RasterioError
from torch.utils.data import DataLoader, Dataset

from indexer.config import RemoteSettings, Settings
from indexer.errors import InputError
from indexer.job.read import worker_init
from indexer.rasters import vsi
from indexer.rasters.discovery import discover
from indexer.rasters.grid import Window
from indexer.rasters.inspect import RasterInfo, inspect_raster
from indexer.rasters.reader import RasterReader
from indexer.rasters.remote import describe, identities, is_remote, public
from training.photos import PairError, Photo
from training.samples import Sample, build_samples

PAIRS_VERSION = 2
PROGRESS_EVERY = 2048  # samples between saved reading positions
VAL_BLOCK_PATCHES = 4  # validation is held out by map blocks this many patches wide


@dataclass
class PairSet:
    photos: list[Photo]
    samples: list[Sample]
    rasters: list[str]  # per sample
    val: np.ndarray  # bool per sample
    patches: np.ndarray  # uint8 [N, 3, S, S] (memory-mapped)
    counts: dict

    @property
    def train_index(self) -> np.ndarray:
        return np.flatnonzero(~self.val)

    @property
    def val_index(self) -> np.ndarray:
        return np.flatnonzero(self.val)


def raster_catalogue(archives: list[str], settings: Settings) -> tuple[list[RasterInfo],
                                                                         list[str]]:
    """Readable rasters (and one-line problems for the others) from ARCHIVE-like paths."""
    sources, problems = discover(list(archives), settings.discovery)
    infos, notes = [], [str(p) for p in problems]
    for src in sources:
        try:
            infos.append(inspect_raster(src, settings.discovery, settings.tiling,
                                        settings.remote))
        except InputError as e:
            notes.append(str(e))
    return infos, notes


def _mercator_bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    w, s, e, n = info.lonlat_bounds
    (x0, y0), (x1, y1) = mercantile.xy(w, s), mercantile.xy(e, n)
    return x0, y0, x1, y1


def candidate_rasters(photo: Photo, centre: tuple[float, float], rasters: list[RasterInfo],
                      bounds: list[tuple[float, float, float, float]], window_days: float
                      ) -> list[int]:
    """Rasters whose footprint holds the patch centre, in the order to try them: with a time
    window, only those acquired within it of the photo, nearest first; without one, the most
    recent first (undated last)."""
    x, y = centre
    inside = [i for i, (x0, y0, x1, y1) in enumerate(bounds) if x0 <= x <= x1 and y0 <= y <= y1]
    if window_days > 0:
        if photo.time is None:
            return []
        dt = {i: abs((rasters[i].acquired - photo.time).total_seconds()) / 86400
              for i in inside if rasters[i].acquired is not None}
        return sorted((i for i in dt if dt[i] <= window_days), key=lambda i: (dt[i], i))

    def newest_first(i: int):
        t = rasters[i].acquired
        return (t is None, -(t.timestamp() if t else 0), i)

    return sorted(inside, key=newest_first)


def _run_key(photos: list[Photo], rasters: list[RasterInfo], settings: Settings, size: int,
             train) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([PAIRS_VERSION, size, train.jitter, train.seed, train.val_fraction,
                         train.time_window_days, settings.tiling.key(), repr(settings.discovery)]
                        ).encode())
    for p in photos:
        h.update(f"{p.path}|{p.lat}|{p.lon}|{p.time}".encode())
    far = [r.path for r in rasters if is_remote(r.path)]
    versions = dict(zip(far, identities([(p, None, None) for p in far], settings.remote),
                        strict=True))
    for r in rasters:
        if r.path in versions:  # remote: its ETag / Last-Modified, asked again (one HEAD)
            v = versions[r.path]
            seen = str(v) if isinstance(v, InputError) else f"{v.size}|{v.version}"
            h.update(f"{public(r.path)}|{seen}".encode())
        else:
            st = os.stat(r.path)
            h.update(f"{r.path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


class PatchDataset(Dataset):
    """Item k: sample k's patch from the first candidate raster where it has enough valid
    pixels, or why there is none. Each worker reads through its own RasterReader."""

    def __init__(self, samples: list[Sample], photos: list[Photo], rasters: list[RasterInfo],
                 tiling, window_days: float, start: int = 0,
                 remote: RemoteSettings | None = None):
        self.samples, self.photos, self.rasters = samples, photos, rasters
        self.tiling, self.window_days, self.start = tiling, window_days, start
        self.remote = remote
        self.bounds = [_mercator_bounds(r) for r in rasters]
        self._reader: RasterReader | None = None  # made in the process that reads

    def __len__(self) -> int:
        return len(self.samples) - self.start

    def __getitem__(self, item: int) -> dict:
        k = self.start + item
        s = self.samples[k]
        photo = self.photos[s.anchor]
        cands = candidate_rasters(photo, s.centre, self.rasters, self.bounds, self.window_days)
        if not cands:
            covered = candidate_rasters(photo, s.centre, self.rasters, self.bounds, 0)
            return {"k": k, "why": "no_raster_in_time" if covered else "no_raster"}
        error = None
        for i in cands:
            try:
                if self._reader is None:
                    self._reader = RasterReader(self.tiling, remote=self.remote)
                read = self._reader.read(self.rasters[i],
                                         Window.square(s.left, s.top, s.res, s.size))
            except (RasterioError, OSError) as e:
                error = f"{public(self.rasters[i].path)}: {describe(e)}"
                continue
            if read.nodata_fraction <= self.tiling.max_nodata_fraction:
                return {"k": k, "raster": i, "rgb": read.rgb}
        return {"k": k, "why": "read_error" if error else "nodata", "error": error}


def _save_progress(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def build_pairs(photos: list[Photo], rasters: list[RasterInfo], settings: Settings, train,
                size: int, out: Path, progress: bool = False, workers: int = 0) -> PairSet:
    """Cut, read and record one sample per photo (see module doc); reuses `out` when it
    already holds the pairs of the same inputs and settings, and an interrupted read goes on
    from its last saved position (every PROGRESS_EVERY samples)."""
    out.mkdir(parents=True, exist_ok=True)
    key = _run_key(photos, rasters, settings, size, train)
    meta_path, manifest = out / "pairs.json", out / "pairs.parquet"
    if meta_path.is_file() and manifest.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return _load(photos, manifest, out / "patches.npy", meta)
    if not rasters:
        raise PairError("no readable raster among train.rasters")
    samples = build_samples(photos, size=size, gsd_m=settings.tiling.target_gsd_m,
                            jitter=train.jitter, seed=train.seed)
    tmp_patches, progress_path = out / ".patches.npy.tmp", out / ".pairs-progress.json"
    state = {"key": key, "next": 0, "kept": [], "error": None,
             "counts": {"photos": len(photos), "no_raster": 0, "no_raster_in_time": 0,
                        "nodata": 0, "read_error": 0}}
    shape = (len(samples), 3, size, size)
    if progress_path.is_file() and tmp_patches.is_file():
        saved = json.loads(progress_path.read_text())
        if saved.get("key") == key:
            state = saved
    if state["next"]:
        patches = np.load(tmp_patches, mmap_mode="r+")
    else:
        patches = np.lib.format.open_memmap(tmp_patches, mode="w+", dtype=np.uint8, shape=shape)
    counts, kept = state["counts"], state["kept"]
    dataset = PatchDataset(samples, photos, rasters, settings.tiling, train.time_window_days,
                           start=state["next"], remote=settings.remote)
    if workers and any(is_remote(r.path) for r in rasters):
        vsi.before_fork()  # no HTTP connection shared with the reader processes
    loader = DataLoader(dataset, batch_size=64, shuffle=False, num_workers=workers,
                        collate_fn=list, worker_init_fn=worker_init if workers else None)
    from tqdm import tqdm

    bar = tqdm(total=len(samples), initial=state["next"], disable=not progress, unit="patch",
               desc="reading patches")
    since_save = 0
    for batch in loader:
        for item in batch:
            if "rgb" in item:
                patches[len(kept)] = item["rgb"]
                kept.append((item["k"], item["raster"]))
            else:
                counts[item["why"]] += 1
                state["error"] = state["error"] or item.get("error")
            state["next"] = item["k"] + 1
        bar.update(len(batch))
        since_save += len(batch)
        if since_save >= PROGRESS_EVERY:
            patches.flush()
            _save_progress(progress_path, state)
            since_save = 0
    bar.close()
    patches.flush()
    del patches
    if state["error"]:
        print(f"satfind-train: {counts['read_error']} patches could not be read, e.g. "
              f"{state['error']}")
    kept = [(samples[k], i) for k, i in kept]
    if not kept:
        tmp_patches.unlink()
        progress_path.unlink(missing_ok=True)
        raise PairError(f"none of the {len(photos)} photos lies inside a readable raster "
                        f"(no raster: {counts['no_raster']}, none within the time window: "
                        f"{counts['no_raster_in_time']}, too much nodata: {counts['nodata']}, "
                        f"read errors: {counts['read_error']})")
    if len(kept) < 2:
        raise PairError("only one photo has a satellite patch: too few to train on")
    val = spatial_split([s for s, _ in kept], train.val_fraction, train.seed + 1)
    counts.update(samples=len(kept), train=int((~val).sum()), val=int(val.sum()))
    _write_manifest(kept, photos, rasters, val, manifest)
    os.replace(tmp_patches, out / "patches.npy")
    meta = {"key": key, "version": PAIRS_VERSION, "size": size, "counts": counts}
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)  # written last: its key says the pairs are complete
    progress_path.unlink(missing_ok=True)
    return _load(photos, manifest, out / "patches.npy", meta)


def spatial_split(samples: list[Sample], fraction: float, seed: int,
                  block_patches: int = VAL_BLOCK_PATCHES) -> np.ndarray:
    """Validation samples (bool mask) chosen by whole map blocks of `block_patches` patch
    widths, in a seeded random order, until `fraction` of the samples is reached: validation
    patches then lie away from most training patches, so validation recall measures places
    the student has not seen. Falls back to single samples when there are too few blocks."""
    n = len(samples)
    target = min(n - 1, max(1, round(fraction * n)))
    width = max(s.size * s.res for s in samples) * block_patches
    centre = np.array([s.centre for s in samples])
    _, block = np.unique(np.floor(centre / width).astype(np.int64), axis=0,
                         return_inverse=True)
    block = block.ravel()
    rng = np.random.default_rng(seed)
    val = np.zeros(n, dtype=bool)
    if block.max() + 1 >= 4:
        for b in rng.permutation(block.max() + 1):
            if val.sum() >= target:
                break
            if val.sum() + (block == b).sum() <= n - 1:
                val |= block == b
    if not val.any():
        val[rng.choice(n, size=target, replace=False)] = True
    return val


def _write_manifest(kept: list[tuple[Sample, int]], photos: list[Photo],
                    rasters: list[RasterInfo], val: np.ndarray, path: Path) -> None:
    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    samples = [s for s, _ in kept]
    pq.write_table(pa.table({
        "patch": np.arange(len(kept)),
        "anchor": [photos[s.anchor].path for s in samples],
        "raster": [rasters[i].path for _, i in kept],
        "acquired": [iso(rasters[i].acquired) for _, i in kept],
        "photo_time": [iso(photos[s.anchor].time) for s in samples],
        "left": [s.left for s in samples], "top": [s.top for s in samples],
        "res": [s.res for s in samples], "size": [s.size for s in samples],
        "photos": [[photos[j].path for j in s.photos] for s in samples],
        "rows": [list(s.rows) for s in samples], "cols": [list(s.cols) for s in samples],
        "split": ["val" if v else "train" for v in val],
    }), path)


def _load(photos: list[Photo], manifest: Path, patches_path: Path, meta: dict) -> PairSet:
    t = pq.read_table(manifest).to_pydict()
    index = {p.path: i for i, p in enumerate(photos)}
    samples = []
    for k in range(len(t["patch"])):
        try:
            ids = tuple(index[p] for p in t["photos"][k])
        except KeyError as e:
            raise PairError(f"{manifest}: photo {e} is not among train.photos") from None
        samples.append(Sample(index[t["anchor"][k]], t["left"][k], t["top"][k], t["res"][k],
                              t["size"][k], ids, tuple(t["rows"][k]), tuple(t["cols"][k])))
    patches = np.load(patches_path, mmap_mode="r")[:len(samples)]
    return PairSet(photos, samples, t["raster"], np.asarray(t["split"]) == "val", patches,
                   meta["counts"])
