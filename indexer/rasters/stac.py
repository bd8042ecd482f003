"""STAC items -> raster sources: which asset of an item is the raster (by key, else by
role), where its href points (a local file next to the item, or a URL GDAL reads), and
what the item says about it (time, sensor, id, checksum). Used for item files, item
collections and the items of a STAC API search alike."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from urllib.parse import urljoin

from indexer.config import DiscoverySettings
from indexer.errors import InputError
from indexer.rasters.remote import check_url, is_url, public, url_scheme
from indexer.rasters.sources import RasterSource


def is_stac_item(data: object) -> bool:
    return isinstance(data, dict) and data.get("type") == "Feature" and "stac_version" in data


def _is_tiff(asset) -> bool:
    return ("tiff" in (asset.media_type or "").lower()
            or public(asset.href).lower().endswith((".tif", ".tiff")))


def choose_asset(item, settings: DiscoverySettings, where: str):
    """The asset to index: `stac_asset` by key when set, else the first GeoTIFF asset with
    the first role of `stac_asset_roles` that any has (visual before data by default: an
    RGB image before single bands), else the first GeoTIFF asset."""
    assets = item.assets
    if settings.stac_asset:
        if settings.stac_asset not in assets:
            raise InputError(where, f"STAC item {item.id!r} has no asset "
                             f"{settings.stac_asset!r} (has: {', '.join(assets) or 'none'})")
        return assets[settings.stac_asset]
    tiffs = [a for a in assets.values() if _is_tiff(a)]
    for role in settings.stac_asset_roles:
        for a in tiffs:
            if role in (a.roles or []):
                return a
    if not tiffs:
        raise InputError(where, f"STAC item {item.id!r} has no GeoTIFF asset (has: "
                         f"{', '.join(assets) or 'none'}; choose one with --asset KEY)")
    return tiffs[0]


def _local_raster(href: str, base: Path, settings: DiscoverySettings, item_id: str,
                  where: str) -> str:
    raster = (base / href).resolve()  # an absolute href stays absolute
    roots = [base.resolve(), *(Path(r) for r in settings.allowed_roots)]
    if not any(raster.is_relative_to(r) for r in roots):
        raise InputError(where, f"STAC item {item_id!r}: asset {href!r} lies outside the "
                         "item's folder (allow other folders with discovery.allowed_roots)")
    if not raster.exists():
        raise InputError(where, f"STAC item {item_id!r}: asset file {raster} is missing")
    if not raster.is_file():
        raise InputError(where, f"STAC item {item_id!r}: asset {raster} is not a regular file")
    return str(raster)


def item_source(data: dict, base: Path | str, origin: str, where: str,
                settings: DiscoverySettings) -> RasterSource:
    """The raster source of one STAC item dict. `base`: the item file's folder (relative
    hrefs are files there) or the URL relative hrefs resolve against; `origin`: where the
    item came from (file or API), recorded with its tiles."""
    import pystac

    if not is_stac_item(data):
        raise InputError(where, "not a STAC item (expected type 'Feature' with stac_version)")
    try:
        item = pystac.Item.from_dict(data)
    except Exception as e:  # pystac raises several types for malformed items
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(where, f"invalid STAC item: {msg}") from None
    asset = choose_asset(item, settings, where)
    href = asset.href
    if isinstance(base, str) and not is_url(href):
        href = urljoin(base, href)  # an item fetched from a URL: relative to it
    if is_url(href) and url_scheme(href) != "file":
        try:
            check_url(href)
        except InputError as e:
            raise InputError(where, f"STAC item {item.id!r}: {e}") from None
        path = href
    else:
        local_base = base if isinstance(base, Path) else Path(".")
        path = _local_raster(href.removeprefix("file://"), local_base, settings, item.id,
                             where)
    when = item.datetime or item.common_metadata.start_datetime
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    sensor = item.common_metadata.platform or item.common_metadata.constellation
    extra = asset.extra_fields
    checksum = extra.get("file:checksum")
    size = extra.get("file:size")
    return RasterSource(path, stac_item=origin, acquired=when, sensor=sensor, item_id=item.id,
                        checksum=str(checksum) if checksum else None,
                        size=int(size) if isinstance(size, int) else None)


def collection_sources(data: object, base: Path | str, origin: str,
                       settings: DiscoverySettings
                       ) -> tuple[list[RasterSource], list[InputError]]:
    """Sources of a STAC item or ItemCollection (dict); a bad item of a collection is one
    problem, the other items still count."""
    collection = isinstance(data, dict) and data.get("type") == "FeatureCollection"
    features = data.get("features", []) if collection else [data]
    if collection and not isinstance(features, list):
        raise InputError(origin, "FeatureCollection 'features' is not a list")
    out, problems = [], []
    for n, feat in enumerate(features):
        where = f"{origin} (feature {n})" if collection else origin
        try:
            out.append(item_source(feat, base, origin, where, settings))
        except InputError as e:
            if not collection:
                raise
            problems.append(e)
    return out, problems
