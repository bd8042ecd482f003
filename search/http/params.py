"""Query parameters shared by routes: bbox, time and text patterns (documented in the
OpenAPI spec), their parsing into the store's Filters, and the unknown-parameter check."""

import base64
import binascii
import re
from datetime import UTC, date, datetime

from indexer.store.tiles import Filters
from search.query import QueryError, TooLarge

# Documented in the spec (not enforced by FastAPI: the handlers give clearer messages).
_LON = r"-?(180(\.0+)?|(1[0-7][0-9]|[0-9]{1,2})(\.[0-9]+)?)"
_LAT = r"-?(90(\.0+)?|[0-8]?[0-9](\.[0-9]+)?)"
BBOX_PATTERN = rf"^({_LON},{_LAT},{_LON},{_LAT})?$"  # empty = no filter
_DATE = (r"(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
         r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])")
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
TIME_PATTERN = rf"^({_DATE}(T{_CLOCK}(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?)?$"
TIME_REQUIRED = rf"^{_DATE}(T{_CLOCK}(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?$"
TEXT_PATTERN = r"\S"


def parse_time(value: str | None, name: str, end: bool = False) -> datetime | None:
    """ISO date or datetime; no zone = UTC; a bare date as `end` means the end of that day.
    Any date the calendar holds is accepted (9999-12-31 included); out-of-range is a 400."""
    if value is None or value == "":
        return None
    v = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            d = date.fromisoformat(v)
            t = datetime(d.year, d.month, d.day, tzinfo=UTC)
            if end:
                t = t.replace(hour=23, minute=59, second=59, microsecond=999999)
            return t
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{name}: {value!r} is not an ISO date or datetime "
                         "(e.g. 2014-07-20 or 2014-07-20T10:00:00Z)") from None
    if t.tzinfo is None:
        return t.replace(tzinfo=UTC)
    try:
        return t.astimezone(UTC)
    except OverflowError:
        raise QueryError(f"{name}: {value!r} is outside the years 1..9999 in UTC") from None


def parse_bbox(value: str | None) -> tuple[float, float, float, float] | None:
    if value is None or value == "":
        return None
    parts = value.split(",")
    try:
        nums = tuple(float(p) for p in parts)
    except ValueError:
        nums = ()
    if len(nums) != 4:
        raise QueryError(f"bbox: expected 'west,south,east,north' in degrees, got {value!r}")
    return nums  # type: ignore[return-value]


def image_from_base64(text: str, max_bytes: int) -> bytes:
    """A query image sent as base64 in a JSON body. Too large is refused on the text's
    length, before decoding (413); text that is not base64, decodes to nothing, or decodes to
    the up to 3 bytes over the limit that length check lets through is a 400."""
    if len(text) > max_bytes * 4 // 3 + 4:
        raise TooLarge(f"image is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not data or len(data) > max_bytes:
        raise QueryError("image_base64 is not valid base64")
    return data


def make_filters(bbox, start, end, sensor, source, undated: bool = False) -> Filters:
    return Filters(bbox=bbox, start=parse_time(start, "start"),
                   end=parse_time(end, "end", end=True),
                   sensors=tuple(s for s in sensor if s), sources=tuple(s for s in source if s),
                   undated=bool(undated))


def query_params(dependant) -> list:
    """Every query parameter of a route, its dependencies' included."""
    out = list(dependant.query_params)
    for sub in dependant.dependencies:
        out += query_params(sub)
    return out


