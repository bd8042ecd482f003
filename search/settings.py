"""[search] and [api] sections of index_config.toml."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from indexer.config import Settings, load_settings
from indexer.configfile import ConfigError, ranged, read_sections


@dataclass(frozen=True)
class SearchSettings:
    # IVF lists probed per query (ignored by a Flat index).
    # Defaults from the nprobe x depth sweep of bench/search.py at 1M vectors (BENCHMARKS.md).
    nprobe: int = ranged(16, "[1, 65536]")
    # Candidates taken from the ANN index and re-ranked exactly from the float16 copies.
    rerank_depth: int = ranged(400, "[1, 100000]")
    # A filter that keeps at most this many tiles is answered exactly over their vectors;
    # a broader one goes through FAISS with an IDSelector (and more probes).
    exact_max_candidates: int = ranged(2000, "[0, 10000000]")
    # Relevance feedback: query = base + mean(positives) - negative_weight * mean(negatives).
    negative_weight: float = ranged(0.5, "[0, 10]")
    text_cache_size: int = ranged(4096, "[0, 1000000]")
    # On a CPU server, the text tower with dynamic int8 Linear layers: 1.7x faster text
    # queries (bench/text.py), cosine >= 0.999 to fp32 measured on random weights only.
    text_int8: bool = False


@dataclass(frozen=True)
class ApiSettings:
    default_k: int = ranged(20, "[1, 10000]")
    max_k: int = ranged(200, "[1, 10000]")
    # Largest query image; every request body is capped at what carries one (base64 in JSON
    # adds a third, plus 64 KiB for the other fields): larger bodies get 413 unread.
    max_upload_bytes: int = ranged(10 * 1024 * 1024, "[1024, 1073741824]")
    # Largest width x height a query image may declare; checked on the header, before any
    # pixel is decoded (a 20 KB PNG can declare 13000 x 13000). 50 MP: a full-frame photo.
    max_image_pixels: int = ranged(50_000_000, "[4096, 1000000000]")
    # Query images decoded at the same time (each may take a few hundred MB at the cap).
    max_concurrent_decodes: int = ranged(2, "[1, 64]")
    # Sniffed from the bytes, never trusted from the Content-Type header.
    allowed_image_types: tuple[str, ...] = ("png", "jpeg", "tiff")
    min_image_px: int = ranged(16, "[1, 4096]")
    # Most tiles one region-score, change or classifier request may score (each is an exact
    # inner product over the float16 copies; 1M tiles ~ 1 GB read).
    max_score_tiles: int = ranged(1_000_000, "[1, 100000000]")
    # Rendered 256 px map tiles kept in memory (256 KB each).
    map_cache_tiles: int = ranged(512, "[0, 100000]")
    # Non-empty: every request except /health must send it as X-API-Key.
    api_key: str = ""
    cors_origins: tuple[str, ...] = ()
    # Public base of thumbnail URLs ("" = relative URLs like /tiles/12/thumbnail.jpg).
    public_url: str = ""
    # Non-empty: only these Host headers are served (e.g. ["search.example.org"]; "*.x.org"
    # wildcards): requests for any other host get 400 (DNS-rebinding protection).
    trusted_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServeConfig:
    settings: Settings
    search: SearchSettings = field(default_factory=SearchSettings)
    api: ApiSettings = field(default_factory=ApiSettings)


def load_serve_config(path: str | Path | None, encoder: str | None = None) -> ServeConfig:
    """`encoder`: a preset name replacing the config's [encoder] model (--encoder)."""
    settings = load_settings(path, encoder=encoder)
    sec = read_sections(path, {"search": SearchSettings, "api": ApiSettings})
    s, a = sec["search"], sec["api"]
    where = settings.source
    if not 1 <= a.default_k <= a.max_k:
        raise ConfigError(f"{where}: api.default_k must be in 1..api.max_k")
    bad = set(a.allowed_image_types) - {"png", "jpeg", "tiff"}
    if bad:
        raise ConfigError(f"{where}: api.allowed_image_types: unknown {sorted(bad)} "
                          "(png, jpeg, tiff)")
    return ServeConfig(settings, s, a)
