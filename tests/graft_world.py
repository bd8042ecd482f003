"""A generated world for GRAFT tests: scenes of a few classes at known coordinates, rendered
once as ground photos (a sky band over a textured ground, JPEG) and once, differently, in
georeferenced UTM "satellite" GeoTIFFs (other colours, other textures, seen from above).

Two acquisitions: the one matching the photos' dates, and a newer one in which every scene
has another class, so only time matching finds the right pixels.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

CRS = "EPSG:32632"
ORIGIN = (500_000.0, 5_000_000.0)  # UTM 32N, about 45.1 N 9.0 E
RES_M = 10.0
SPACING_PX = 96
SCENE_PX = 60

# Ground colours per class; the satellite view of class c uses the colour of class
# SAT_OF[c], so the untrained (teacher) tower maps satellite patches to the wrong class.
GROUND_RGB = np.array([(200, 40, 40), (40, 170, 60), (50, 70, 200), (220, 200, 50),
                       (150, 60, 170), (240, 140, 40), (60, 190, 200), (120, 120, 120)])
SAT_OF = (3, 5, 0, 6, 1, 7, 2, 4)


@dataclass
class World:
    rasters: list[Path]
    train_csv: Path
    heldout_csv: Path
    scene_class: np.ndarray
    heldout_scenes: np.ndarray


def _ground_photo(cls: int, rng: np.random.Generator, w: int = 96, h: int = 72) -> np.ndarray:
    img = np.empty((h, w, 3), dtype=np.float32)
    sky = h // 3
    img[:sky] = (150, 190, 235)
    yy, xx = np.mgrid[0:h - sky, 0:w]
    period = 4 + 3 * (cls % 3)
    angle = math.pi * cls / 8
    wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    img[sky:] = GROUND_RGB[cls] * (0.8 + 0.2 * wave[..., None])
    img *= rng.uniform(0.85, 1.15)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _satellite_scene(cls: int, rng: np.random.Generator, n: int = SCENE_PX) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    cell = 3 + 2 * (cls % 4)
    checker = ((yy // cell + xx // cell) % 2).astype(np.float32)
    rgb = GROUND_RGB[SAT_OF[cls]][:, None, None] * (0.75 + 0.25 * checker)[None]
    rgb = rgb * rng.uniform(0.9, 1.1) + rng.normal(0, 6, (3, n, n))
    return np.clip(rgb, 1, 255).astype(np.uint8)


def make_world(root: Path, classes: int = 8, train_per_class: int = 10,
               heldout_per_class: int = 4, photos_per_scene: int = 2, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    per_class = train_per_class + heldout_per_class
    n = classes * per_class
    scene_class = rng.permutation(np.repeat(np.arange(classes), per_class))
    heldout = np.zeros(n, dtype=bool)
    for c in range(classes):
        heldout[np.flatnonzero(scene_class == c)[:heldout_per_class]] = True
    cols = math.ceil(math.sqrt(n))
    rows_n = math.ceil(n / cols)
    margin = SPACING_PX
    width, height = cols * SPACING_PX + 2 * margin, rows_n * SPACING_PX + 2 * margin
    centres_px = [(margin + (i // cols + 0.5) * SPACING_PX, margin + (i % cols + 0.5) * SPACING_PX)
                  for i in range(n)]
    transform = from_origin(ORIGIN[0], ORIGIN[1], RES_M, RES_M)

    def render(classes_of: np.ndarray, rs: np.random.Generator) -> np.ndarray:
        data = np.clip(rs.normal(105, 10, (3, height, width)), 1, 255).astype(np.uint8)
        half = SCENE_PX // 2
        for (r, c), k in zip(centres_px, classes_of, strict=True):
            r0, c0 = int(r) - half, int(c) - half
            data[:, r0:r0 + SCENE_PX, c0:c0 + SCENE_PX] = _satellite_scene(int(k), rs)
        return data

    shuffled = (scene_class + 1 + rng.integers(0, classes - 1, n)) % classes
    rasters = []
    for name, classes_of in (("world_20210615.tif", scene_class),
                             ("world_20240601.tif", shuffled)):
        path = root / name
        with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3,
                           dtype="uint8", crs=CRS, transform=transform, nodata=0,
                           tiled=True, blockxsize=256, blockysize=256) as dst:
            dst.write(render(classes_of, np.random.default_rng(seed + len(rasters) + 1)))
        rasters.append(path)

    photo_dir = root / "photos"
    photo_dir.mkdir(exist_ok=True)
    rows_out: dict[bool, list] = {False: [], True: []}
    for i, ((r, c), k) in enumerate(zip(centres_px, scene_class, strict=True)):
        for j in range(photos_per_scene):
            dr, dc = rng.uniform(-12, 12, 2)
            x = ORIGIN[0] + (c + dc) * RES_M
            y = ORIGIN[1] - (r + dr) * RES_M
            (lon,), (lat,) = warp_transform(CRS, "EPSG:4326", [x], [y])
            name = f"scene{i:03d}_{j}.jpg"
            Image.fromarray(_ground_photo(int(k), rng)).save(photo_dir / name, quality=90)
            when = datetime(2021, 6, 1 + int(rng.integers(0, 28)), 12)
            rows_out[bool(heldout[i])].append((f"photos/{name}", lat, lon, when.isoformat()))
    paths = {}
    for held, name in ((False, "train_photos.csv"), (True, "heldout_photos.csv")):
        paths[held] = root / name
        with open(paths[held], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "lat", "lon", "time"])
            w.writerows(rows_out[held])
    return World(rasters, paths[False], paths[True], scene_class, np.flatnonzero(heldout))


TRAIN_TOML = """# GRAFT on the generated world: satfind-train --config {root}/train.toml
[encoder]                   # the teacher: the small test CLIP, seeded random weights
model = "satfind-tiny"
random_weights = true
device = "cpu"

[tiling]
target_gsd_m = 10.0

[train]
photos = "train_photos.csv"
rasters = ["world_20210615.tif", "world_20240601.tif"]
out = "run"
time_window_days = 60       # the 2024 acquisition shows other scenes: only time matching works
steps = 150
batch_size = 32
lr = 1e-3                   # a small random model learns fast; real CLIPs want about 1e-5
warmup_steps = 10
checkpoint_every = 50
"""


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "graft-world")
    make_world(target)
    (target / "train.toml").write_text(TRAIN_TOML.format(root=target))
    print(f"world in {target}/: satfind-train --config {target}/train.toml")
