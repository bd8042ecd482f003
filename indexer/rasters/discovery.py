"""Archive discovery: folders, single rasters, list files and STAC items -> raster sources."""

from __future__ import annotations

import json
import os
from datetime import UTC
from pathlib import Path

from indexer.config import DiscoverySettings
from indexer.errors import InputError
from indexer.rasters.sources import RasterSource

LIST_SUFFIXES = {".txt", ".lst"}
STAC_SUFFIXES = {".json", ".geojson"}


def _is_stac_item(data: object) -> bool:
    return isinstance(data, dict) and data.get("type") == "Feature" and "stac_version" in data


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(str(path), f"not a readable JSON file ({e.__class__.__name__})") from None
    except RecursionError:
        raise InputError(str(path), "JSON nested too deeply to be a STAC item") from None


def _stac_sources(path: Path, settings: DiscoverySettings
                  ) -> tuple[list[RasterSource], list[InputError]]:
    """Sources of a STAC item or ItemCollection file; a bad item of a collection is one
    problem, the other items still count."""
    import pystac

    data = _read_json(path)
    collection = isinstance(data, dict) and data.get("type") == "FeatureCollection"
    features = data.get("features", []) if collection else [data]
    if collection and not isinstance(features, list):
        raise InputError(str(path), "FeatureCollection 'features' is not a list")
    out, problems = [], []
    for n, feat in enumerate(features):
        where = f"{path} (feature {n})" if collection else str(path)
        try:
            if not _is_stac_item(feat):
                raise InputError(where,
                                 "not a STAC item (expected type 'Feature' with stac_version)")
            try:
                item = pystac.Item.from_dict(feat)
            except Exception as e:  # pystac raises several types for malformed items
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise InputError(where, f"invalid STAC item: {msg}") from None
            out.append(_stac_item_source(item, path, where, settings))
        except InputError as e:
            if not collection:
                raise
            problems.append(e)
    return out, problems


def _stac_item_source(item, path: Path, where: str, settings: DiscoverySettings
                      ) -> RasterSource:
    assets = item.assets
    if settings.stac_asset:
        if settings.stac_asset not in assets:
            raise InputError(
                where, f"STAC item {item.id!r} has no asset {settings.stac_asset!r} "
                f"(has: {', '.join(assets) or 'none'})"
            )
        asset = assets[settings.stac_asset]
    else:
        tiffs = [a for a in assets.values() if "tiff" in (a.media_type or "").lower()
                 or a.href.lower().endswith((".tif", ".tiff"))]
        preferred = [a for a in tiffs if {"data", "visual"} & set(a.roles or [])]
        if not (preferred or tiffs):
            raise InputError(where, f"STAC item {item.id!r} has no GeoTIFF asset")
        asset = (preferred or tiffs)[0]
    href = asset.href
    if "://" in href and not href.startswith("file://"):
        raise InputError(where, f"STAC item {item.id!r}: remote asset {href} is not supported")
    href = href.removeprefix("file://")
    raster = (path.parent / href).resolve()  # an absolute href stays absolute
    roots = [path.parent.resolve(), *(Path(r) for r in settings.allowed_roots)]
    if not any(raster.is_relative_to(r) for r in roots):
        raise InputError(where, f"STAC item {item.id!r}: asset {href!r} lies outside the item's "
                         "folder (allow other folders with discovery.allowed_roots)")
    if not raster.exists():
        raise InputError(where, f"STAC item {item.id!r}: asset file {raster} is missing")
    if not raster.is_file():
        raise InputError(where, f"STAC item {item.id!r}: asset {raster} is not a regular file")
    when = item.datetime or item.common_metadata.start_datetime
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    sensor = item.common_metadata.platform or item.common_metadata.constellation
    return RasterSource(str(raster), stac_item=str(path), acquired=when, sensor=sensor)


def _list_file_sources(path: Path, settings: DiscoverySettings):
    sources, problems = [], []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return [], [InputError(str(path), f"cannot read list file ({e.__class__.__name__})")]
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line)
        if not entry.is_absolute():
            entry = path.parent / entry
        s, p = _discover_one(entry, settings, from_list=True)
        sources += s
        problems += p
    return sources, problems


def _discover_one(path: Path, settings: DiscoverySettings, from_list: bool = False):
    if not path.exists():
        return [], [InputError(str(path), "does not exist")]
    if path.is_dir():
        return _folder_sources(path, settings)
    if not path.is_file():
        return [], [InputError(str(path), "not a regular file (a device, FIFO or socket): "
                               "refused")]
    suffix = path.suffix.lower()
    try:
        if suffix in STAC_SUFFIXES:
            return _stac_sources(path, settings)
        if suffix in LIST_SUFFIXES and not from_list:
            return _list_file_sources(path, settings)
    except InputError as e:
        return [], [e]
    return [RasterSource(str(path.resolve()))], []


def _walk(folder: Path):
    """Every regular file under `folder`, following symlinked sub-folders (each real folder
    visited once, so a link loop ends), skipping hidden names, in a stable order."""
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(root) / name
            if not name.startswith(".") and p.is_file():
                yield p


def _folder_sources(folder: Path, settings: DiscoverySettings):
    exts = {e.lower() for e in settings.raster_extensions}
    rasters, stac_files = [], []
    for p in _walk(folder):
        if p.suffix.lower() in exts:
            rasters.append(p.resolve())
        elif p.suffix.lower() in STAC_SUFFIXES:
            stac_files.append(p)
    sources, problems = [], []
    for f in stac_files:
        try:
            found, bad = _stac_sources(f, settings)
            sources += found
            problems += bad
        except InputError as e:
            # Other JSON files in an archive folder are not an error; broken STAC items are.
            if "not a STAC item" not in e.message and "nested too deeply" not in e.message:
                problems.append(e)
    described = {s.path for s in sources}
    sources += [RasterSource(str(r)) for r in rasters if str(r) not in described]
    if not sources and not problems:
        problems.append(InputError(str(folder), "folder contains no GeoTIFF or STAC item "
                                   f"(looked for {', '.join(sorted(exts))}, .json)"))
    return sources, problems


def discover(archives: list[str], settings: DiscoverySettings):
    """ARCHIVE arguments -> (unique raster sources in a stable order, input problems)."""
    sources: list[RasterSource] = []
    problems: list[InputError] = []
    for a in archives:
        s, p = _discover_one(Path(a), settings)
        sources += s
        problems += p
    seen: dict[str, RasterSource] = {}
    for s in sources:
        # A raster reached both directly and through a STAC item keeps the STAC metadata.
        if s.path not in seen or (s.stac_item and not seen[s.path].stac_item):
            seen[s.path] = s
    return list(seen.values()), problems
