"""The [train] section of a satfind config. The same file's [encoder] is the teacher (the
frozen CLIP the satellite encoder is aligned to), and its [discovery] / [tiling] sections
say how rasters are found and read, exactly as for `satfind-index`: training patches are
cut at `tiling.target_gsd_m`, the resolution the indexer tiles at."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from indexer.config import Settings, load_settings
from indexer.configfile import ConfigError, ranged, read_sections


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
    time_window_days: float = ranged(0.0, "[0, 100000]")
    # The photo a patch is cut around moves up to this fraction of the patch half-width.
    jitter: float = ranged(0.35, "[0, 1)")
    # Share of samples held out for validation retrieval (recall@1 sat -> ground), taken as
    # whole map blocks 4 patches wide, so validation places are away from training ones.
    val_fraction: float = ranged(0.1, "(0, 1)")
    # optimizer steps
    steps: int = ranged(2000, "[1, 1e9]")
    # patches per micro-batch
    batch_size: int = ranged(64, "[1, 65536]")
    # micro-batches per optimizer step
    grad_accum: int = ranged(1, "[1, 4096]")
    # AdamW peak learning rate (GRAFT fine-tunes CLIP gently)
    lr: float = ranged(1e-5, "(0, 10]")
    # not applied to biases, norms, embeddings
    weight_decay: float = ranged(0.1, "[0, 10]")
    # linear warmup, then cosine decay to 0
    warmup_steps: int = ranged(100, "[0, 1e9]")
    temperature: float = ranged(0.07, "(0, 100]")
    learn_temperature: bool = False
    # GRAFT image-level loss
    image_loss_weight: float = ranged(1.0, "[0, 1000]")
    # GRAFT pixel-level loss (0 = image level only)
    pixel_loss_weight: float = ranged(1.0, "[0, 1000]")
    augment: bool = True            # random flips / 90-degree turns (positions follow)
    # 0 = no clipping
    max_grad_norm: float = ranged(1.0, "[0, 1e6]")
    amp: bool = True                # autocast on CUDA (bf16 where supported); CPU: float32
    # steps between checkpoints (and validation)
    checkpoint_every: int = ranged(500, "[1, 1e9]")
    keep_checkpoints: int = ranged(2, "[1, 1000]")
    teacher_batch_size: int = ranged(64, "[1, 65536]")
    # processes that cut patches from the rasters (0 = none)
    workers: int = ranged(2, "[0, 64]")
    teacher_cache: str = ""         # "" = <out>/teacher-cache
    seed: int = ranged(0, "[0, 4294967295]")


def load_train_config(path: str | Path, encoder: str | None = None
                      ) -> tuple[Settings, TrainSettings]:
    """The whole config: indexer settings (teacher, discovery, tiling) and [train], with
    relative paths resolved against the config file's folder. `encoder`: a preset name for
    the teacher CLIP (--encoder)."""
    settings = load_settings(path, encoder=encoder)
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
    if train.image_loss_weight + train.pixel_loss_weight == 0:
        raise ConfigError(f"{where}: image_loss_weight and pixel_loss_weight are both 0")
    return settings, train
