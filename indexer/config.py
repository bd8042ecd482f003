"""`index_config.toml` read into typed, validated settings.

Every field has a default; an unknown key or a wrong type is a one-line `ConfigError`
naming the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from encoder.identity import EncoderSpec


class ConfigError(ValueError):
    """Bad configuration (one-line message)."""


def ranged(default: Any, interval: str) -> Any:
    """A numeric setting with its allowed interval, e.g. ranged(64, "[1, 4096]") or
    ranged(0.5, "[0, 1)"); checked at load (each element, for a tuple)."""
    return field(default=default, metadata={"range": interval})


_INTERVAL = re.compile(r"([\[(])\s*([^,]+?)\s*,\s*([^\])]+?)\s*([\])])")


def check_range(where: str, value: float, interval: str) -> None:
    m = _INTERVAL.fullmatch(interval.strip())
    if m is None:
        raise AssertionError(f"bad interval {interval!r}")
    lo, hi = float(m.group(2)), float(m.group(3))
    ok = (value > lo if m.group(1) == "(" else value >= lo) and (
        value < hi if m.group(4) == ")" else value <= hi)
    if not ok:
        shown = interval.replace("inf", "infinity")
        raise ConfigError(f"{where} = {value!r} is out of range: expected a value in {shown}")


def check_ranges(obj: Any, where: str) -> None:
    """Every field of a settings dataclass that declares a range is inside it."""
    for f in dataclasses.fields(obj):
        interval = f.metadata.get("range")
        if interval is None:
            continue
        value = getattr(obj, f.name)
        for v in (value if isinstance(value, tuple) else (value,)):
            check_range(f"{where}.{f.name}", v, interval)


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


def _coerce(where: str, value: Any, typ: Any) -> Any:
    origin = getattr(typ, "__origin__", None)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typ.__args__
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_coerce(f"{where}[{i}]", v, a) for i, (v, a) in pairs)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): _coerce(f"{where}.{k}", v, typ.__args__[1]) for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported setting type {typ}")


def _build(cls: type, table: dict, where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(f"{where}.{key}", value, hints[key])
    obj = cls(**kwargs)
    check_ranges(obj, where)
    return obj


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


def _read_toml(path: str | Path) -> tuple[Path, dict]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        return p, tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


def read_sections(path: str | Path | None, schema: dict[str, type]) -> dict[str, Any]:
    """Typed settings of the named sections (for layers above the indexer: search, api);
    sections absent from the file (or no file) get their defaults."""
    data: dict = {}
    p = Path("<defaults>")
    if path is not None:
        p, data = _read_toml(path)
    out = {}
    for name, cls in schema.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{p}: [{name}] must be a table")
        out[name] = _build(cls, table, f"{p}: {name}")
    return out


def load_settings(path: str | Path | None = None) -> Settings:
    """Read a TOML config (or defaults when `path` is None)."""
    if path is None:
        return Settings()
    p, data = _read_toml(path)
    parts: dict[str, Any] = {}
    for section, table in data.items():
        if section in _FOREIGN_SECTIONS:
            continue
        if section not in _SECTIONS:
            known = ", ".join(sorted([*_SECTIONS, *_FOREIGN_SECTIONS]))
            raise ConfigError(f"{p}: unknown section [{section}] (known: {known})")
        if not isinstance(table, dict):
            raise ConfigError(f"{p}: [{section}] must be a table")
        parts[section] = _build(_SECTIONS[section], table, f"{p}: {section}")
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
