"""The [train] section of a satfind config. The same file's [encoder] is the teacher (the
frozen CLIP the satellite encoder is aligned to), and its [discovery] / [tiling] sections
say how rasters are found and read, exactly as for `satfind-index`: training patches are
cut at `tiling.target_gsd_m`, the resolution the indexer tiles at."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from indexer.config import ConfigError, Settings, load_settings, read_sections


@dataclass(frozen=True)
class TrainSettings:
    # Ground photos: a folder of EXIF-geotagged photos, or a CSV/Parquet table with columns
    # path, lat, lon[, time] (relative paths are relative to the table).
    photos: str = ""
    # Satellite rasters: folders, GeoTIFFs, file lists or STAC items, as satfind-index takes.
    rasters: tuple[str, ...] = ()
    # Run folder: pairs, teacher cache, checkpoints, metrics and the exported encoder.
    out: str = "graft-run"
    # 0 = any raster covering the photo (the most recent first); > 0 = only rasters acquired
    # within this many days of the photo (nearest first); photos without a time are dropped.
    time_window_days: float = 0.0
    # The photo a patch is cut around moves up to this fraction of the patch half-width.
    jitter: float = 0.35
    # Share of samples held out for validation retrieval (recall@1 sat -> ground), taken as
    # whole map blocks 4 patches wide, so validation places are away from training ones.
    val_fraction: float = 0.1
    steps: int = 2000               # optimizer steps
    batch_size: int = 64            # patches per micro-batch
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 1e-5                # AdamW peak learning rate (GRAFT fine-tunes CLIP gently)
    weight_decay: float = 0.1       # not applied to biases, norms, embeddings
    warmup_steps: int = 100         # linear warmup, then cosine decay to 0
    temperature: float = 0.07
    learn_temperature: bool = False
    image_loss_weight: float = 1.0  # GRAFT image-level loss
    pixel_loss_weight: float = 1.0  # GRAFT pixel-level loss (0 = image level only)
    augment: bool = True            # random flips / 90-degree turns (positions follow)
    max_grad_norm: float = 1.0      # 0 = no clipping
    amp: bool = True                # autocast on CUDA (bf16 where supported); CPU: float32
    checkpoint_every: int = 500     # steps between checkpoints (and validation)
    keep_checkpoints: int = 2
    teacher_batch_size: int = 64
    workers: int = 2                # processes that cut patches from the rasters (0 = none)
    teacher_cache: str = ""         # "" = <out>/teacher-cache
    seed: int = 0


def load_train_config(path: str | Path) -> tuple[Settings, TrainSettings]:
    """The whole config: indexer settings (teacher, discovery, tiling) and [train], with
    relative paths resolved against the config file's folder."""
    settings = load_settings(path)
    train = read_sections(path, {"train": TrainSettings})["train"]
    base = Path(path).parent
    where = f"{path}: train"

    def rel(p: str) -> str:
        return str(p if Path(p).is_absolute() else (base / p).resolve())

    if not train.photos:
        raise ConfigError(f"{where}.photos: set a folder of geotagged photos or a CSV/Parquet")
    if not train.rasters:
        raise ConfigError(f"{where}.rasters: list at least one raster folder or file")
    train = dataclasses.replace(
        train, photos=rel(train.photos), rasters=tuple(rel(r) for r in train.rasters),
        out=rel(train.out), teacher_cache=rel(train.teacher_cache) if train.teacher_cache else "")
    positive = ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints",
                "teacher_batch_size")
    for name in positive:
        if getattr(train, name) < 1:
            raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(train, name)}")
    if train.lr <= 0 or train.temperature <= 0:
        raise ConfigError(f"{where}.lr and temperature must be > 0")
    if not 0 <= train.jitter < 1:
        raise ConfigError(f"{where}.jitter must be in [0, 1), got {train.jitter}")
    if not 0 < train.val_fraction < 1:
        raise ConfigError(f"{where}.val_fraction must be in (0, 1), got {train.val_fraction}")
    if train.image_loss_weight < 0 or train.pixel_loss_weight < 0 or (
            train.image_loss_weight + train.pixel_loss_weight == 0):
        raise ConfigError(f"{where}: image_loss_weight and pixel_loss_weight must be >= 0, "
                          "not both 0")
    if (train.warmup_steps < 0 or train.time_window_days < 0 or train.weight_decay < 0
            or train.workers < 0):
        raise ConfigError(f"{where}: warmup_steps, time_window_days, weight_decay and "
                          "workers must be >= 0")
    return settings, train
