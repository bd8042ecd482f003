"""The tile table of a snapshot held in memory as columns, and the filters over it.

Filters are evaluated with numpy over the tiles' cells (a bbox as integer x / y ranges), int32
seconds and dictionary codes, and give a mask by tile id: what the vector index takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer.errors import FilterError
from indexer.store import cells, zones
from indexer.store.rows import PartRows

NO_TIME = np.iinfo(np.int64).min
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    # west, south, east, north; west > east is a box across the antimeridian (as in GeoJSON
    # and STAC): west..180 and -180..east.
    bbox: tuple[float, float, float, float] | None = None
    start: datetime | None = None
    end: datetime | None = None
    sensors: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # exact path or folder prefix
    # Tiles without an acquisition time pass a start/end filter too (default: they do not).
    undated: bool = False

    def __post_init__(self):
        if self.bbox is not None:
            _check_bbox(self.bbox)
        for name in ("start", "end"):
            v = getattr(self, name)
            if v is not None and v.tzinfo is None:
                raise FilterError(f"{name}: give a time zone (e.g. 2014-01-01T00:00:00Z)")
        if self.start and self.end and self.start > self.end:
            raise FilterError("start is after end")

    @property
    def active(self) -> bool:
        return bool(self.bbox or self.start or self.end or self.sensors or self.sources)

    def sql(self) -> tuple[str, list]:
        """The same filter as a SQL WHERE clause over the tile columns (with its
        parameters): an independent statement of the semantics that tests check
        `TileTable.mask` against."""
        where, params = [], []
        if self.bbox:
            w, s, e, n = self.bbox
            lon = "east > ? AND west < ?" if w < e else "(east > ? OR west < ?)"
            where.append(f"{lon} AND north > ? AND south < ?")
            params += [w, e, s, n]
        times = []
        if self.start:
            times.append("acquired >= ?")
            params.append(self.start)
        if self.end:
            times.append("acquired <= ?")
            params.append(self.end)
        if times:
            clause = " AND ".join(times)
            where.append(f"(acquired IS NULL OR ({clause}))" if self.undated else clause)
        if self.sensors:
            where.append(f"sensor IN ({', '.join('?' * len(self.sensors))})")
            params += list(self.sensors)
        if self.sources:
            alts = []
            for src in self.sources:
                alts.append("(source = ? OR starts_with(source, ?))")
                params += [src, src.rstrip("/") + "/"]
            where.append("(" + " OR ".join(alts) + ")")
        return " AND ".join(where) or "TRUE", params


def _check_bbox(bbox: tuple[float, float, float, float]) -> None:
    w, s, e, n = bbox
    if not all(np.isfinite(bbox)):
        raise FilterError("bbox: values must be finite numbers")
    if not (-180 <= w <= 180 and -180 <= e <= 180):
        raise FilterError("bbox: longitudes must be within -180..180")
    if not (-90 <= s <= 90 and -90 <= n <= 90):
        raise FilterError("bbox: latitudes must be within -90..90")
    if w == e:
        raise FilterError("bbox: west equals east (west,south,east,north; west > east "
                          "means a box across the antimeridian)")
    if s >= n:
        raise FilterError("bbox: south must be less than north (west,south,east,north)")


NO_TIME = np.iinfo(np.int64).min  # a missing acquisition time, in int64 microseconds
NO_SECOND = np.iinfo(np.int32).min  # the same in the table's int32 seconds
SEC_MIN, SEC_MAX = NO_SECOND + 1, np.iinfo(np.int32).max
T0 = datetime(2000, 1, 1, tzinfo=UTC)  # the table's seconds count from here (1931..2068;
# times outside are clamped to the ends and compared exactly, like sub-second ones)
US = 1_000_000


def _micros(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


T0_US = _micros(T0)


def _second(us: int) -> int:
    """The table's int32 second of an exact time in microseconds (clamped)."""
    return int(min(max((us - T0_US) // US, SEC_MIN), SEC_MAX))


def _seconds(us: np.ndarray) -> tuple[np.ndarray, bool]:
    """int32 seconds since T0 (floor, clamped; NO_SECOND for NO_TIME), and whether every
    time is a whole second inside the range (then the seconds compare exactly)."""
    valid = us != NO_TIME
    rel = np.where(valid, us, T0_US) - T0_US
    sec = np.floor_divide(rel, US)
    exact = bool(np.all(rel % US == 0)) and bool(np.all((sec >= SEC_MIN) & (sec <= SEC_MAX)))
    out = np.clip(sec, SEC_MIN, SEC_MAX).astype(np.int32)
    out[~valid] = NO_SECOND
    return out, exact


def _coding(column: pa.ChunkedArray, names: list, at: dict) -> list:
    """How to code a string column in the table-wide dictionary `names` (extended in place,
    `at` its inverse; None for nulls): per chunk, its dictionary indices and their remap.
    (Only the small dictionaries are read here; `_codes` maps the indices.)"""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    out = []
    for chunk in column.chunks:
        remap = np.empty(len(chunk.dictionary) + 1, dtype=np.int64)
        for i, name in enumerate([*chunk.dictionary.to_pylist(), None]):
            if name not in at:
                at[name] = len(names)
                names.append(name)
            remap[i] = at[name]
        out.append((chunk.indices, remap))
    return out


def _codes(coding: list) -> np.ndarray:
    """The codes `_coding` prepared."""
    out = [remap[pc.fill_null(idx, len(remap) - 1).to_numpy()] for idx, remap in coding]
    return np.concatenate(out) if len(out) != 1 else out[0]


def _put(buf: np.ndarray, ids: np.ndarray, values) -> None:
    """buf[ids] = values, as a slice when the ids are a run (a part's usually are)."""
    if len(ids) and ids[-1] - ids[0] == len(ids) - 1:
        buf[ids[0]:ids[-1] + 1] = values
    else:
        buf[ids] = values


def _width(names: list) -> np.dtype:
    return np.min_scalar_type(max(len(names) - 1, 0))


class _Col:
    """An id-indexed column that grows by commit: tables view [0:n] of one buffer; the view
    ending where the buffer is claimed may extend it in place (older views never look past
    their own end, so a query running on an older table is not disturbed)."""

    __slots__ = ("buf", "claimed")

    def __init__(self, buf: np.ndarray, claimed: int):
        self.buf, self.claimed = buf, claimed

    def grown(self, n: int, new_n: int, fill, dtype=None, copy: bool = False) -> _Col:
        """This column's first n values plus fill up to new_n (a new buffer when it cannot
        grow in place, is to be changed (`copy`), or changes dtype)."""
        dtype = np.dtype(dtype or self.buf.dtype)
        # A buffer always has a zone-map block of room past the table's end: a filter reads
        # whole blocks (what lies past next_id it cuts off).
        if (not copy and self.claimed == n and len(self.buf) >= new_n + zones.BLOCK
                and dtype == self.buf.dtype):
            self.buf[n:new_n] = fill
            self.claimed = new_n
            return self
        # Room to grow in place: pages never written are not resident.
        buf = np.empty(max(new_n + new_n // 4 + 65536 + zones.BLOCK, n + n // 2), dtype=dtype)
        buf[:n] = self.buf[:n]
        buf[n:new_n] = fill
        return _Col(buf, new_n)


def _lut(names: list, wanted) -> np.ndarray:
    """Per dictionary code: is its name wanted?"""
    return np.fromiter((bool(wanted(n)) for n in names), dtype=bool, count=len(names))


def _and(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a &= b
    return a


def _in(col: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """lo <= col < hi over an unsigned column, in one subtraction and one comparison."""
    if lo >= hi:
        return np.zeros(len(col), dtype=bool)
    return (col - col.dtype.type(lo)) < col.dtype.type(hi - lo)


class TileTable:
    """What a server keeps in memory of every committed tile, indexed by tile id
    (0..next_id-1): its cell (z int8, x / y uint32; -1 in z for an id with no tile, removed
    or never committed), its acquisition time in int32 seconds, its sensor and source as
    dictionary codes: 14-16 bytes a tile. Filters run over these. Everything else about a
    tile (exact bounds and time, paths, GSD) is read for the tiles asked for only, from the
    parts' memory-mapped rows (`PartRows`)."""

    _COLS = ("z", "x", "y", "seconds", "sensor_codes", "source_codes")

    def __init__(self, rows: PartRows, next_id: int):
        """Every row of `rows` (the snapshot's parts), ids below next_id."""
        self._empty()
        built = self.changed(rows, rows.tables, np.zeros(0, np.int64), next_id)
        self.__dict__.update(built.__dict__)

    @classmethod
    def from_table(cls, table: pa.Table, next_id: int) -> TileTable:
        """A table of these rows (TILE_SCHEMA), held in memory (tests, tools)."""
        return cls(PartRows([table]), next_id)

    def _empty(self) -> None:
        self.next_id, self.count, self.parts = 0, 0, PartRows([])
        self._cols = {c: _Col(np.zeros(0, t), 0) for c, t in zip(
            self._COLS, (np.int8, np.uint32, np.uint32, np.int32, np.uint8, np.uint8),
            strict=True)}
        self.sensor_names, self.source_names = [], []
        self.zooms: tuple[int, ...] = ()
        self.exact_seconds = True
        self.zones = zones.Zones.empty()
        self._views()

    def _views(self) -> None:
        for c, col in self._cols.items():
            setattr(self, c, col.buf[:self.next_id])

    @property
    def full(self) -> bool:
        """Does every id below next_id hold a tile?"""
        return self.count == self.next_id

    def __len__(self) -> int:
        return self.count

    def changed(self, rows: PartRows, added: list[pa.Table], removed: np.ndarray,
                next_id: int) -> TileTable:
        """This table less the tiles `removed` (ids) plus the rows of `added` (ids from this
        table's next_id up), as the snapshot whose parts are `rows` holds them: the columns
        grow in place by the new rows, a removal copies the 1-byte zoom column."""
        out = object.__new__(TileTable)
        n = self.next_id
        cols = dict(self._cols)
        removed = np.asarray(removed, dtype=np.int64)
        removed = np.unique(removed[(removed >= 0) & (removed < n)])
        gone = removed[self.z[removed] >= 0] if len(removed) else removed
        if len(gone):
            cols["z"] = cols["z"].grown(n, n, 0, copy=True)
            cols["z"].buf[gone] = -1
        new = [t for t in added if t.num_rows]
        ids = [t["id"].to_numpy() for t in new]
        if any(int(i.min()) < n or int(i.max()) >= next_id for i in ids):
            raise ValueError(f"changed() adds tiles with ids {n}..{next_id - 1} only")
        sensor_names, source_names = list(self.sensor_names), list(self.source_names)
        sensor_at = {s: i for i, s in enumerate(sensor_names)}
        source_at = {s: i for i, s in enumerate(source_names)}
        # First the dictionaries (their sizes set the code widths), then part by part into
        # the grown columns: no per-part copy of every row is held at once.
        codings = [(_coding(t["sensor"], sensor_names, sensor_at),
                    _coding(t["source"], source_names, source_at)) for t in new]
        dtypes = {"sensor_codes": _width(sensor_names), "source_codes": _width(source_names)}
        fills = {"z": -1, "x": 0, "y": 0, "seconds": NO_SECOND, "sensor_codes": 0,
                 "source_codes": 0}
        for c in self._COLS:
            cols[c] = cols[c].grown(n, next_id, fills[c], np.result_type(
                cols[c].buf.dtype, dtypes.get(c, cols[c].buf.dtype)))
        exact, zooms = self.exact_seconds, set(self.zooms)
        for t, i, (sensor, source) in zip(new, ids, codings, strict=True):
            z = t["z"].to_numpy()
            sec, whole = _seconds(pc.fill_null(pc.cast(t["acquired"], pa.int64()),
                                               NO_TIME).to_numpy())
            exact &= whole
            zooms.update(np.unique(z).tolist())
            for c, v in (("z", z), ("x", t["x"].to_numpy()), ("y", t["y"].to_numpy()),
                         ("seconds", sec), ("sensor_codes", _codes(sensor)),
                         ("source_codes", _codes(source))):
                _put(cols[c].buf, i, v)
        out._cols, out.next_id, out.parts = cols, next_id, rows
        out.count = self.count - len(gone) + sum(len(i) for i in ids)
        out.sensor_names, out.source_names = sensor_names, source_names
        out.zooms, out.exact_seconds = tuple(sorted(zooms)), exact
        out._views()
        out.zones = self.zones.updated(out.z, out.x, out.y, out.seconds, next_id,
                                       gone // zones.BLOCK)
        return out

    # --- lookups ------------------------------------------------------------------------
    def alive(self) -> np.ndarray | slice:
        """Which ids hold a tile: a bool mask, or slice(None) when all do."""
        return slice(None) if self.full else self.z >= 0

    def _held(self, m: np.ndarray) -> np.ndarray:
        """`m` (bool per id) where an id holds a tile."""
        return m if self.full else m & (self.z >= 0)

    def live_ids(self) -> np.ndarray:
        return np.arange(self.next_id, dtype=np.int64) if self.full else np.flatnonzero(
            self.z >= 0)

    def has(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros(len(ids), dtype=bool)
        ok = (ids >= 0) & (ids < self.next_id)
        out[ok] = self.z[ids[ok]] >= 0
        return out

    def rows(self, ids, columns: list[str]) -> list[dict]:
        return self.take(ids, columns).to_pylist()

    def take(self, ids, columns: list[str]) -> pa.Table:
        """The metadata columns of tiles `ids` (held ones), in that order."""
        return self.parts.take(ids, columns)

    def micros(self, ids) -> np.ndarray:
        """Exact acquisition times of tiles `ids`, int64 microseconds (NO_TIME: none)."""
        return self.parts.micros(ids)

    def footprints(self, ids) -> tuple[np.ndarray, ...]:
        """west, south, east, north (float64, as stored) of tiles `ids`."""
        t = self.take(ids, ["west", "south", "east", "north"])
        return tuple(t[c].to_numpy() for c in t.column_names)

    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """z, x, y by tile id (index them by ids)."""
        return self.z, self.x, self.y

    def cell_keys(self, ids) -> np.ndarray:
        """One int64 per tile of `ids` naming its web-mercator cell (z/x/y): the tiles of
        one place at every acquisition share it."""
        z, x, y = (c[ids].astype(np.int64) for c in self.cells())
        return (z << 52) | (x << 26) | y

    # --- filters ------------------------------------------------------------------------
    def mask(self, f: Filters, within: tuple[float, float, float, float] | None = None
             ) -> np.ndarray:
        """Per tile id: does a tile with it pass the filters? (Filters.sql() states the same
        semantics; the tests check one against the other.) `within`: a box the tile's cell
        must overlap as well (as `box_mask`: a map tile, the cells near a point), tested in
        the same pass when the filters have no bbox of their own."""
        if within is not None and f.bbox is not None:
            return _and(self.mask(f), self.box_mask(*within))
        codes = []
        if f.sensors:
            codes.append((self.sensor_codes, _lut(self.sensor_names, lambda n: n in f.sensors)))
        if f.sources:
            codes.append((self.source_codes, _lut(self.source_names, lambda n: (
                n is not None and any(n == s or n.startswith(s.rstrip("/") + "/")
                                      for s in f.sources)))))
        return self._select(f.bbox or within, self._time_bounds(f), codes)

    def box_mask(self, west: float, south: float, east: float, north: float) -> np.ndarray:
        """Per id: does the tile's cell overlap the box (east > west_box, west < east_box,
        north > south_box, south < north_box; west > east: across the antimeridian)?"""
        return self._select((west, south, east, north), None, [])

    def _select(self, bbox: tuple | None, time: zones.TimeBounds | None, codes: list
                ) -> np.ndarray:
        """The mask: blocks the zone maps put wholly outside are skipped, wholly inside
        filled (only codes and liveness tested), the rest tested tile by tile, all the
        straddling blocks in one pass."""
        n = self.next_id
        box = None if bbox is None else self._box_ranges(*bbox)
        if box is None and time is None:
            return self._scan(None, None, codes, slice(0, n))
        states = self.zones.states(None if bbox is None else zones.box32(*bbox), time)
        part = np.flatnonzero(states == zones.PART)
        if len(part) > zones.SCAN_FRACTION * len(states):
            # no locality (every block straddles): one scan of the columns costs less
            return self._scan(box, time, codes, slice(0, n))
        nb, size = len(states), zones.BLOCK
        m = np.zeros(nb * size, dtype=bool)  # whole blocks; what lies past n is cut off
        rows = m.reshape(nb, size)
        inside = states == zones.IN
        if not codes and self.full:
            rows[inside] = True
        elif inside.any():
            blocks = np.flatnonzero(inside)
            rows[blocks] = self._scan(None, None, codes, blocks).reshape(-1, size)
        if len(part):
            rows[part] = self._scan(box, time, codes, part).reshape(-1, size)
        return m[:n]

    def _scan(self, box: dict | None, time: zones.TimeBounds | None, codes: list,
              where: slice | np.ndarray) -> np.ndarray:
        """The filters tested tile by tile over the ids `where` selects: a slice of ids,
        or whole zone-map blocks (an array of block numbers; their ids past next_id give
        values that the caller cuts off)."""
        size = zones.BLOCK
        if isinstance(where, slice):
            def col(c):
                return c[where]

            def ids(at):
                return at + where.start

            count = where.stop - where.start
        else:
            whole = -(-self.next_id // size) * size

            def ids(at):
                return where[at // size] * size + at % size

            count = len(where) * size

            def col(c):  # the blocks' rows of a column (its buffer has room for whole
                buf = c.base if c.base is not None else c  # blocks, see _Col.grown)
                return buf[:whole].reshape(-1, size)[where].ravel()
        got: dict[str, np.ndarray] = {}

        def get(name):  # a column's values there, gathered once and only when used
            if name not in got:
                got[name] = col(getattr(self, name))
            return got[name]

        m = None
        if box is not None:
            for zoom, (xranges, (y0, y1)) in box.items():
                mz = _in(get("x"), *xranges[0])
                for r in xranges[1:]:
                    mz |= _in(get("x"), *r)
                mz &= _in(get("y"), y0, y1)
                if len(box) > 1 or not self.full:
                    mz &= get("z") == zoom
                m = mz if m is None else m | mz
            if m is None:
                m = np.zeros(count, dtype=bool)
        if time is not None:
            t = get("seconds")
            tm = t >= time.lo
            tm &= t <= time.hi
            for b in time.check:  # tiles in a boundary second: their exact time decides
                at = np.flatnonzero(tm & (t == b))
                tid = ids(at)
                held = tid < self.next_id
                held[held] = self.z[tid[held]] >= 0  # only ids with a row to read
                at, tid = at[held], tid[held]
                if len(at):
                    us = self.parts.micros(tid)
                    ok = (us >= time.start_us) & (us <= time.end_us)
                    tm[at[~ok]] = False
            if time.undated:
                tm |= t == NO_SECOND
            m = tm if m is None else _and(m, tm)
        for codes_col, lut in codes:  # (past next_id: any value, even a newer name's)
            hit = lut.take(col(codes_col), mode="clip")
            m = hit if m is None else _and(m, hit)
        if m is None:
            m = np.ones(count, dtype=bool)
        if not self.full and box is None:  # (a bbox tests the zoom: ids without fail it)
            m &= get("z") >= 0
        return m

    def _box_ranges(self, west: float, south: float, east: float, north: float) -> dict:
        """zoom -> ([x ranges], y range) of the cells overlapping the box."""
        out = {}
        for z in self.zooms:
            xr = ([cells.x_range(z, west, east)] if west < east else
                  [(cells.x_above(z, west), 1 << z), (0, cells.x_below(z, east))])
            out[z] = (xr, cells.y_range(z, south, north))
        return out

    def _time_bounds(self, f: Filters) -> zones.TimeBounds | None:
        """The time filter in the int32 seconds: [lo, hi], and the boundary seconds whose
        tiles need their exact time (none when every time is a whole second in range)."""
        if f.start is None and f.end is None:
            return None
        check = []
        lo, hi = SEC_MIN, SEC_MAX
        start_us = NO_TIME if f.start is None else _micros(f.start)
        end_us = np.iinfo(np.int64).max if f.end is None else _micros(f.end)
        if f.start is not None:
            first = -((T0_US - start_us) // US)  # the first whole second at or after
            if self.exact_seconds and SEC_MIN <= first <= SEC_MAX:
                lo = first  # every time is a whole second: exact as it is
            else:
                lo = _second(start_us)
                check.append(lo)
        if f.end is not None:
            last = (end_us - T0_US) // US
            if self.exact_seconds and SEC_MIN <= last <= SEC_MAX:
                hi = last
            else:
                hi = _second(end_us)
                check.append(hi)
        return zones.TimeBounds(lo, hi, tuple(sorted(set(check))), f.undated, start_us,
                                end_us)

    def counts(self) -> tuple[dict[str, int], datetime | None, datetime | None]:
        """Tiles per sensor (by name), and the earliest and latest acquisition time."""
        alive = self.alive()
        per = np.bincount(self.sensor_codes[alive], minlength=len(self.sensor_names))
        sensors = {n: int(c) for n, c in zip(self.sensor_names, per, strict=True) if c}
        sensors = dict(sorted(sensors.items(), key=lambda kv: str(kv[0])))
        t = self.seconds
        dated = self._held(t != NO_SECOND)
        if not dated.any():
            return sensors, None, None
        span = []
        for pick, sec in ((np.min, t[dated].min()), (np.max, t[dated].max())):
            us = self.parts.micros(np.flatnonzero(dated & (t == sec)))
            span.append(EPOCH + timedelta(microseconds=int(pick(us))))
        return sensors, span[0], span[1]

    def undated(self) -> int:
        return int(np.count_nonzero(self._held(self.seconds == NO_SECOND)))
