"""Ground-satellite training pairs for GRAFT.

Photos come with a position from their EXIF GPS tags or a CSV/Parquet table of path, lat,
lon[, time]; each sample is a square satellite patch on a web-mercator pixel grid around one
photo (jittered, so the photo is not always central) with every photo inside it as a
positive, at its pixel position. `data.py` reads the patches and writes the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

GPS_IFD = 0x8825
EXIF_IFD = 0x8769


@dataclass(frozen=True)
class Photo:
    path: str
    lat: float
    lon: float
    time: datetime | None = None


def _dms(value, ref: str) -> float:
    d, m, s = (float(v) for v in value)
    deg = d + m / 60 + s / 3600
    return -deg if ref in ("S", "W") else deg


class PairError(ValueError):
    """Bad training-pair input (one-line message naming the file)."""


class NoGeotag(ValueError):
    """A photo without a usable position (the reason is the message)."""


def read_geotag(path: str | Path) -> Photo:
    """Position (and time) from a photo's EXIF GPS tags; NoGeotag says why there is none."""
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            gps = exif.get_ifd(GPS_IFD)
            if not gps or 2 not in gps or 4 not in gps:
                raise NoGeotag("no EXIF GPS position")
            lat = _dms(gps[2], str(gps.get(1, "N")).strip())
            lon = _dms(gps[4], str(gps.get(3, "E")).strip())
            stamp = exif.get_ifd(EXIF_IFD).get(36867) or exif.get(306)
    except (OSError, UnidentifiedImageError) as e:
        raise NoGeotag(f"not a readable image ({type(e).__name__})") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        if isinstance(e, NoGeotag):
            raise
        raise NoGeotag(f"malformed EXIF GPS tags ({type(e).__name__})") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise NoGeotag(f"EXIF GPS position {lat:.5f}, {lon:.5f} is out of range")
    when = None
    if stamp:
        try:
            when = datetime.strptime(str(stamp).strip(), "%Y:%m:%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            when = None
    return Photo(str(Path(path).resolve()), lat, lon, when)


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff", ".png")


def photos_from_folder(folder: str | Path, skipped: list[str] | None = None) -> list[Photo]:
    """Every photo under `folder` with EXIF GPS tags; the others are left out, with a
    'path: reason' line each in `skipped`."""
    out = []
    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() in PHOTO_SUFFIXES:
            try:
                out.append(read_geotag(p))
            except NoGeotag as e:
                if skipped is not None:
                    skipped.append(f"{p}: {e}")
    return out


def _parse_time(value, where: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        t = value
    else:
        try:
            t = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise PairError(f"{where}: time {value!r} is not an ISO 8601 date/time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def photos_from_table(table_path: str | Path) -> list[Photo]:
    """Photos from a CSV or Parquet table with columns path, lat, lon and optionally time
    (ISO 8601; no zone = UTC). Relative paths are relative to the table's folder."""
    tp = Path(table_path)
    try:
        if tp.suffix.lower() == ".parquet":
            table = pq.read_table(tp)
        else:
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(tp, convert_options=pacsv.ConvertOptions(
                column_types={"path": pa.string(), "time": pa.string()}))
    except (OSError, pa.ArrowInvalid) as e:
        raise PairError(f"{tp}: cannot read photo table ({str(e).splitlines()[0]})") from None
    missing = [c for c in ("path", "lat", "lon") if c not in table.column_names]
    if missing:
        raise PairError(f"{tp}: photo table needs columns path, lat, lon[, time]; "
                        f"missing {', '.join(missing)}")
    rows = table.to_pylist()
    out = []
    for i, row in enumerate(rows, start=2 if tp.suffix.lower() != ".parquet" else 0):
        where = f"{tp}: row {i}"
        try:
            lat, lon = float(row["lat"]), float(row["lon"])
        except (TypeError, ValueError):
            raise PairError(f"{where}: lat/lon must be numbers, got {row['lat']!r}, "
                            f"{row['lon']!r}") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise PairError(f"{where}: lat {lat} / lon {lon} out of range")
        if not row["path"]:
            raise PairError(f"{where}: empty path")
        path = Path(row["path"])
        if not path.is_absolute():
            path = tp.parent / path
        if not path.is_file():
            raise PairError(f"{where}: photo {path} does not exist")
        out.append(Photo(str(path.resolve()), lat, lon, _parse_time(row.get("time"), where)))
    return out


def load_photos(source: str | Path, skipped: list[str] | None = None) -> list[Photo]:
    """A folder of EXIF-geotagged photos, or a CSV/Parquet table of path, lat, lon[, time]."""
    p = Path(source)
    if p.is_dir():
        photos = photos_from_folder(p, skipped)
        if not photos:
            raise PairError(f"{p}: no photo with EXIF GPS tags in this folder")
        return photos
    if p.is_file() and p.suffix.lower() in (".csv", ".parquet"):
        photos = photos_from_table(p)
        if not photos:
            raise PairError(f"{p}: the photo table has no rows")
        return photos
    if not p.exists():
        raise PairError(f"{p}: does not exist")
    raise PairError(f"{p}: expected a folder of geotagged photos or a .csv/.parquet table")
