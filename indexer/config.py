"""The indexer's sections of `index_config.toml` ([encoder], [discovery], [tiling], [job],
[store]), the tile recipe an index records, and `load_settings`.

Every field has a default; an unknown key or a wrong type is a one-line `ConfigError`
naming the file, the key and what was expected (see `indexer.configfile`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoder.identity import EncoderSpec
from indexer.configfile import ConfigError, build_section, ranged, read_toml


@dataclass(frozen=True)
class DiscoverySettings:
    # Extensions picked up when an ARCHIVE is a folder (searched recursively).
    raster_extensions: tuple[str, ...] = (".tif", ".tiff")
    # STAC items: the asset key to index; "" = the first GeoTIFF asset with role "data"/"visual".
    stac_asset: str = ""
    # Acquisition time from the file name when neither STAC nor the TIFF datetime tag has one:
    # a regex whose first group is parsed with `filename_time_format` (strptime).
    filename_time_pattern: str = r"(?<!\d)(\d{8})(?!\d)"
    filename_time_format: str = "%Y%m%d"
    # Sensor name from the file name: {glob pattern = sensor}; first match wins.
    sensor_patterns: dict[str, str] = field(default_factory=dict)
    # A STAC item's local asset must lie inside the item's own folder or one of these
    # folders (relative to the config file): a catalogue cannot point satfind at /etc.
    allowed_roots: tuple[str, ...] = ()


@dataclass(frozen=True)
class TilingSettings:
    # Ground pixel size (metres) the encoder was trained at; tiles are cut at the web-mercator
    # zoom whose pixel size is nearest to it...
    target_gsd_m: float = ranged(10.0, "(0, 100000]")
    # ...but never finer than native/max_upsample nor coarser than native*max_downsample, so
    # a 300 m raster is not blown up into thousands of blurry tiles, nor a 15 cm aerial
    # shrunk into a fraction of one tile.
    max_upsample: float = ranged(2.0, "[1, 1000]")
    max_downsample: float = ranged(4.0, "[1, 1000]")
    # Fixed zoom for every raster (0 = derive from target_gsd_m as above).
    zoom: int = ranged(0, "[0, 24]")
    # 1-based band indexes mapped to R, G, B.
    bands: tuple[int, ...] = ranged((1, 2, 3), "[1, 100000]")
    # "auto": uint8 as is, other types percentile stretch. "uint8": pass through (clipped).
    # "divisor": value / reflectance_divisor * 255 (e.g. Sentinel-2 L2A). "percentile".
    scaling: str = "auto"
    reflectance_divisor: float = ranged(10000.0, "(0, 1e12]")
    percentiles: tuple[float, float] = ranged((2.0, 98.0), "[0, 100]")
    # Tiles with more invalid (nodata / alpha / outside the raster) pixels than this are
    # skipped and counted.
    max_nodata_fraction: float = ranged(0.5, "[0, 1)")
    # Pixels that are 0 in every selected band count as nodata even without a nodata value.
    zero_is_nodata: bool = True
    resampling: str = "bilinear"


@dataclass(frozen=True)
class JobSettings:
    batch_size: int = ranged(64, "[1, 8192]")
    # DataLoader worker processes that read and warp tiles (0 = in the main process).
    workers: int = ranged(2, "[0, 64]")
    # A commit (manifest rename) every this many tiles: an interrupted run loses at most this.
    commit_every: int = ranged(2048, "[1, 10000000]")
    thumbnail_size: int = ranged(128, "[16, 1024]")
    thumbnail_quality: int = ranged(85, "[1, 100]")
    # A raster that would give more tiles than this is skipped in one line (a 1 MB file can
    # claim 100000 x 100000 pixels); raise it for huge mosaics.
    max_tiles_per_raster: int = ranged(1_000_000, "[1, 1e12]")


@dataclass(frozen=True)
class StoreSettings:
    # Below this many vectors the index is exact (Flat); at or above it, IVF-PQ is trained.
    ivf_min_vectors: int = ranged(50_000, "[1000, 1e12]")
    # IVF lists; 0 = about 2*sqrt(N) at training time (exact re-rank recovers the recall).
    nlist: int = ranged(0, "[0, 16777216]")
    # PQ sub-quantisers (must divide the embedding dimension); 0 = dim/8.
    pq_m: int = ranged(0, "[0, 4096]")
    # k-means training sample per IVF list (FAISS wants 39..256).
    train_points_per_list: int = ranged(50, "[39, 1024]")
    # Re-train the IVF-PQ once the index has grown this many times past the size it was
    # trained at (lists sized for 50k tiles are too coarse at 1M); 0 = never.
    retrain_growth: float = ranged(4.0, "[0, 1000]")
    # Keep float16 copies of every vector (exact re-rank, "more like this", IVF re-training).
    keep_float16: bool = True


@dataclass(frozen=True)
class Settings:
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    tiling: TilingSettings = field(default_factory=TilingSettings)
    job: JobSettings = field(default_factory=JobSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    source: str = "<defaults>"

    def check_encoder(self, embed_dim: int) -> None:
        """Settings that depend on the encoder, checked as soon as it is built."""
        m = self.store.pq_m
        if m and embed_dim % m:
            raise ConfigError(f"{self.source}: store.pq_m = {m} does not divide the encoder's "
                              f"embedding dimension {embed_dim} (try {embed_dim // 8} or 0)")


_SECTIONS = {
    "encoder": EncoderSpec,
    "discovery": DiscoverySettings,
    "tiling": TilingSettings,
    "job": JobSettings,
    "store": StoreSettings,
}
# Sections owned by other layers (search, api, ui) are allowed and read there.
_FOREIGN_SECTIONS = {"search", "api", "ui", "train"}


def _validate(s: Settings) -> None:
    """What single-key ranges (checked while building each section) cannot say."""
    where = s.source
    t = s.tiling
    if len(t.bands) != 3:
        raise ConfigError(f"{where}: tiling.bands must be three 1-based band indexes, got "
                          f"{list(t.bands)}")
    if t.scaling not in {"auto", "uint8", "divisor", "percentile"}:
        raise ConfigError(f"{where}: tiling.scaling must be auto, uint8, divisor or percentile, "
                          f"got {t.scaling!r}")
    lo, hi = t.percentiles
    if not lo < hi:
        raise ConfigError(f"{where}: tiling.percentiles must be low < high, got {[lo, hi]}")
    from rasterio.enums import Resampling

    if t.resampling not in Resampling.__members__:
        raise ConfigError(f"{where}: tiling.resampling {t.resampling!r} is not a GDAL "
                          "resampling method (nearest, bilinear, cubic, average, ...)")
    if 0 < s.store.retrain_growth <= 1:
        raise ConfigError(f"{where}: store.retrain_growth must be 0 (never) or > 1")
    try:
        re.compile(s.discovery.filename_time_pattern)
    except re.error as e:
        raise ConfigError(f"{where}: discovery.filename_time_pattern is not a regex: {e}") from None


def load_settings(path: str | Path | None = None) -> Settings:
    """Read a TOML config (or defaults when `path` is None)."""
    if path is None:
        return Settings()
    p, data = read_toml(path)
    parts: dict[str, Any] = {}
    for section, table in data.items():
        if section in _FOREIGN_SECTIONS:
            continue
        if section not in _SECTIONS:
            known = ", ".join(sorted([*_SECTIONS, *_FOREIGN_SECTIONS]))
            raise ConfigError(f"{p}: unknown section [{section}] (known: {known})")
        if not isinstance(table, dict):
            raise ConfigError(f"{p}: [{section}] must be a table")
        parts[section] = build_section(_SECTIONS[section], table, f"{p}: {section}")
    # A relative checkpoint / model-config path is relative to the config file.
    enc = parts.get("encoder")
    if enc is not None:
        repl = {}
        for key in ("checkpoint", "model"):
            val = getattr(enc, key)
            is_path = key == "checkpoint" or val.endswith(".json")
            if val and is_path and not Path(val).is_absolute():
                repl[key] = str((p.parent / val).resolve())
        if repl:
            parts["encoder"] = dataclasses.replace(enc, **repl)
    disc = parts.get("discovery")
    if disc is not None and disc.allowed_roots:
        roots = tuple(str((p.parent / r).resolve()) for r in disc.allowed_roots)
        parts["discovery"] = dataclasses.replace(disc, allowed_roots=roots)
    s = Settings(**parts, source=str(p))
    _validate(s)
    return s


@dataclass(frozen=True)
class TileRecipe:
    """How an index's tiles were cut and scaled. Recorded in its manifest beside the encoder
    identity, so query images and GRAFT patches are prepared exactly like its tiles, whatever
    config the server was started with."""

    tile_px: int
    target_gsd_m: float
    max_upsample: float
    max_downsample: float
    zoom: int
    bands: tuple[int, ...]
    scaling: str
    reflectance_divisor: float
    percentiles: tuple[float, float]
    resampling: str
    zero_is_nodata: bool
    max_nodata_fraction: float
    encoder_preset: str = ""  # a named pretrained preset, when the encoder is one

    @classmethod
    def from_tiling(cls, tiling: TilingSettings, tile_px: int, preset: str = "") -> TileRecipe:
        keep = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dataclasses.asdict(tiling).items() if k in keep}
        return cls(tile_px=tile_px, encoder_preset=preset, **values)

    def tiling(self, base: TilingSettings | None = None) -> TilingSettings:
        """Tiling settings that read like this recipe (other keys from `base`)."""
        names = {f.name for f in dataclasses.fields(TilingSettings)}
        mine = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        return dataclasses.replace(base or TilingSettings(), **mine)

    def differences(self, other: TileRecipe) -> list[str]:
        """'key: mine -> theirs' for every key that differs."""
        a, b = dataclasses.asdict(self), dataclasses.asdict(other)
        return [f"{k} {a[k]!r} (index) vs {b[k]!r}" for k in a if a[k] != b[k]]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> TileRecipe:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**values)
