"""The server's compact tile table (cells, int32 seconds, dictionary codes; rows memory-mapped
from the parts' Arrow copies) selects exactly what the Parquet predicates select, DuckDB
being the independent check; it follows commits without disturbing older tables; parts
written before the Arrow copies read the same."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import mercantile
import numpy as np
import pytest

from indexer.config import StoreSettings
from indexer.store import directory
from indexer.store.layout import MANIFEST, TILE_SCHEMA, TILES_DIR
from indexer.store.snapshot import IndexSnapshot
from indexer.store.tiles import Filters, TileTable
from indexer.store.writer import IndexWriter
from tests.helpers import snapshot_sql
from tests.test_store import IDENT, _vecs

ZOOMS = (3, 9, 14, 16)
SENSORS = ("NAIP", "Sentinel-2", "Landsat")
WHEN = [None, datetime(1925, 6, 1, 10, 0, 0, 250, tzinfo=UTC),  # before the int32 range
        datetime(2080, 1, 1, tzinfo=UTC)]  # after it


def _time(rng) -> datetime | None:
    r = rng.random()
    if r < 0.1:
        return WHEN[int(rng.integers(0, 3))]
    t = datetime(2015, 1, 1, tzinfo=UTC) + timedelta(seconds=int(rng.integers(0, 3 * 10**8)))
    if r < 0.5:  # many tiles share a second, some with sub-second parts
        t = t.replace(second=0, minute=0)
        if rng.random() < 0.5:
            t += timedelta(microseconds=int(rng.integers(0, 10**6)))
    return t


def _rows(rng, n: int, key: str) -> list[dict]:
    out = []
    for _ in range(n):
        z = int(rng.choice(ZOOMS))
        lon = rng.choice([rng.uniform(-180, 180), rng.uniform(178, 180), rng.uniform(-180, -178)])
        t = mercantile.tile(float(lon), float(rng.uniform(-85, 85)), z)
        b = mercantile.bounds(t)
        out.append({"z": z, "x": t.x, "y": t.y, "west": b.west, "south": b.south,
                    "east": b.east, "north": b.north, "source": f"/data/{key}.tif",
                    "source_key": key, "acquired": _time(rng),
                    "sensor": SENSORS[int(rng.integers(0, 3))], "gsd_m": 1.0,
                    "native_gsd_m": 1.0, "nodata_fraction": 0.0})
    return out


def _index(path, rng, commits: int = 4, per: int = 150) -> None:
    with IndexWriter(path, IDENT, StoreSettings()) as w:
        for c in range(commits):
            w.add(_rows(rng, per, f"s{c}"), _vecs(per, c), [b""] * per)
            w.commit()
        w.remove("s1")  # ids with no tile in the middle
        w.commit()


def _filters(rng, snap, n: int) -> list[Filters]:
    """Random filters whose edges are often exactly some tile's bounds or time."""
    t = snap.tiles(["west", "south", "east", "north", "acquired"]).to_pylist()
    out = []
    while len(out) < n:
        a, b = t[int(rng.integers(0, len(t)))], t[int(rng.integers(0, len(t)))]
        kw = {}
        if rng.random() < 0.7:
            w, e = (a["west"], b["east"]) if rng.random() < 0.5 else sorted(
                rng.uniform(-180, 180, 2))
            s, nn = sorted([a["south"], b["north"]] if rng.random() < 0.5
                           else rng.uniform(-89, 89, 2))
            if rng.random() < 0.2:
                w, e = max(w, e), min(w, e)  # across the antimeridian
            if w == e or s >= nn:
                continue
            kw["bbox"] = (float(w), float(s), float(e), float(nn))
        for name, row in (("start", a), ("end", b)):
            if rng.random() < 0.6 and row["acquired"] is not None:
                v = row["acquired"] + timedelta(microseconds=int(rng.integers(-1, 2)))
                kw[name] = v.replace(microsecond=0) if rng.random() < 0.3 else v
            elif rng.random() < 0.2:
                kw[name] = WHEN[1 + int(rng.integers(0, 2))]
        if kw.get("start") and kw.get("end") and kw["start"] > kw["end"]:
            kw["start"], kw["end"] = kw["end"], kw["start"]
        if rng.random() < 0.3:
            kw["sensors"] = tuple(rng.choice(SENSORS, int(rng.integers(1, 3)), replace=False))
        if rng.random() < 0.2:
            kw["sources"] = ("/data/s2.tif", "/data")[int(rng.integers(0, 2)):][:1]
        kw["undated"] = bool(rng.random() < 0.3)
        out.append(Filters(**kw))
    return out


def _check_against_duckdb(tiles: TileTable, snap, filters: list[Filters]) -> None:
    for f in filters:
        where, params = f.sql()
        want = snapshot_sql(snap, f"SELECT id FROM tiles WHERE {where} ORDER BY id",
                            params)["id"].to_numpy()
        got = np.flatnonzero(tiles.mask(f))
        np.testing.assert_array_equal(got, want, err_msg=str(f))


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    path = tmp_path_factory.mktemp("compact")
    _index(path, np.random.default_rng(5))
    return path


def test_compact_filters_select_exactly_what_the_parquet_predicates_select(varied):
    snap = IndexSnapshot.open(varied)
    tiles = TileTable(snap.part_rows(), snap.next_id)
    assert tiles.zooms == ZOOMS and not tiles.full and len(tiles) == 450
    assert not tiles.exact_seconds  # sub-second and out-of-range times: compared exactly
    filters = _filters(np.random.default_rng(1), snap, 250)
    assert sum(f.bbox is not None for f in filters) > 100
    assert sum(f.start is not None or f.end is not None for f in filters) > 100
    _check_against_duckdb(tiles, snap, filters)
    # every ID with a tile, its row as Parquet has it
    want = snap.tiles().sort_by("id")
    assert tiles.take(tiles.live_ids(), TILE_SCHEMA.names).equals(want)


def test_whole_second_times_compare_without_reading_rows(tmp_path, monkeypatch):
    """An index whose times are all whole seconds in range filters on the int32 column
    alone; a boundary inside a second still selects what SQL selects."""
    rng = np.random.default_rng(2)
    rows = _rows(rng, 300, "a")
    for r in rows:
        if r["acquired"] is not None:
            r["acquired"] = max(min(r["acquired"], datetime(2060, 1, 1, tzinfo=UTC)),
                                datetime(1940, 1, 1, tzinfo=UTC)).replace(microsecond=0)
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        w.add(rows, _vecs(300, 0), [b""] * 300)
        w.commit()
    snap = IndexSnapshot.open(tmp_path)
    tiles = TileTable(snap.part_rows(), snap.next_id)
    assert tiles.exact_seconds and tiles.full
    monkeypatch.setattr(type(tiles.parts), "micros", lambda *a: pytest.fail("read rows"))
    _check_against_duckdb(tiles, snap, [f for f in _filters(rng, snap, 120)
                                        if f.start or f.end])


def test_a_table_follows_commits_and_older_tables_stay_as_they_were(varied, tmp_path):
    """A table grown by commits equals a fresh open's; a table it grew from, and a second
    table grown from that same one, are not disturbed by the growth in place."""
    import shutil

    from tests.test_store_commits import _same_table

    rng = np.random.default_rng(3)
    d = tmp_path / "idx"
    shutil.copytree(varied, d)
    first = IndexSnapshot.open(d)
    old = TileTable(first.part_rows(), first.next_id)
    before = {f: old.mask(f) for f in _filters(rng, first, 30)}
    with IndexWriter(d, IDENT, StoreSettings()) as w:
        w.add(_rows(rng, 80, "n1"), _vecs(80, 9), [b""] * 80)
        w.remove("s2")
        w.commit()
        second = first.refreshed()
        grown = old.changed(second.part_rows(), *second.changes_since(first),
                            second.next_id)
        w.add(_rows(rng, 50, "n2"), _vecs(50, 10), [b""] * 50)
        w.commit()
        third = second.refreshed()
        grown2 = grown.changed(third.part_rows(), *third.changes_since(second),
                               third.next_id)
    _same_table(grown2, TileTable(third.part_rows(), third.next_id))
    _same_table(grown, TileTable(second.part_rows(), second.next_id))
    branch = old.changed(third.part_rows(), *third.changes_since(first), third.next_id)
    _same_table(branch, grown2)
    _same_table(grown, TileTable(second.part_rows(), second.next_id))  # still
    for f, m in before.items():
        np.testing.assert_array_equal(old.mask(f), m)
    _check_against_duckdb(grown2, third, _filters(rng, third, 60))


def test_parts_without_arrow_copies_read_from_parquet_the_same(varied, tmp_path):
    """An index written before the Arrow copies: rows come from Parquet, same answers."""
    import shutil

    from tests.test_store_commits import _same_table

    d = tmp_path / "old"
    shutil.copytree(varied, d)
    m = json.loads((d / MANIFEST).read_text())
    for p in m["parts"]:
        assert p.pop("arrow") is True
        (d / TILES_DIR / p["name"]).with_suffix(".arrow").unlink()
    (d / MANIFEST).write_text(json.dumps(m))
    old, new = IndexSnapshot.open(d), IndexSnapshot.open(varied)
    assert not any(p.arrow for p in old.manifest.parts)
    _same_table(TileTable(old.part_rows(), old.next_id),
                TileTable(new.part_rows(), new.next_id))


def test_memory_per_tile_and_arrow_files_kept_and_collected(varied, tmp_path):
    """14-16 bytes a tile in the table (one zoom column, two uint32 cells, int32 seconds,
    two codes), rows not held; garbage collection knows the Arrow copies."""
    import shutil

    snap = IndexSnapshot.open(varied)
    tiles = TileTable(snap.part_rows(), snap.next_id)
    held = sum(getattr(tiles, c).nbytes for c in TileTable._COLS)
    assert held <= 15 * tiles.next_id
    named = {p.name for p in snap.manifest.parts}
    d = tmp_path / "gc"
    shutil.copytree(varied, d)
    (d / TILES_DIR / "part-99999.arrow").write_bytes(b"left by a killed run")
    (d / TILES_DIR / "notes.arrow").write_bytes(b"the user's")
    assert (d / TILES_DIR / "part-00001.arrow").is_file()  # the part the removal rewrote
    directory.clean_garbage(d, IndexSnapshot.open(d).manifest)
    left = {f.name for f in (d / TILES_DIR).iterdir()}
    assert left == named | {n.replace(".parquet", ".arrow") for n in named} | {"notes.arrow"}


def test_a_tile_whose_bounds_are_not_its_cell_is_refused(tmp_path):
    rows = _rows(np.random.default_rng(4), 3, "a")
    rows[1]["east"] += 0.01
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w, pytest.raises(
            ValueError, match="not its web-mercator cell"):
        w.add(rows, _vecs(3, 0), [b""] * 3)


def _local_rows(rng, key: str, n: int, undated: bool = False) -> list[dict]:
    """A raster's tiles: a patch of cells at one zoom, one acquisition (as the job writes)."""
    z = int(rng.choice(ZOOMS[1:]))
    c = mercantile.tile(float(rng.uniform(-170, 170)), float(rng.uniform(-60, 60)), z)
    when = None if undated else _time(rng)
    out = []
    for i in range(n):
        x, y = c.x + i % 7, c.y + i // 7
        b = mercantile.bounds(x, y, z)
        out.append({"z": z, "x": x, "y": y, "west": b.west, "south": b.south, "east": b.east,
                    "north": b.north, "source": f"/data/{key}.tif", "source_key": key,
                    "acquired": when, "sensor": SENSORS[int(rng.integers(0, 3))],
                    "gsd_m": 1.0, "native_gsd_m": 1.0, "nodata_fraction": 0.0})
    return out


def test_zone_maps_skip_and_fill_blocks_and_select_what_sql_selects(tmp_path, monkeypatch):
    """Blocks of 16 ids over rasters of 20-40 tiles: filters skip blocks outside, fill blocks
    inside and test the straddling ones tile by tile, after additions and removals too,
    with exactly the rows DuckDB selects (straddling blocks gathered, never the one scan)."""
    from indexer.store import zones
    from search.engine import Loaded

    monkeypatch.setattr(zones, "BLOCK", 16)
    monkeypatch.setattr(zones, "SCAN_FRACTION", 2.0)  # blocks, never the one-scan fallback
    rng = np.random.default_rng(8)
    seen = {zones.OUT: 0, zones.IN: 0, zones.PART: 0}
    real_states = zones.Zones.states

    def states(self, box, time):
        s = real_states(self, box, time)
        for k in seen:
            seen[k] += int(np.count_nonzero(s == k))
        return s

    monkeypatch.setattr(zones.Zones, "states", states)
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        n = 0
        for c in range(5):
            for r in range(6):
                k = int(rng.integers(20, 40))
                w.add(_local_rows(rng, f"s{c}-{r}", k, undated=r == 5), _vecs(k, n),
                      [b""] * k)
                n += 1
            if c == 2:
                w.commit()
                loaded = Loaded(IndexSnapshot.open(tmp_path))
                assert loaded.tiles.full  # blocks inside are filled whole (no code filter)
                _check_against_duckdb(loaded.tiles, loaded.snap, _filters(rng, loaded.snap,
                                                                          150))
                w.remove("s0-3")
                w.remove("s1-0")
        w.commit()
    loaded = loaded.refreshed()  # zones changed by the commit, not rebuilt
    snap = loaded.snap
    fresh = TileTable(snap.part_rows(), snap.next_id)
    for name in ("x0", "x1", "y0", "y1", "s0", "s1", "undated"):
        np.testing.assert_array_equal(getattr(loaded.tiles.zones, name),
                                      getattr(fresh.zones, name))
    filters = _filters(rng, snap, 300)
    _check_against_duckdb(loaded.tiles, snap, filters)
    assert min(seen.values()) > 50, seen  # every kind of block was met, many times
