"""The indexer's sections of `index_config.toml` ([encoder], [discovery], [tiling], [job],
[store], [remote]), the tile recipe an index records, and `load_settings`.

Every field has a default; an unknown key or a wrong type is a one-line `ConfigError`
naming the file, the key and what was expected (see `indexer.configfile`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoder.identity import EncoderError, EncoderSpec
from encoder.presets import PRESETS, get_preset
from encoder.prompts import get_prompt_set
from indexer.configfile import ConfigError, build_section, ranged, read_toml


@dataclass(frozen=True)
class DiscoverySettings:
    # Extensions picked up when an ARCHIVE is a folder (searched recursively).
    raster_extensions: tuple[str, ...] = (".tif", ".tiff")
    # STAC items: the asset key to index; "" = the first GeoTIFF asset with the first of
    # `stac_asset_roles` that any asset has (else the first GeoTIFF asset).
    stac_asset: str = ""
    stac_asset_roles: tuple[str, ...] = ("visual", "data")
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
    # zoom whose pixel size is nearest to it (0 = the encoder preset's training GSD, 10 m for
    # an encoder without a preset)...
    target_gsd_m: float = ranged(0.0, "[0, 100000]")
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
    # How tiles are warped to web mercator. "fast": a per-tile affine fit of the projection
    # and OpenCV's resampling (nearest or bilinear; 2-7.5x cheaper than GDAL's warper, pixels
    # within about a grey level of it: indexer/rasters/warp.py). "gdal": GDAL's warper.
    # "auto": an existing index's own (indexes from before this setting: gdal), else fast
    # (gdal for resamplings fast does not offer).
    warp: str = "auto"

    def resolved_warp(self) -> str:
        """"fast" or "gdal": `warp` with "auto" decided as for a new index (the indexing job
        first gives "auto" an existing index's own warp)."""
        if self.warp != "auto":
            return self.warp
        return "fast" if self.resampling in FAST_RESAMPLINGS else "gdal"

    def with_warp(self) -> TilingSettings:
        """These settings with `warp` decided (see resolved_warp)."""
        return dataclasses.replace(self, warp=self.resolved_warp())

    def for_index(self, recipe: TileRecipe | None) -> TilingSettings:
        """These settings with warp "auto" decided for an existing index: the warp its
        `recipe` records; an index that records no recipe (written before recipes) was cut
        with GDAL's."""
        if self.warp != "auto":
            return self
        return dataclasses.replace(self, warp=recipe.warp if recipe else "gdal")

    def key(self) -> str:
        """These settings as text for run fingerprints and cache keys (GRAFT): the repr,
        with the warp decided, and left out when it is GDAL's, so a key made before the
        setting existed still matches settings that read the same pixels."""
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                 if f.name != "warp"]
        if (warp := self.resolved_warp()) != "gdal":
            parts.append(f"warp={warp!r}")
        return f"{type(self).__qualname__}({', '.join(parts)})"


# Resamplings of the fast warp (OpenCV's warpAffine).
FAST_RESAMPLINGS = ("nearest", "bilinear")
WARPS = ("auto", "fast", "gdal")


# Encoder batch sizes for job.batch_size = 0 (ViT-B/16 on one H100: bench/encoder.py).
GPU_BATCH, CPU_BATCH = 512, 64
CPU_READERS = 2  # job.workers = -1 on the CPU (on CUDA: one per core but one)


def usable_cpus() -> int:
    """The CPU cores this process may run on (a container's or taskset's share, not the
    host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class JobSettings:
    # Tiles per encoder call; 0 = by device: 512 on CUDA (a GPU needs large batches to be
    # busy), 64 on the CPU.
    batch_size: int = ranged(0, "[0, 8192]")
    # Tiles a reader process reads per call (at least batch_size; split into encoder batches
    # after). Readers share the raster rows at the edges of their calls, and each fetches
    # them (and GDAL's read-ahead past them) again: larger calls, fewer edges (a remote COG
    # read by 2 readers: 2.2x the bytes of 1 reader at 64 tiles per call, 1.13x at 512).
    read_batch: int = ranged(512, "[1, 65536]")
    # DataLoader worker processes that read and warp tiles; 0 = in the main process; -1 = by
    # device: on CUDA one per CPU core but one (the readers are what feeds the GPU: 15 on 16
    # cores), on the CPU 2 (the encoder needs the cores).
    workers: int = ranged(-1, "[-1, 64]")
    # GDAL's block cache per reader process, in MB (GDAL's own default is 5 % of the
    # machine's memory per process: 75 % of it for 15 readers). A reader reads each block of
    # a raster about once, so a small cache costs no reads and spares filling a large one.
    reader_cache_mb: int = ranged(128, "[8, 1048576]")
    # A commit (manifest rename) every this many tiles: an interrupted run loses at most this.
    commit_every: int = ranged(2048, "[1, 10000000]")
    thumbnail_size: int = ranged(128, "[16, 1024]")
    thumbnail_quality: int = ranged(85, "[1, 100]")
    # A raster that would give more tiles than this is skipped in one line (a 1 MB file can
    # claim 100000 x 100000 pixels); raise it for huge mosaics.
    max_tiles_per_raster: int = ranged(1_000_000, "[1, 1e12]")
    # Where the fast warp resamples the tiles that are one plain piece (a uint8 or uint16
    # raster, not downsampled, no nodata in reach: most tiles of most rasters): "auto" =
    # on the encoder's GPU when it has one (the readers then only read, cut the source
    # pixels and make thumbnails), else in the reader processes; "device" = on the encoder's
    # device even on a CPU (slower there: for tests); "readers" = always in the readers.
    # Within 1 grey level of the readers' warp (tests/test_device_warp.py).
    warp_on: str = "auto"
    # Where the thumbnails of those tiles are made when the warp is on the device: "device"
    # = resampled there from the same source pixels (within 1 grey level of the readers')
    # and JPEG-encoded on a few threads of the job's process (the readers' CPU per tile
    # 0.69 -> 0.40 ms on the 2-core VM, bench/readers.py); "auto" = so where the encoder is
    # a GPU (on an H200 machine the readers' CPU per tile 0.89-0.98 -> 0.54-0.55 ms, the
    # job as fast: BENCHMARKS.md); "readers" = by the readers.
    thumbnails_on: str = "auto"
    # Where the IVF-PQ's coarse k-means and the lists of the vectors it encodes are
    # computed (indexer/job/device_kmeans.py): "auto" = on the encoder's GPU where it has
    # one, "device" = on the encoder's device even a CPU (tests), "faiss" = by FAISS on the
    # CPU cores. On an H200 the 980,000-tile job with auto ran at 0.87 of the encoder alone,
    # with faiss 0.80 (its last commit waited 4.7 s, its k-means took the readers' cores).
    kmeans_on: str = "auto"
    # Whether rasters at paths new to the index are hashed (SHA-256 of every byte: the
    # source key) while their tiles are read, not before the first tile: "auto" = where the
    # encoder is a GPU (the readers leave it CPU to spare: job.warp_on), "yes", "no". Their
    # tiles wait in memory for the hash before they are committed (16,384 at most).
    # On the 2-core VM hashing beside the readers made the job slower; on an H200 the GPU
    # starts 1.5 s sooner and a 98,000-tile job ends even with hashing first (BENCHMARKS.md).
    hash_while_reading: str = "auto"
    # Where tiles are read and embedded: "local" (worker processes on this machine) or "ray"
    # (a Ray cluster; needs the `cluster` extra). Ray: the cluster's address ("" =
    # RAY_ADDRESS or a new local Ray, "auto", "ray://host:10001"), encoder actors (0 = one
    # per gpus_per_actor GPUs, else half the cluster's CPUs) and GPUs per actor.
    runner: str = "local"
    ray_address: str = ""
    actors: int = ranged(0, "[0, 100000]")
    gpus_per_actor: float = ranged(1.0, "(0, 64]")

    def for_device(self, device_type: str) -> JobSettings:
        """These settings with batch_size 0 and workers -1 replaced by the device's
        defaults."""
        gpu = device_type == "cuda"
        out = self
        if not self.batch_size:
            out = dataclasses.replace(out, batch_size=GPU_BATCH if gpu else CPU_BATCH)
        if self.workers < 0:
            out = dataclasses.replace(out, workers=min(64, max(1, usable_cpus() - 1)) if gpu
                                      else CPU_READERS)
        return out


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


# GDAL configuration for satfind's own reads of remote rasters (http(s)://, s3://, gs://,
# az://): the settings that make COG reading fast (rio-tiler / titiler performance notes)
# and retries with backoff. [remote] gdal = {...} overrides any of them or adds others.
GDAL_REMOTE_DEFAULTS: dict[str, str] = {
    # No directory listing next to each file (one request per open instead of several).
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # The COG header (IFDs, tile offsets) in the first request.
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    # Adjacent tiles of one window fetched as one range request; several requests on one
    # connection (HTTP/2 where the server speaks it).
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    # Bounded caches: per open file (VSI_CACHE) and GDAL's cache of downloaded ranges (all
    # files of one process).
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": "16777216",
    "CPL_VSIL_CURL_CACHE_SIZE": "67108864",
    # Transient HTTP errors (429, 5xx, resets) retried by GDAL, the delay growing each time.
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
}
# Configuration keys that carry credentials: GDAL reads them from the environment only.
_CREDENTIAL_KEY = re.compile(r"SECRET|PASSWORD|TOKEN|USERPWD|ACCESS_KEY|HEADER|BEARER|COOKIE|"
                             r"CREDENTIAL|CONNECTION_STRING")


@dataclass(frozen=True)
class RemoteSettings:
    # GDAL configuration options merged over GDAL_REMOTE_DEFAULTS for satfind's reads of
    # remote rasters, as strings: {GDAL_HTTP_MAX_RETRY = "8"}. Credentials never go here:
    # GDAL reads them from the environment (AWS_*, GOOGLE_*, AZURE_*, GDAL_HTTP_*).
    gdal: dict[str, str] = field(default_factory=dict)
    # A remote read that still fails after GDAL's own retries (a body cut short, a timeout)
    # is tried again, reopened, this many times, the delay doubling from retry_delay_s.
    read_retries: int = ranged(3, "[0, 20]")
    retry_delay_s: float = ranged(0.5, "[0, 60]")
    # Remote sources whose identity (ETag / Last-Modified / size) is asked for at once, and
    # then inspected at once (header, directory, an overview: the plan, job/plan.py).
    stat_workers: int = ranged(8, "[1, 64]")

    def gdal_options(self) -> dict[str, str]:
        return {**GDAL_REMOTE_DEFAULTS, **self.gdal}


@dataclass(frozen=True)
class Settings:
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    tiling: TilingSettings = field(default_factory=TilingSettings)
    job: JobSettings = field(default_factory=JobSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    remote: RemoteSettings = field(default_factory=RemoteSettings)
    source: str = "<defaults>"

    def __post_init__(self) -> None:
        # target_gsd_m = 0: the preset's training resolution (resolved once, here, so every
        # reader of tiling.target_gsd_m sees a number).
        if self.tiling.target_gsd_m == 0:
            object.__setattr__(self, "tiling", dataclasses.replace(
                self.tiling, target_gsd_m=encoder_gsd_m(self.encoder)))

    def check_encoder(self, embed_dim: int) -> None:
        """Settings that depend on the encoder, checked as soon as it is built."""
        m = self.store.pq_m
        if m and embed_dim % m:
            raise ConfigError(f"{self.source}: store.pq_m = {m} does not divide the encoder's "
                              f"embedding dimension {embed_dim} (try {embed_dim // 8} or 0)")


def encoder_gsd_m(spec: EncoderSpec) -> float:
    """The ground pixel size an encoder was trained at: its preset's, else 10 m."""
    spec = spec.resolved()
    return get_preset(spec.preset).gsd_m if spec.preset else NO_PRESET_GSD_M


NO_PRESET_GSD_M = 10.0

_SECTIONS = {
    "encoder": EncoderSpec,
    "discovery": DiscoverySettings,
    "tiling": TilingSettings,
    "job": JobSettings,
    "store": StoreSettings,
    "remote": RemoteSettings,
}
# Sections owned by other layers (search, api, ui) are allowed and read there.
_FOREIGN_SECTIONS = {"search", "api", "ui", "train"}


def _validate(s: Settings) -> None:
    """What single-key ranges (checked while building each section) cannot say."""
    where = s.source
    try:
        spec = s.encoder.resolved()
        if spec.preset:
            get_preset(spec.preset)
        get_prompt_set(spec.prompt_set)
    except EncoderError as e:
        raise ConfigError(f"{where}: {e}") from None
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
    if t.warp not in WARPS:
        raise ConfigError(f"{where}: tiling.warp must be auto, fast or gdal, got {t.warp!r}")
    if t.warp == "fast" and t.resampling not in FAST_RESAMPLINGS:
        raise ConfigError(f"{where}: tiling.warp fast resamples nearest or bilinear, not "
                          f"{t.resampling!r}; use warp = \"gdal\" for it")
    if s.job.hash_while_reading not in {"auto", "yes", "no"}:
        raise ConfigError(f"{where}: job.hash_while_reading must be auto, yes or no, got "
                          f"{s.job.hash_while_reading!r}")
    if s.job.warp_on not in {"auto", "device", "readers"}:
        raise ConfigError(f"{where}: job.warp_on must be auto, device or readers, got "
                          f"{s.job.warp_on!r}")
    if s.job.kmeans_on not in {"auto", "device", "faiss"}:
        raise ConfigError(f"{where}: job.kmeans_on must be auto, device or faiss, got "
                          f"{s.job.kmeans_on!r}")
    if s.job.thumbnails_on not in {"auto", "device", "readers"}:
        raise ConfigError(f"{where}: job.thumbnails_on must be auto, device or readers, got "
                          f"{s.job.thumbnails_on!r}")
    if s.job.runner not in {"local", "ray"}:
        raise ConfigError(f"{where}: job.runner must be local or ray, got {s.job.runner!r}")
    if 0 < s.store.retrain_growth <= 1:
        raise ConfigError(f"{where}: store.retrain_growth must be 0 (never) or > 1")
    for key in s.remote.gdal:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise ConfigError(f"{where}: remote.gdal key {key!r} is not a GDAL configuration "
                              "option name (upper case, e.g. GDAL_HTTP_MAX_RETRY)")
        if _CREDENTIAL_KEY.search(key):
            raise ConfigError(f"{where}: remote.gdal.{key} looks like a credential: set it in "
                              "the environment, never in a config file")
    try:
        re.compile(s.discovery.filename_time_pattern)
    except re.error as e:
        raise ConfigError(f"{where}: discovery.filename_time_pattern is not a regex: {e}") from None


def load_settings(path: str | Path | None = None, encoder: str | None = None) -> Settings:
    """Read a TOML config (or defaults when `path` is None). `encoder`: a preset name that
    replaces the config's [encoder] choice of model (a command's --encoder NAME)."""
    if path is None:
        return _settings({"encoder": with_preset(EncoderSpec(), encoder)} if encoder else {},
                         "<defaults>")
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
    if encoder:
        parts["encoder"] = with_preset(parts.get("encoder", EncoderSpec()), encoder)
    s = _settings(parts, str(p))
    _validate(s)
    return s


def with_preset(spec: EncoderSpec, choice: str) -> EncoderSpec:
    """`spec` building the preset `choice` ("NAME", or "NAME=FILE" for its weights file in the
    preset's layout) instead of its model; device, seed, prompts and random_weights kept, a
    checkpoint of the old model dropped."""
    name, _, file = choice.partition("=")
    if name.strip() not in PRESETS:
        raise ConfigError(f"--encoder: unknown preset {name.strip()!r} (known: "
                          f"{', '.join(PRESETS)})")
    checkpoint = str(Path(file).expanduser().resolve()) if file else ""
    return dataclasses.replace(spec, preset=name.strip(), model="", pretrained="",
                               checkpoint=checkpoint,
                               random_weights=spec.random_weights and not checkpoint)


def _settings(parts: dict[str, Any], source: str) -> Settings:
    try:
        return Settings(**parts, source=source)
    except EncoderError as e:  # the encoder names an unknown preset, or clashing keys
        raise ConfigError(f"{source}: {e}") from None


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
    # "fast" or "gdal" (TilingSettings.warp decided); recipes recorded before it: gdal.
    warp: str = "gdal"

    @classmethod
    def from_tiling(cls, tiling: TilingSettings, tile_px: int, preset: str = "") -> TileRecipe:
        """The recipe of tiles cut with `tiling` (its warp decided: TilingSettings.with_warp)."""
        keep = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dataclasses.asdict(tiling.with_warp()).items() if k in keep}
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
