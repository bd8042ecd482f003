"""What a raster source is: a path (or URL) with what its catalogue says about it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class RasterSource:
    """One raster to index, with what its catalogue entry (if any) says about it."""

    # Absolute path of a local raster, or the URL GDAL reads (http(s), s3, gs, az; with
    # its query string: never stored or printed, see remote.public).
    path: str
    stac_item: str | None = None  # the STAC item JSON (file or API items URL) it came from
    acquired: datetime | None = None  # from STAC
    sensor: str | None = None  # from STAC platform/constellation
    item_id: str | None = None  # the STAC item's id
    checksum: str | None = None  # the asset's STAC file:checksum (multihash, hex)
    size: int | None = None  # the asset's STAC file:size (bytes)


def parse_tiff_datetime(value: str) -> datetime | None:
    """TIFFTAG_DATETIME is 'YYYY:MM:DD HH:MM:SS' (TIFF 6.0); treated as UTC."""
    try:
        return datetime.strptime(value.strip(), "%Y:%m:%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
