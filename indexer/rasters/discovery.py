"""Archive discovery: folders, single rasters, list files, URLs, STAC items and a STAC API
search -> raster sources."""

from __future__ import annotations

import json
import os
from pathlib import Path

from indexer.config import DiscoverySettings
from indexer.errors import InputError
from indexer.rasters.remote import check_url, is_url, public, redact, url_scheme
from indexer.rasters.sources import RasterSource
from indexer.rasters.stac import collection_sources
from indexer.rasters.stac_api import StacSearch, search_sources

LIST_SUFFIXES = {".txt", ".lst"}
STAC_SUFFIXES = {".json", ".geojson"}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(str(path), f"not a readable JSON file ({e.__class__.__name__})") from None
    except RecursionError:
        raise InputError(str(path), "JSON nested too deeply to be a STAC item") from None


def _stac_sources(path: Path, settings: DiscoverySettings
                  ) -> tuple[list[RasterSource], list[InputError]]:
    """Sources of a STAC item or ItemCollection file (assets: files next to it or URLs)."""
    return collection_sources(_read_json(path), path.parent, str(path), settings)


def _url_sources(url: str, settings: DiscoverySettings
                 ) -> tuple[list[RasterSource], list[InputError]]:
    """A URL argument: a remote raster, or a STAC item / ItemCollection (.json) fetched
    from it (relative asset hrefs resolve against it)."""
    try:
        check_url(url)
    except InputError as e:
        return [], [e]
    if not public(url).lower().endswith(tuple(STAC_SUFFIXES)):
        return [RasterSource(url)], []
    import pystac

    try:
        data = json.loads(pystac.StacIO.default().read_text(url))
    except Exception as e:  # HTTP, connection and JSON errors come as several types
        msg = redact(str(e).splitlines()[0]) if str(e) else type(e).__name__
        return [], [InputError(public(url), f"cannot read the STAC JSON: {msg}")]
    try:
        return collection_sources(data, url, public(url), settings)
    except InputError as e:
        return [], [e]


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
        entry = line
        if not is_url(line) and not Path(line).is_absolute():
            entry = str(path.parent / line)
        s, p = _discover_one(entry, settings, from_list=True)
        sources += s
        problems += p
    return sources, problems


def _discover_one(arg: str, settings: DiscoverySettings, from_list: bool = False):
    if is_url(arg) and url_scheme(arg) != "file":
        return _url_sources(arg, settings)
    path = Path(arg.removeprefix("file://"))
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


def discover(archives: list[str], settings: DiscoverySettings, search: StacSearch | None = None):
    """ARCHIVE arguments (paths, URLs) and a STAC API search -> (unique raster sources in a
    stable order, input problems)."""
    sources: list[RasterSource] = []
    problems: list[InputError] = []
    for a in archives:
        s, p = _discover_one(a, settings)
        sources += s
        problems += p
    if search is not None:
        try:
            sources_found, bad = search_sources(search, settings)
            sources += sources_found
            problems += bad
        except InputError as e:
            problems.append(e)
    seen: dict[str, RasterSource] = {}
    for s in sources:
        # A raster reached both directly and through a STAC item keeps the STAC metadata.
        if s.path not in seen or (s.stac_item and not seen[s.path].stac_item):
            seen[s.path] = s
    return list(seen.values()), problems
