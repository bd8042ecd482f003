"""Flat vs IVF-PQ over the same vectors, through the engine's own search path."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from encoder.identity import EncoderIdentity
from indexer.config import Settings, StoreSettings
from indexer.store.writer import IndexWriter
from search.engine import Filters, SearchEngine
from search.settings import SearchSettings, ServeConfig
from tests.helpers import mark_complete, snapshot_sql, tile_rows

DIM = 64
IDENT = EncoderIdentity("synthetic", "c" * 64, "w" * 64, DIM, 64)


def clustered(n: int, seed: int, latent: int = 12, clusters: int = 200) -> np.ndarray:
    """Unit vectors with a low intrinsic dimension, like real image embeddings."""
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(latent, DIM))
    centres = rng.normal(size=(clusters, latent)) * 2.0
    r = np.random.default_rng(seed)
    z = centres[r.integers(0, clusters, n)] + r.normal(size=(n, latent)) * 0.5
    x = z @ proj + r.normal(size=(n, DIM)) * 0.3
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _build(path, vectors, store: StoreSettings) -> None:
    with IndexWriter(path, IDENT, store) as w:
        for start in range(0, len(vectors), 5000):
            chunk = vectors[start:start + 5000]
            key = f"src{start // 5000}"
            w.add(tile_rows(len(chunk), key, start), chunk, [b""] * len(chunk))
            mark_complete(w, key)
            w.commit()


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    base = tmp_path_factory.mktemp("ann")
    vecs = clustered(20_000, seed=1)
    _build(base / "flat", vecs, StoreSettings(ivf_min_vectors=10**9))
    _build(base / "ivf", vecs, StoreSettings(ivf_min_vectors=1000))
    stub = SimpleNamespace(identity=IDENT, dim=DIM, image_size=64)
    cfg = ServeConfig(Settings(), search=SearchSettings(nprobe=16, rerank_depth=100,
                                                        exact_max_candidates=2000))
    return (SearchEngine(base / "flat", cfg, encoder=stub),
            SearchEngine(base / "ivf", cfg, encoder=stub))


def test_ivfpq_top10_agrees_with_flat(engines):
    flat, ivf = engines
    assert flat.snapshot.manifest.index.factory == "Flat"
    assert ivf.snapshot.manifest.index.factory.startswith("IVF")
    queries = clustered(100, seed=2)
    agree = []
    for q in queries:
        a, _ = flat.search_vector(q, 10)
        b, _ = ivf.search_vector(q, 10)
        agree.append(len(set(a) & set(b)) / 10)
    assert np.mean(agree) >= 0.95


@pytest.mark.parametrize("bbox", [(-180.0, -90.0, -130.0, 90.0), (-180.0, -90.0, -175.0, 90.0),
                                  (170.0, -90.0, -175.0, 90.0)])  # across the antimeridian
def test_filtered_search_is_exact_over_the_filter(engines, bbox):
    """Broad filters (FAISS + IDSelector) and selective ones (exact over candidates) both
    return only matching tiles and agree with brute force over the matching set."""
    flat, ivf = engines
    f = Filters(bbox=bbox)
    snap = flat.snapshot
    where, params = f.sql()
    keep = snapshot_sql(snap, f"SELECT id FROM tiles WHERE {where}", params)["id"].to_numpy()
    assert 0 < len(keep) < snap.ntotal
    broad = len(keep) > 2000  # the engine's exact_max_candidates here
    assert broad == (bbox[2] == -130.0)
    vecs = snap.get_vectors(keep)
    for q in clustered(20, seed=3):
        truth = set(keep[np.argsort(-(vecs @ q))[:10]])
        for eng in (flat, ivf):
            ids, _ = eng.search_vector(q, 10, f)
            assert set(ids) <= set(keep)
            assert len(set(ids) & truth) >= 9
