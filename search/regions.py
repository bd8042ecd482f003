"""Beyond top-k: the score of every tile in an area (for heat maps and overlays), change
over time (the same web-mercator cell at two periods), and the tiles under one point. Exact
inner products over the stored float16 vectors, in chunks, so memory stays bounded whatever
the area holds."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from indexer.store.snapshot import IndexSnapshot
from indexer.store.tiles import NO_TIME, Filters
from search.query import QueryError

CHUNK = 32768  # vectors converted to float32 at a time (64 MB at 512-d)
# Degrees of slack for the first pass of tiles_at over the cells (a point on an edge is in
# both cells' boxes); the float64 footprints then decide.
EDGE_SLACK = 1e-4


def score_ids(snap: IndexSnapshot, v: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float32 inner products of tiles `ids` with unit vector `v`, chunk by chunk."""
    if snap.vectors is None:
        raise QueryError("this index was built without float16 vector copies "
                         "(store.keep_float16 = false): scores of every tile need them")
    import torch  # float16 -> float32 in SIMD (numpy converts one value at a time)

    out = np.empty(len(ids), dtype=np.float32)
    vt = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    for s in range(0, len(ids), CHUNK):
        part = ids[s:s + CHUNK]
        if len(part) > 1 and part[-1] - part[0] == len(part) - 1 and bool(
                np.all(np.diff(part) == 1)):  # a run of consecutive ids: a slice
            raw = snap.vectors[part[0]:part[-1] + 1]
        else:
            raw = snap.vectors[part]
        with warnings.catch_warnings():  # a read-only memory map, only ever read here
            warnings.simplefilter("ignore", UserWarning)
            block = torch.from_numpy(np.ascontiguousarray(raw))
        out[s:s + len(part)] = (block.float() @ vt).numpy()
    return out


@dataclass
class Scored:
    """Every tile passing the filters, in id order, with its score."""

    ids: np.ndarray
    scores: np.ndarray


def region_scores(loaded, v: np.ndarray, filters: Filters, max_tiles: int) -> Scored:
    tiles = loaded.tiles
    ids = np.flatnonzero(tiles.mask(filters)) if filters.active else tiles.live_ids()
    if len(ids) > max_tiles:
        raise QueryError(f"the area holds {len(ids)} tiles, more than {max_tiles} "
                         "(api.max_score_tiles): narrow the bbox or the time range")
    return Scored(ids, score_ids(loaded.snap, v, ids))


def tiles_at(tiles, lon: float, lat: float, filters: Filters) -> np.ndarray:
    """Ids of the tiles whose footprint contains lon/lat and that pass
    `filters`: newest acquisition first, undated last, equal times by id, highest first (the
    order the map draws them, top first).

    A footprint is the tile's web-mercator cell, a lon/lat rectangle (the table's float64
    west/south/east/north). A point on an edge two cells share belongs to one of them, as
    the XYZ grid assigns it: west and north edges inside, east and south edges outside,
    except the world's own east (180) and south edges."""
    ids = np.flatnonzero(tiles.mask(filters, within=(
        max(lon - EDGE_SLACK, -180.0), max(lat - EDGE_SLACK, -90.0),
        min(lon + EDGE_SLACK, 180.0), min(lat + EDGE_SLACK, 90.0))))
    if len(ids):
        w, s, e, n = tiles.footprints(ids)
        z, _, y = (c[ids].astype(np.int64) for c in tiles.cells())
        last_row = y == (np.int64(1) << z) - 1
        inside = ((w <= lon) & ((lon < e) | (e >= 180.0))
                  & (lat <= n) & ((s < lat) | last_row))
        ids = ids[inside]
    order = np.lexsort((ids, tiles.micros(ids)))[::-1]
    return ids[order]


def latest_per_cell(tiles, ids: np.ndarray) -> dict:
    """cell key -> id of its latest acquisition among tiles `ids` (ascending; to the
    second: the highest id among times in the same second)."""
    if not len(ids):
        return {}
    keys = tiles.cell_keys(ids)
    order = np.lexsort((tiles.seconds[ids], keys))
    k = keys[order]
    last = np.r_[k[1:] != k[:-1], True]
    return dict(zip(k[last].tolist(), ids[order][last].tolist(), strict=True))


@dataclass
class Change:
    before_id: int
    after_id: int
    before_score: float
    after_score: float

    @property
    def delta(self) -> float:
        return self.after_score - self.before_score


def change_search(loaded, v: np.ndarray, base: Filters, before: tuple[datetime, datetime],
                  after: tuple[datetime, datetime], k: int, fell: bool = False) -> list[Change]:
    """Cells indexed in both periods, ranked by how much their match to `v` rose (or fell)
    from the latest acquisition in `before` to the latest in `after`."""
    tiles = loaded.tiles
    if before[1] > after[0]:
        raise QueryError("the 'before' period must end before the 'after' period starts")
    periods = []
    for start, end in (before, after):
        m = tiles.mask(replace(base, start=start, end=end))
        periods.append(latest_per_cell(tiles, np.flatnonzero(m)))
    both = sorted(set(periods[0]) & set(periods[1]))
    if not both:
        return []
    ia = np.asarray([periods[0][c] for c in both], dtype=np.int64)
    ib = np.asarray([periods[1][c] for c in both], dtype=np.int64)
    sa = score_ids(loaded.snap, v, ia)
    sb = score_ids(loaded.snap, v, ib)
    delta = sb - sa
    order = np.lexsort((ib, delta if fell else -delta))[:k]
    return [Change(int(ia[i]), int(ib[i]), float(sa[i]), float(sb[i])) for i in order]


def place_history(loaded, tile_id: int, v: np.ndarray | None) -> list[dict]:
    """Every acquisition of `tile_id`'s cell, oldest first: id, acquired, score with `v`
    (when given), and the embedding distance (1 - cosine) to the previous acquisition."""
    tiles = loaded.tiles
    z, x, y = (c[tile_id] for c in tiles.cells())
    near = np.flatnonzero(tiles.box_mask(*(float(v[0]) for v in tiles.footprints([tile_id]))))
    ids = near[(tiles.x[near] == x) & (tiles.y[near] == y) & (tiles.z[near] == z)]
    acq = tiles.micros(ids)
    order = np.lexsort((ids, acq))
    ids, acq = ids[order], acq[order]
    vecs = loaded.snap.get_vectors(ids)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    out = []
    for i, tid in enumerate(ids):
        t = int(acq[i])
        out.append({
            "id": int(tid),
            "acquired": None if t == NO_TIME else datetime.fromtimestamp(
                t / 1e6, UTC).isoformat(),
            "score": None if v is None else float(vecs[i] @ v),
            "distance_to_previous": None if i == 0 else float(1.0 - vecs[i] @ vecs[i - 1]),
        })
    return out
