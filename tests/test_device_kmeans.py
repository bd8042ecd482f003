"""The IVF's coarse k-means and list assignment on the encoder's device (job.kmeans_on,
indexer/job/device_kmeans.py), on the CPU and on CUDA where there is one: the lists are
FAISS's nearest centroids, the codes FAISS's own, and the index finds what FAISS's k-means
finds."""

from __future__ import annotations

import dataclasses
import time

import faiss
import numpy as np
import pytest
import torch

from bench.synthetic import EmbeddingWorld
from indexer.config import StoreSettings
from indexer.job.device_kmeans import DeviceKMeans
from indexer.job.pipeline import coarse_kmeans
from indexer.store.snapshot import IndexSnapshot
from indexer.store.vector_index import KMEANS_ITERS, VectorIndex
from indexer.store.writer import IndexWriter
from tests.helpers import busy_cuda_stream, mark_complete, tile_rows
from tests.test_store import IDENT

CPU = DeviceKMeans(torch.device("cpu"))
DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
ST = StoreSettings(ivf_min_vectors=1000, retrain_growth=0)


def _world(n: int, dim: int, seed: int) -> np.ndarray:
    return EmbeddingWorld(dim=dim, clusters=200).sample(n, seed).astype(np.float32)


def _spread(x: np.ndarray, c: np.ndarray) -> float:
    """k-means' objective for inner product: the mean of each point's best score."""
    return float((x @ c.T).max(1).mean())


@pytest.fixture(params=DEVICES, ids=str)
def km(request) -> DeviceKMeans:
    return DeviceKMeans(request.param)


def test_lists_are_the_nearest_centroids_and_codes_are_faiss_own(km):
    x = _world(6000, 64, 1)
    faiss_made, _ = VectorIndex.train_ivfpq(x[:3000], 6000, ST)
    want = faiss_made.encode(x)
    faiss_made.assign_with(km)  # the same template, its lists computed by torch
    got = faiss_made.encode(x)
    assert got.shape == want.shape
    assert (got == want).all(1).mean() >= 0.999  # a near tie may round either way
    c = faiss.extract_index_ivf(faiss_made._index).quantizer.reconstruct_n(0, 77)
    scores = x[:500] @ c.T
    lists = km.assigner(c)(x[:500])
    assert lists.dtype == np.int64 and lists.shape == (500,)
    # Each vector's list is a centroid of highest inner product (a tie either way).
    assert (scores[np.arange(500), lists] >= scores.max(1) - 1e-5).all()


def test_kmeans_is_as_good_as_faiss_and_its_index_finds_as_much(km):
    x, q = _world(20_000, 64, 2), _world(200, 64, 3)
    fa, params = VectorIndex.train_ivfpq(x[:8000], 20_000, ST)
    dev, same = VectorIndex.train_ivfpq(x[:8000], 20_000, ST, km)
    assert same == params  # recorded alike: factory, nlist, sample
    nlist = params["nlist"]
    c_fa = faiss.extract_index_ivf(fa._index).quantizer.reconstruct_n(0, nlist)
    c_dev = km.centroids(x[:8000], nlist, KMEANS_ITERS)
    np.testing.assert_allclose(np.linalg.norm(c_dev, axis=1), 1, atol=1e-5)
    assert _spread(x, c_dev) >= _spread(x, c_fa) - 0.005
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recall = {}
    for name, idx in (("faiss", fa), ("device", dev)):
        idx.add_codes(idx.encode(x), np.arange(len(x), dtype=np.int64))
        found = idx.search(q, 10, nprobe=8)[1]
        recall[name] = np.mean([len(set(f) & set(t)) / 10
                                for f, t in zip(found, truth, strict=True)])
    assert recall["device"] >= recall["faiss"] - 0.03, recall


def test_empty_clusters_are_split_not_left_empty(km):
    """50 distinct points into 80 centroids: the seeding draws duplicates, whose clusters
    empty; each takes half of the largest cluster instead of staying NaN or empty."""
    base = _world(50, 16, 4)
    x = base[np.random.default_rng(0).integers(0, 50, 400)]
    c = km.centroids(x, 80, 5)
    assert np.isfinite(c).all()
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="k-means of 10 points into 11"):
        km.centroids(x[:10], 11, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_writers_lists_do_not_wait_for_the_encoders_queue():
    """On CUDA the k-means and the lists run on a stream of their own: with ~1 s of work
    queued on the current stream (the job's encoder's), assigning a commit's vectors and a
    small k-means return long before it ends."""
    km = DeviceKMeans(torch.device("cuda"))
    x = _world(2048, 64, 5)
    c = km.centroids(x, 32, 3)
    assign = km.assigner(c)
    want = assign(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    busy_cuda_stream(1.0)  # the encoder's batches, queued
    got = assign(x)
    c2 = km.centroids(x, 32, 3)
    waited = time.perf_counter() - t
    queued = torch.cuda.current_stream().query()  # False: the "encoder" is still busy
    torch.cuda.synchronize()
    assert time.perf_counter() - t >= 0.5  # the queued work took its ~1 s
    assert not queued and waited < 0.3, waited
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(c2, c, atol=1e-6)  # seeded: the same k-means


class Counting(DeviceKMeans):
    """The CPU's device k-means, counting its k-means runs and the rows it assigns."""

    def __init__(self):
        super().__init__(torch.device("cpu"))
        self.kmeans, self.rows = 0, 0

    def centroids(self, sample, k, iters):
        self.kmeans += 1
        return super().centroids(sample, k, iters)

    def assigner(self, centroids):
        assign = super().assigner(centroids)

        def counted(x):
            self.rows += len(x)
            return assign(x)
        return counted


def test_a_writer_encodes_every_vector_with_the_device_lists(tmp_path):
    """Trained on its own thread with device k-means, then commits after it and an index
    opened again (its IVF loaded from disk): every code's list is its vector's nearest
    centroid of the template the manifest names."""
    world = EmbeddingWorld(dim=16, clusters=50)
    counted = Counting()

    def add(w, n, key, first):
        w.add(tile_rows(n, key, first), world.sample(n, first + 1), [b"j"] * n)
        mark_complete(w, key, n)

    with IndexWriter(tmp_path, IDENT, ST, background_training=True, kmeans=counted) as w:
        for i in range(4):
            add(w, 600, f"a{i}", 600 * i)
            w.commit()
        w.commit(wait_for_training=True)
        assert w.m.index.factory.startswith("IVF")
        add(w, 500, "b", 2400)
        w.commit()
    with IndexWriter(tmp_path, IDENT, ST, kmeans=counted) as w:
        add(w, 300, "c", 2900)
        w.commit()
    snap = IndexSnapshot.open(tmp_path)
    m = snap.manifest.index
    template = VectorIndex.from_template((tmp_path / m.file).read_bytes(), 16, m.file)
    c = faiss.extract_index_ivf(template._index).quantizer.reconstruct_n(0, m.nlist)
    codes = np.load(tmp_path / m.codes)
    x = snap.get_vectors(np.arange(snap.ntotal))  # float16 copies: near ties may differ
    assert len(codes) == 3200
    assert (template.list_of(codes) == (x @ c.T).argmax(1)).mean() >= 0.99
    assert counted.kmeans == 1 and counted.rows >= 3200  # every code's list made there


@pytest.mark.parametrize(("choice", "want"), [("faiss", False), ("auto", "on CUDA"),
                                              ("device", True)])
def test_kmeans_on_chooses_the_encoders_device(settings, encoder, choice, want):
    s = dataclasses.replace(settings, job=dataclasses.replace(settings.job, kmeans_on=choice))
    got = coarse_kmeans(s, encoder)
    if want == "on CUDA":  # auto: the encoder's GPU where it has one, else FAISS
        want = encoder.device.type == "cuda"
    assert (got is not None) == want
    if want:
        assert got.device == encoder.device
