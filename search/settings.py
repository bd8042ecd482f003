"""[search] and [api] sections of index_config.toml."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from indexer.config import ConfigError, Settings, load_settings, read_sections


@dataclass(frozen=True)
class SearchSettings:
    # IVF lists probed per query (ignored by a Flat index).
    # Defaults from the nprobe x depth sweep of bench/search.py at 1M vectors (BENCHMARKS.md).
    nprobe: int = 16
    # Candidates taken from the ANN index and re-ranked exactly from the float16 copies.
    rerank_depth: int = 400
    # A filter that keeps at most this many tiles is answered exactly over their vectors;
    # a broader one goes through FAISS with an IDSelector (and more probes).
    exact_max_candidates: int = 2000
    # Relevance feedback: query = base + mean(positives) - negative_weight * mean(negatives).
    negative_weight: float = 0.5
    text_cache_size: int = 4096


@dataclass(frozen=True)
class ApiSettings:
    default_k: int = 20
    max_k: int = 200
    max_upload_bytes: int = 10 * 1024 * 1024
    # Sniffed from the bytes, never trusted from the Content-Type header.
    allowed_image_types: tuple[str, ...] = ("png", "jpeg", "tiff")
    min_image_px: int = 16
    # Non-empty: every request except /health must send it as X-API-Key.
    api_key: str = ""
    cors_origins: tuple[str, ...] = ()
    # Public base of thumbnail URLs ("" = relative URLs like /tiles/12/thumbnail.jpg).
    public_url: str = ""


@dataclass(frozen=True)
class ServeConfig:
    settings: Settings
    search: SearchSettings = field(default_factory=SearchSettings)
    api: ApiSettings = field(default_factory=ApiSettings)


def load_serve_config(path: str | Path | None) -> ServeConfig:
    settings = load_settings(path)
    sec = read_sections(path, {"search": SearchSettings, "api": ApiSettings})
    s, a = sec["search"], sec["api"]
    where = settings.source
    if s.nprobe < 1 or s.rerank_depth < 1 or s.exact_max_candidates < 0:
        raise ConfigError(f"{where}: search.nprobe and rerank_depth must be >= 1")
    if not 1 <= a.default_k <= a.max_k:
        raise ConfigError(f"{where}: api.default_k must be in 1..api.max_k")
    bad = set(a.allowed_image_types) - {"png", "jpeg", "tiff"}
    if bad:
        raise ConfigError(f"{where}: api.allowed_image_types: unknown {sorted(bad)} "
                          "(png, jpeg, tiff)")
    return ServeConfig(settings, s, a)
