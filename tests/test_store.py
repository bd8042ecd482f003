"""The store on its own: commits, snapshots, IVF switch, removal, locking, garbage."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from encoder.identity import EncoderIdentity
from indexer.config import StoreSettings
from indexer.errors import IndexError_
from indexer.store.snapshot import IndexSnapshot
from indexer.store.writer import IndexWriter
from tests.conftest import ROOT
from tests.helpers import mark_complete, tile_rows

DIM = 16
IDENT = EncoderIdentity("fake", "c" * 64, "w" * 64, DIM, 64)


def _vecs(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _add(w: IndexWriter, n: int, key: str, seed: int) -> np.ndarray:
    v = _vecs(n, seed)
    w.add(tile_rows(n, key), v, [b"jpeg"] * n)
    mark_complete(w, key)
    return v


def test_uncommitted_work_is_invisible_and_vectors_file_is_npy(tmp_path):
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        v = _add(w, 10, "a", 0)
        w.commit()
        _add(w, 5, "b", 1)  # never committed
    snap = IndexSnapshot.open(tmp_path)
    assert snap.ntotal == 10 and snap.tiles().num_rows == 10
    assert set(snap.sources) == {"a"}
    assert np.allclose(np.load(tmp_path / "vectors.f16.npy"), v, atol=1e-3)
    # the next writer truncates the uncommitted float16 rows and starts ids after 10
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        _add(w, 3, "c", 2)
        w.commit()
    snap = IndexSnapshot.open(tmp_path)
    assert sorted(snap.tiles(["id"])["id"].to_pylist()) == list(range(13))
    assert np.load(tmp_path / "vectors.f16.npy").shape == (13, DIM)


def test_flat_switches_to_ivfpq_and_keeps_ids(tmp_path):
    st = StoreSettings(ivf_min_vectors=1000, nlist=8, pq_m=4)
    with IndexWriter(tmp_path, IDENT, st) as w:
        _add(w, 600, "a", 0)
        w.commit()
        assert w.m.index.factory == "Flat"
        _add(w, 600, "b", 1)
        w.commit()
    snap = IndexSnapshot.open(tmp_path)
    info = dataclasses.asdict(snap.manifest.index)
    assert info["factory"] == "IVF8,PQ4np" and "IVF-PQ" in info["chosen"]
    assert snap.ntotal == 1200
    # exact search over candidates from IVF-PQ: the query's own tile is among the top 10
    ids = np.arange(0, 1200, 37)
    _, found = snap.search(snap.get_vectors(ids), 10, nprobe=8)
    hit = np.mean([i in row for i, row in zip(ids, found, strict=True)])
    assert hit >= 0.9


def test_remove_source_everywhere(tmp_path):
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        _add(w, 20, "a", 0)
        _add(w, 30, "b", 1)
        w.commit()
        assert w.remove("a") == 20
        w.commit()
    snap = IndexSnapshot.open(tmp_path)
    assert snap.ntotal == 30
    assert set(snap.tiles(["source_key"])["source_key"].to_pylist()) == {"b"}
    assert set(snap.sources) == {"b"}
    kept = snap.tiles(["id"])["id"].to_numpy()
    assert snap.thumbnail(int(kept[0])) == b"jpeg"
    _, found = snap.search(snap.get_vectors(np.arange(20)), 5)  # removed vectors are gone
    assert not np.isin(found, np.arange(20)).any()


def test_rows_as_a_table_are_the_rows_as_dicts(tmp_path):
    """The job hands the writer its rows column-wise (writer.tile_rows: bounds bit for bit
    mercantile's, a source's values given once); dicts give the same table, and a buffered
    table loses a removed source's rows as dicts do."""
    import pyarrow as pa

    from indexer.store.writer import tile_rows as rows_of

    dicts = tile_rows(1500, "a") + tile_rows(40, "b", start=7000)
    dicts[3]["nodata_fraction"] = 0.25
    source = np.array([0] * 1500 + [1] * 40)
    table = rows_of(np.array([r["z"] for r in dicts]), np.array([r["x"] for r in dicts]),
                    np.array([r["y"] for r in dicts]),
                    np.array([r["nodata_fraction"] for r in dicts]), source,
                    {name: [dicts[0][name], dicts[-1][name]]
                     for name in ("source", "source_key", "acquired", "sensor", "gsd_m",
                                  "native_gsd_m")})
    assert isinstance(table, pa.Table)
    got = []
    for d, rows in enumerate((dicts, table)):
        with IndexWriter(tmp_path / str(d), IDENT, StoreSettings()) as w:
            w.add(rows, _vecs(len(dicts), 0), [b"jpeg"] * len(dicts))
            w.add(tile_rows(5, "c", start=9000), _vecs(5, 1), [b"jpeg"] * 5)
            assert w.pending == len(dicts) + 5
            assert w.remove("b") == 40 and w.pending == 1500 + 5
            w.commit()
        got.append(IndexSnapshot.open(tmp_path / str(d)).tiles())
    assert got[0].equals(got[1]) and got[0].num_rows == 1505
    assert got[1]["nodata_fraction"][3].as_py() == 0.25
    without_sensor = {k: v for k, v in dicts[0].items() if k != "sensor"}
    for bad in ([without_sensor], [dicts[1], without_sensor], table.drop_columns(["sensor"])[:1]):
        with IndexWriter(tmp_path / "bad", IDENT, StoreSettings()) as w:
            with pytest.raises(ValueError, match="tile rows lack column"):
                w.add(bad, _vecs(len(bad), 0), [b"jpeg"] * len(bad))


def test_thumbnails_of_every_size_come_back_as_written(tmp_path, monkeypatch):
    """A commit's thumbnails go to Arrow as one joined buffer with offsets (parts.binary_array),
    in chunks under Arrow's 2 GB: empty ones, ones larger than a chunk alone, across chunks."""
    import indexer.store.parts as parts

    rng = np.random.default_rng(7)
    jpegs = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()
             for n in rng.choice([0, 1, 9, 40, 300], size=60)]
    monkeypatch.setattr(parts, "BINARY_CHUNK", 100)  # a few values a chunk, some alone
    arr = parts.binary_array(jpegs)
    assert arr.num_chunks > 5 and arr.to_pylist() == jpegs
    assert parts.binary_array([]).to_pylist() == []
    with IndexWriter(tmp_path / "idx", IDENT, StoreSettings()) as w:
        w.add(tile_rows(60, "a"), _vecs(60, 1), jpegs)
        mark_complete(w, "a")
        w.commit()
    snap = IndexSnapshot.open(tmp_path / "idx")
    got = snap.thumbnails(np.arange(60))
    assert [got.get(i, b"") for i in range(60)] == jpegs


def test_foreign_encoder_is_refused(tmp_path):
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        w.commit()
    other = dataclasses.replace(IDENT, weights_sha256="x" * 64)
    with pytest.raises(IndexError_, match="built with encoder fake@wwwwwwwwwwww"):
        IndexWriter(tmp_path, other, StoreSettings())
    with pytest.raises(IndexError_, match="query encoder"):
        IndexSnapshot.open(tmp_path).check_encoder(other)


def test_one_writer_at_a_time(tmp_path):
    with IndexWriter(tmp_path, IDENT, StoreSettings()):
        with pytest.raises(IndexError_, match="another satfind-index process"):
            IndexWriter(tmp_path, IDENT, StoreSettings())
        # ... and from another process
        code = ("import sys; from tests.test_store import *\n"
                "try:\n    IndexWriter(sys.argv[1], IDENT, StoreSettings())\n"
                "except IndexError_ as e:\n    print(e); sys.exit(3)\n")
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 3 and "another satfind-index process" in r.stdout, r.stderr
    with IndexWriter(tmp_path, IDENT, StoreSettings()):  # released on close
        pass


def test_garbage_from_interrupted_runs_is_cleaned(tmp_path):
    with IndexWriter(tmp_path, IDENT, StoreSettings()) as w:
        _add(w, 5, "a", 0)
        w.commit()
    (tmp_path / "tiles" / "part-00099.parquet").write_bytes(b"junk")
    (tmp_path / "vectors-000099.faiss").write_bytes(b"junk")
    (tmp_path / ".manifest.json.tmp-1").write_bytes(b"junk")
    assert IndexSnapshot.open(tmp_path).ntotal == 5  # readers ignore it
    with IndexWriter(tmp_path, IDENT, StoreSettings()):
        pass
    assert not (tmp_path / "tiles" / "part-00099.parquet").exists()
    assert not (tmp_path / "vectors-000099.faiss").exists()
    assert not (tmp_path / ".manifest.json.tmp-1").exists()


def test_not_an_index(tmp_path):
    with pytest.raises(IndexError_, match="no committed index"):
        IndexSnapshot.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(IndexError_, match="unreadable manifest"):
        IndexSnapshot.open(tmp_path)


def test_ivf_is_retrained_as_the_index_grows(tmp_path):
    st = StoreSettings(ivf_min_vectors=1000, pq_m=4, retrain_growth=2.0)
    with IndexWriter(tmp_path, IDENT, st) as w:
        _add(w, 1200, "a", 0)
        w.commit()
        first = dataclasses.asdict(w.m.index)
        _add(w, 600, "b", 1)  # 1800 < 2 x 1200: keeps its lists
        w.commit()
        assert w.m.index.trained_at == first["trained_at"] == 1200
        _add(w, 700, "c", 2)  # 2500 >= 2 x 1200: re-trained on everything
        w.commit()
        info = dataclasses.asdict(w.m.index)
    assert info["trained_at"] == 2500 and "re-trained" in info["chosen"]
    assert info["nlist"] > first["nlist"]
    snap = IndexSnapshot.open(tmp_path)
    assert snap.ntotal == 2500
    assert sorted(snap.tiles(["id"])["id"].to_pylist()) == list(range(2500))
