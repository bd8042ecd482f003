"""Zone maps over the tile table: per block of BLOCK consecutive ids, the span of its tiles'
cells and acquisition seconds, so that a bbox or time filter tests tile by tile only the
blocks that straddle its edges, and fills or skips the others whole.

Ids are given in the order the job commits tiles: a raster's tiles, then the next raster's,
so a block of ids is a patch of ground and (mostly) one acquisition, and a filter that keeps
1 % of a 10M-tile archive touches a few dozen blocks instead of 10M rows. Where ids carry no
such locality (every block spans everything), every block straddles, and the filter is one
scan of the columns, as without zone maps.

Cells are compared at zoom 32 (x << (32 - z)): an edge of a cell at zoom z is the same
float64 as the matching edge of its zoom-32 sub-cells (both are exact binary fractions of
the same formula), so a tile overlaps a box exactly when one of its zoom-32 sub-cells does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.store import cells

BLOCK = 4096
ZN = 32  # the zoom cells are normalised to
_EMPTY_LO = np.uint64(1) << np.uint64(ZN + 1)  # x0 / y0 of a block without tiles
_CHUNK_BLOCKS = 256  # blocks summarised at a time (bounds the temporaries to ~1M ids)
OUT, IN, PART = 0, 1, 2


@dataclass(frozen=True)
class TimeBounds:
    lo: int  # int32 seconds, inclusive
    hi: int
    check: tuple[int, ...]  # boundary seconds whose tiles need their exact time
    undated: bool  # do tiles without a time pass?
    start_us: int  # the exact bounds, int64 microseconds (for the boundary seconds)
    end_us: int


@dataclass
class Zones:
    x0: np.ndarray  # uint64 per block: min over its tiles of x << (32 - z)
    x1: np.ndarray  # max of (x + 1) << (32 - z): exclusive
    y0: np.ndarray
    y1: np.ndarray
    s0: np.ndarray  # int32: min / max acquisition second of its dated tiles
    s1: np.ndarray  # (s0 > s1: none dated)
    undated: np.ndarray  # bool: has a tile without a time

    @classmethod
    def empty(cls) -> Zones:
        u, i = np.zeros(0, np.uint64), np.zeros(0, np.int32)
        return cls(u, u, u, u, i, i, np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.x0)

    def updated(self, z, x, y, seconds, n: int, blocks) -> Zones:
        """These zones for columns of n ids, with `blocks` (and every block past the ones
        held) summarised again from the columns."""
        nb = -(-n // BLOCK)
        redo = np.unique(np.r_[np.asarray(blocks, dtype=np.int64),
                               np.arange(max(len(self) - 1, 0), nb)])
        redo = redo[(redo >= 0) & (redo < nb)]
        out = {k: np.resize(v, nb) if nb > len(v) else v[:nb].copy()
               for k, v in vars(self).items()}
        if not len(redo):
            return Zones(**out)
        # contiguous runs of blocks to redo, summarised chunk by chunk
        cut = np.flatnonzero(np.diff(redo) != 1) + 1
        for run in np.split(redo, cut):
            for b0 in range(int(run[0]), int(run[-1]) + 1, _CHUNK_BLOCKS):
                b1 = min(b0 + _CHUNK_BLOCKS, int(run[-1]) + 1)
                for k, v in _summary(z, x, y, seconds, n, b0, b1).items():
                    out[k][b0:b1] = v
        return Zones(**out)

    def states(self, box: tuple | None, time: TimeBounds | None) -> np.ndarray:
        """Per block: OUT (no tile passes), IN (every tile passes the bbox and time), or
        PART (test tile by tile). `box`: ([(x_lo, x_hi), ...], (y_lo, y_hi)) at zoom 32."""
        out = np.zeros(len(self), dtype=bool)
        inside = np.ones(len(self), dtype=bool)
        if box is not None:
            xranges, (ya, yb) = box
            x_out = np.ones(len(self), dtype=bool)
            x_in = np.zeros(len(self), dtype=bool)
            for a, b in xranges:
                a, b = np.uint64(a), np.uint64(b)
                x_out &= (self.x1 <= a) | (self.x0 >= b)
                x_in |= (self.x0 >= a) & (self.x1 <= b)
            ya, yb = np.uint64(ya), np.uint64(yb)
            out |= x_out | (self.y1 <= ya) | (self.y0 >= yb)
            inside &= x_in & (self.y0 >= ya) & (self.y1 <= yb)
        if time is not None:
            dated = self.s0 <= self.s1
            d_out = ~dated | (self.s1 < time.lo) | (self.s0 > time.hi)
            d_in = dated & (self.s0 >= time.lo) & (self.s1 <= time.hi)
            for b in time.check:
                d_in &= (self.s0 > b) | (self.s1 < b)
            if time.undated:
                out |= d_out & ~self.undated
                inside &= d_in | ~dated
            else:
                out |= d_out
                inside &= d_in & ~self.undated
        return np.where(out, OUT, np.where(inside, IN, PART)).astype(np.int8)


# Straddling blocks beyond this fraction of all: one scan of the columns instead (gathering
# most blocks' rows costs more than reading every row in order).
SCAN_FRACTION = 0.5


def box32(west: float, south: float, east: float, north: float) -> tuple:
    """A lon/lat box as zoom-32 cell ranges (see Zones.states)."""
    ya, yb = cells.y_range(ZN, south, north)
    if west < east:
        return [cells.x_range(ZN, west, east)], (ya, yb)
    return [(cells.x_above(ZN, west), 1 << ZN), (0, cells.x_below(ZN, east))], (ya, yb)


def _summary(z, x, y, seconds, n: int, b0: int, b1: int) -> dict:
    """The zone fields of blocks b0..b1-1 (ids beyond n, or with z < 0, hold no tile)."""
    lo, hi = b0 * BLOCK, min(b1 * BLOCK, n)
    size = (b1 - b0) * BLOCK
    zz = np.full(size, -1, dtype=np.int64)
    zz[:hi - lo] = z[lo:hi]
    alive = zz >= 0
    shift = np.where(alive, ZN - zz, 0).astype(np.uint64)
    fields = {}
    for name, col in (("x", x), ("y", y)):
        c = np.zeros(size, dtype=np.uint64)
        c[:hi - lo] = col[lo:hi]
        first = np.where(alive, c << shift, _EMPTY_LO).reshape(-1, BLOCK)
        last = np.where(alive, (c + np.uint64(1)) << shift, np.uint64(0)).reshape(-1, BLOCK)
        fields[f"{name}0"], fields[f"{name}1"] = first.min(axis=1), last.max(axis=1)
    s = np.full(size, np.iinfo(np.int32).min, dtype=np.int32)
    s[:hi - lo] = seconds[lo:hi]
    nosec = np.iinfo(np.int32).min
    dated = alive & (s != nosec)
    big, small = np.iinfo(np.int32).max, np.iinfo(np.int32).min
    fields["s0"] = np.where(dated, s, big).reshape(-1, BLOCK).min(axis=1)
    fields["s1"] = np.where(dated, s, small).reshape(-1, BLOCK).max(axis=1)
    fields["undated"] = (alive & (s == nosec)).reshape(-1, BLOCK).any(axis=1)
    return fields
