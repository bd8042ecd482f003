"""A commit writes only what it adds (appended codes, tombstones, new parts), readers pick up
a commit by reading only what it added, and indexes of the first format keep working."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.config import StoreSettings
from indexer.store import ann, parts, rows
from indexer.store.manifest import read_manifest
from indexer.store.snapshot import IndexSnapshot
from indexer.store.tiles import Filters, TileTable
from indexer.store.vector_index import VectorIndex
from indexer.store.writer import IndexWriter
from tests.test_store import IDENT, _add, _vecs

IVF = StoreSettings(ivf_min_vectors=1000, nlist=8, pq_m=4, retrain_growth=0)


def _files(d):
    return {f.name: f.stat().st_size for f in d.iterdir() if f.is_file()}


def _count_calls(monkeypatch, obj, name):
    calls = []
    real = getattr(obj, name)

    def counting(*a, **k):
        calls.append((a, k))
        return real(*a, **k)

    monkeypatch.setattr(obj, name, counting)
    return calls


def test_a_commit_appends_codes_and_rewrites_no_index_file(tmp_path, monkeypatch):
    with IndexWriter(tmp_path, IDENT, IVF) as w:
        _add(w, 1200, "a", 0)
        w.commit()  # trains the IVF: template + codes written whole
        m = w.m
        assert m.index.file.startswith("ann-") and m.index.codes.startswith("codes-")
        before = _files(tmp_path)
        template_stat = (tmp_path / m.index.file).stat()
        serialized = _count_calls(monkeypatch, VectorIndex, "to_bytes")
        _add(w, 50, "b", 1)
        w.commit()
        assert serialized == []  # no FAISS file written
        after = _files(tmp_path)
    assert (tmp_path / m.index.file).stat().st_mtime_ns == template_stat.st_mtime_ns
    grown = after[m.index.codes] - before[m.index.codes]
    assert grown == 50 * m.index.code_size
    snap = IndexSnapshot.open(tmp_path)
    assert snap.ntotal == 1250
    _, found = snap.search(snap.get_vectors(np.arange(1200, 1250)), 5, nprobe=8)
    assert (found == np.arange(1200, 1250)[:, None]).any(axis=1).mean() > 0.9


def test_removals_are_tombstones_and_survive_reopening(tmp_path):
    with IndexWriter(tmp_path, IDENT, IVF) as w:
        _add(w, 600, "a", 0)
        _add(w, 600, "b", 1)
        w.commit()
        w.remove("a")
        w.commit()
        assert w.m.deleted == 600
    snap = IndexSnapshot.open(tmp_path)
    assert snap.ntotal == 600
    _, found = snap.search(_vecs(600, 0), 10, nprobe=8)
    assert not np.isin(found, np.arange(600)).any()
    with IndexWriter(tmp_path, IDENT, IVF) as w:  # the writer loads the same index
        assert w.index.ntotal == 600
        _add(w, 10, "c", 2)
        w.commit()
    assert IndexSnapshot.open(tmp_path).ntotal == 610


def test_finding_a_sources_tiles_reads_only_its_parts(tmp_path, monkeypatch):
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        for i, key in enumerate("abcde"):
            _add(w, 5, key, i)
            w.commit()
        reads = _count_calls(monkeypatch, parts, "read_part")
        assert len(w.committed_tiles("c")) == 5
        assert len(reads) == 1
        reads.clear()
        w.remove("d")
        assert len(reads) == 1  # only the part that holds "d"
        w.commit()
    assert IndexSnapshot.open(tmp_path).ntotal == 20


@pytest.mark.parametrize("step", ["indexer.store.ann.atomic_write_bytes",
                                  "indexer.store.ann.AnnFiles.rewrite",
                                  "indexer.store.ann.AnnFiles.delete",
                                  "indexer.store.vector_index.VectorIndex.train_ivfpq"])
def test_a_training_or_removing_commit_that_fails_can_be_retried(tmp_path, monkeypatch, step):
    from tests.test_data_safety import fail_once

    with IndexWriter(tmp_path, IDENT, IVF) as w:
        _add(w, 900, "a", 0)
        w.commit()
        w.remove("a")
        _add(w, 1100, "b", 1)  # 1100 live: this commit trains the IVF and records removals
        fail_once(monkeypatch, step, OSError)
        with pytest.raises(OSError):
            w.commit()
        assert IndexSnapshot.open(tmp_path).ntotal == 900
        w.commit()
        assert w.m.index.factory.startswith("IVF")
    snap = IndexSnapshot.open(tmp_path)
    assert snap.ntotal == 1100
    assert sorted(snap.tiles(["id"])["id"].to_pylist()) == list(range(900, 2000))
    _, found = snap.search(snap.get_vectors(np.arange(900, 1000)), 10, nprobe=8)
    assert found.min() >= 900
    assert (found == np.arange(900, 1000)[:, None]).any(axis=1).mean() > 0.9


def test_a_reader_picks_up_a_commit_reading_only_what_it_added(tmp_path, monkeypatch):
    with IndexWriter(tmp_path, IDENT, IVF) as w:
        _add(w, 1100, "a", 0)
        _add(w, 100, "z", 2)  # ids 1100..1199
        w.commit()
        snap = IndexSnapshot.open(tmp_path)
        table = TileTable(snap.part_rows(), snap.next_id)
        _add(w, 40, "b", 1)
        w.commit()
        reads = _count_calls(monkeypatch, parts, "read_part")
        maps = _count_calls(monkeypatch, rows, "map_arrow")
        loads = _count_calls(monkeypatch, ann, "load")
        monkeypatch.setattr("indexer.store.snapshot.read_part", parts.read_part)
        assert snap.newer_commit()
        fresh = snap.refreshed()
        added, removed = fresh.changes_since(snap)
        assert len(loads) == 1 and loads[0][1]["start"] == 1200  # the new ids' codes only
        assert not len(removed) and [t.num_rows for t in added] == [40]
        assert len(maps) == 1 and not reads  # the one new part, its Arrow copy mapped
        table2 = table.changed(fresh.part_rows(), added, removed, fresh.next_id)
        assert len(fresh.segments) == 2 and fresh.ntotal == 1240
        whole = IndexSnapshot.open(tmp_path)
        q = whole.get_vectors(np.arange(0, 1240, 31))
        np.testing.assert_array_equal(fresh.search(q, 10, nprobe=8)[1],
                                      whole.search(q, 10, nprobe=8)[1])
        ref = TileTable(whole.part_rows(), whole.next_id)
        _same_table(table2, ref)
        f = Filters(bbox=(-180, -10, 180, 10), sensors=("s1",))
        np.testing.assert_array_equal(table2.mask(f), ref.mask(f))
        assert table2.source_names == ref.source_names or \
            sorted(table2.source_names) == sorted(ref.source_names)
        assert table2.rows(np.array([1239]), ["id", "source_key"]) == \
            ref.rows(np.array([1239]), ["id", "source_key"])
        # A removal is not an append; the reader keeps its segments and searches around
        # the removed ids, with the same answers as a whole open.
        loads.clear()
        w.remove("z")  # tiles of the first segment, ids 1100..1199
        w.commit()
        gone = fresh.refreshed()
        added, removed = gone.changes_since(fresh)
        assert not added and sorted(removed.tolist()) == list(range(1100, 1200))
        assert len(gone.segments) == 2
        assert all(call[1].get("start") == 1200 for call in loads)  # never re-loaded whole
        whole = IndexSnapshot.open(tmp_path)
        assert gone.ntotal == whole.ntotal == 1140
        q = whole.get_vectors(np.r_[np.arange(1100, 1200, 9), np.arange(1200, 1240, 3)])
        for allowed in (None, np.arange(whole.next_id) % 2 == 0):
            got, want = (s.search(q, 10, nprobe=8, allowed=allowed) for s in (gone, whole))
            np.testing.assert_array_equal(got[1], want[1])
            assert not np.isin(got[1], np.arange(1100, 1200)).any()  # removed: never found
        w.remove("a")  # most of the first segment: the next refresh opens whole
        w.commit()
        assert len(gone.refreshed().segments) == 1
    assert fresh.refreshed() is not fresh


def test_the_second_segment_is_folded_in_once_it_grows(tmp_path):
    with IndexWriter(tmp_path, IDENT, IVF) as w:
        _add(w, 1200, "a", 0)
        w.commit()
        snap = IndexSnapshot.open(tmp_path)
        for i in range(4):
            _add(w, 50, f"b{i}", i + 1)
            w.commit()
            snap = snap.refreshed()
        assert len(snap.segments) == 1  # 200 > 1200 / 8: loaded whole again
        assert snap.ntotal == 1400


def _as_format_1(d):
    """Rewrite a format-2 index the way satfind's first format stored it."""
    m = read_manifest(d)
    index = ann.load(d, m)
    name = f"vectors-{m.generation:06d}.faiss"
    (d / name).write_bytes(index.to_bytes())
    for f in (m.index.file, m.index.codes, "deleted.npy"):
        if f:
            (d / f).unlink(missing_ok=True)
    data = json.loads((d / "manifest.json").read_text())
    data["format_version"] = 1
    data["index"]["file"] = name
    for k in ("codes", "code_size"):
        data["index"].pop(k, None)
    data.pop("deleted")
    for p in data["parts"]:
        p.pop("sources")
    (d / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize("settings", [StoreSettings(), IVF], ids=["flat", "ivfpq"])
def test_an_index_of_the_first_format_opens_and_is_converted(tmp_path, settings):
    with IndexWriter(tmp_path, IDENT, settings) as w:
        _add(w, 700, "a", 0)
        _add(w, 600, "b", 1)
        w.commit()
        w.remove("a")  # ids 0..699 are gone: format 1 simply does not hold them
        w.commit()
    _as_format_1(tmp_path)
    old = IndexSnapshot.open(tmp_path)
    q = old.get_vectors(np.arange(700, 1300, 7))
    expect = old.search(q, 10, nprobe=8)
    with IndexWriter(tmp_path, IDENT, settings) as w:
        w.commit()  # nothing added: the conversion alone
        assert w.m.version == 2 and w.m.deleted == 700
    new = IndexSnapshot.open(tmp_path)
    assert new.manifest.version == 2 and new.ntotal == 600
    np.testing.assert_array_equal(new.search(q, 10, nprobe=8)[1], expect[1])
    np.testing.assert_allclose(new.search(q, 10, nprobe=8)[0], expect[0], rtol=1e-5)
    with IndexWriter(tmp_path, IDENT, settings) as w:  # the old file outlives one commit
        _add(w, 5, "c", 2)
        w.commit()
    assert not [f for f in _files(tmp_path) if f.startswith("vectors-")]


def test_a_damaged_template_or_code_file_is_one_line(tmp_path):
    from indexer.errors import IndexError_

    with IndexWriter(tmp_path, IDENT, IVF) as w:
        _add(w, 1200, "a", 0)
        w.commit()
        m = w.m
    (tmp_path / m.index.file).write_bytes(b"\0" * 500)
    with pytest.raises(IndexError_, match="damaged FAISS template"):
        IndexSnapshot.open(tmp_path)


def _varied_rows(n: int, key: str, rng: np.random.Generator) -> list[dict]:
    from datetime import UTC, datetime

    from tests.helpers import tile_rows

    rows = tile_rows(n, key, start=int(rng.integers(0, 4000)))
    for r in rows:
        r["sensor"] = str(rng.choice(["NAIP", "Sentinel-2", "Landsat"]))
        r["acquired"] = (None if rng.random() < 0.2 else
                         datetime(2015 + int(rng.integers(0, 8)), 1 + int(rng.integers(0, 12)),
                                  1, tzinfo=UTC))
    return rows


def _same_table(a: TileTable, b: TileTable) -> None:
    """Two tile tables hold the same tiles: columns, rows, masks, counts."""
    from datetime import UTC, datetime

    from indexer.store.layout import TILE_SCHEMA

    assert a.next_id == b.next_id and len(a) == len(b)
    live = a.live_ids()
    np.testing.assert_array_equal(live, b.live_ids())
    for c in ("z", "x", "y", "seconds"):
        np.testing.assert_array_equal(getattr(a, c)[live], getattr(b, c)[live])
    for col in ("sensor", "source"):
        def decoded(t, col=col):
            names = np.asarray(getattr(t, f"{col}_names"), dtype=object)
            return names[getattr(t, f"{col}_codes")[live]]
        np.testing.assert_array_equal(decoded(a), decoded(b))
    assert a.zooms == b.zooms and a.exact_seconds == b.exact_seconds
    np.testing.assert_array_equal(a.cell_keys(live), b.cell_keys(live))
    assert a.counts() == b.counts() and a.undated() == b.undated()
    for f in (Filters(), Filters(bbox=(-180, -10, 180, 40)), Filters(sensors=("NAIP",)),
              Filters(start=datetime(2018, 1, 1, tzinfo=UTC), undated=True),
              Filters(end=datetime(2019, 6, 1, tzinfo=UTC), sensors=("Landsat", "NAIP")),
              Filters(sources=("/data/s3.tif", "/data/s5.tif"))):
        np.testing.assert_array_equal(a.mask(f), b.mask(f))
    assert a.take(live, TILE_SCHEMA.names).equals(b.take(live, TILE_SCHEMA.names))
    some = live[:: max(1, len(live) // 7)]
    assert a.rows(some, ["id", "source", "acquired"]) == b.rows(some, ["id", "source",
                                                                      "acquired"])


def test_a_reader_follows_removals_and_additions_as_a_fresh_open_would(tmp_path, monkeypatch):
    """Commits that remove sources and add others: the server's tile table follows each
    by its tombstones and new parts only, and equals the table of a fresh open."""
    from search.engine import Loaded

    rng = np.random.default_rng(11)
    sizes: list[int] = []
    real_changed = TileTable.changed

    def changed(self, rows, added, removed, next_id):
        sizes.append(sum(t.num_rows for t in added))
        return real_changed(self, rows, added, removed, next_id)

    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        live, n = [], 0
        for _ in range(4):
            key = f"s{n}"
            w.add(_varied_rows(60, key, rng), _vecs(60, n), [b"jpeg"] * 60)
            live.append(key)
            n += 1
        w.commit()
        loaded = Loaded(IndexSnapshot.open(tmp_path))
        total = len(loaded.tiles)
        for step in range(6):
            removed = [live.pop(int(rng.integers(0, len(live))))
                       for _ in range(int(rng.integers(0 if step else 1, 3))) if live]
            for key in removed:
                w.remove(key)
            added = 0
            for _ in range(int(rng.integers(0, 3)) if step != 2 else 0):  # step 2: only removes
                key, k = f"s{n}", int(rng.integers(5, 40))
                w.add(_varied_rows(k, key, rng), _vecs(k, n), [b"jpeg"] * k)
                live.append(key)
                added, n = added + k, n + 1
            w.commit()
            sizes.clear()
            monkeypatch.setattr(TileTable, "changed", changed)
            loaded = loaded.refreshed()
            monkeypatch.setattr(TileTable, "changed", real_changed)
            # only the new rows went through TileTable (none at all for an empty commit;
            # a whole rebuild would show every row)
            assert sizes == ([added] if removed or added else [])
            _same_table(loaded.tiles, Loaded(IndexSnapshot.open(tmp_path)).tiles)
            held = loaded.tiles.take(loaded.tiles.live_ids(), ["source"])["source"]
            assert {s.rsplit("/", 1)[1][:-4] for s in set(held.to_pylist())} == set(live)
            total = len(loaded.tiles)
    assert total == len(loaded.tiles)
