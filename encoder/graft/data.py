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
import rasterio

from encoder.graft.pairs import PairError, Photo, Sample, build_samples
from indexer.config import Settings
from indexer.discover import discover
from indexer.errors import InputError
from indexer.raster import RasterInfo, inspect_raster
from indexer.tiling import read_mercator_window

PAIRS_VERSION = 1


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
            infos.append(inspect_raster(src, settings.discovery, settings.tiling))
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
                         train.time_window_days, repr(settings.tiling), repr(settings.discovery)]
                        ).encode())
    for p in photos:
        h.update(f"{p.path}|{p.lat}|{p.lon}|{p.time}".encode())
    for r in rasters:
        st = os.stat(r.path)
        h.update(f"{r.path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def build_pairs(photos: list[Photo], rasters: list[RasterInfo], settings: Settings, train,
                size: int, out: Path, progress: bool = False) -> PairSet:
    """Cut, read and record one sample per photo (see module doc); reuses `out` when it
    already holds the pairs of the same inputs and settings."""
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
    bounds = [_mercator_bounds(r) for r in rasters]
    tmp_patches = out / ".patches.npy.tmp"
    patches = np.lib.format.open_memmap(tmp_patches, mode="w+", dtype=np.uint8,
                                        shape=(len(samples), 3, size, size))
    kept: list[tuple[Sample, int]] = []
    counts = {"photos": len(photos), "no_raster": 0, "no_raster_in_time": 0, "nodata": 0}
    handles: dict[int, rasterio.DatasetReader] = {}
    from tqdm import tqdm

    try:
        for s in tqdm(samples, disable=not progress, unit="patch", desc="reading patches"):
            centre = (s.left + s.size * s.res / 2, s.top - s.size * s.res / 2)
            cands = candidate_rasters(photos[s.anchor], centre, rasters, bounds,
                                      train.time_window_days)
            if not cands:
                any_cover = candidate_rasters(photos[s.anchor], centre, rasters, bounds, 0)
                counts["no_raster_in_time" if any_cover else "no_raster"] += 1
                continue
            for i in cands:
                if i not in handles:
                    handles[i] = rasterio.open(rasters[i].path)
                read = read_mercator_window(handles[i], rasters[i], settings.tiling, s.left,
                                            s.top, s.res, s.size)
                if read.nodata_fraction <= settings.tiling.max_nodata_fraction:
                    patches[len(kept)] = read.rgb
                    kept.append((s, i))
                    break
            else:
                counts["nodata"] += 1
    finally:
        for h in handles.values():
            h.close()
    patches.flush()
    del patches
    if not kept:
        tmp_patches.unlink()
        raise PairError(f"none of the {len(photos)} photos lies inside a readable raster "
                        f"(no raster: {counts['no_raster']}, none within the time window: "
                        f"{counts['no_raster_in_time']}, too much nodata: {counts['nodata']})")
    if len(kept) < 2:
        raise PairError("only one photo has a satellite patch: too few to train on")
    rng = np.random.default_rng(train.seed + 1)
    val = np.zeros(len(kept), dtype=bool)
    n_val = min(len(kept) - 1, max(1, round(train.val_fraction * len(kept))))
    val[rng.choice(len(kept), size=n_val, replace=False)] = True
    counts.update(samples=len(kept), train=int((~val).sum()), val=int(val.sum()))
    _write_manifest(kept, photos, rasters, val, manifest)
    os.replace(tmp_patches, out / "patches.npy")
    meta = {"key": key, "version": PAIRS_VERSION, "size": size, "counts": counts}
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)  # written last: its key says the pairs are complete
    return _load(photos, manifest, out / "patches.npy", meta)


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

