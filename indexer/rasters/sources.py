"""What a raster source is: a path (or URL) with what its catalogue says about it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class RasterSource:
    """One raster to index, with what its catalogue entry (if any) says about it."""

    path: str  # absolute path of the raster file
    stac_item: str | None = None  # the STAC item JSON it came from
    acquired: datetime | None = None  # from STAC
    sensor: str | None = None  # from STAC platform/constellation


def parse_tiff_datetime(value: str) -> datetime | None:
    """TIFFTAG_DATETIME is 'YYYY:MM:DD HH:MM:SS' (TIFF 6.0); treated as UTC."""
    try:
        return datetime.strptime(value.strip(), "%Y:%m:%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
