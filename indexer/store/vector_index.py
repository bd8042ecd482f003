"""The vector-index seam: the only module that calls FAISS.

Exact Flat below a size where IVF training is meaningful, IVF-PQ above it; inner product on
L2-normalised vectors; ids are tile ids. Swapping the ANN library means rewriting this
module only: the writer and the snapshot see `VectorIndex`, nothing else.

On disk an index is a *template* (the trained, empty structure: IVF centroids and PQ
codebooks; nothing for Flat) plus one fixed-size *code* per vector (`encode`), so a commit
appends only the codes of what it adds and a reader rebuilds the index by `add_codes`
without encoding anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from indexer.config import StoreSettings
from indexer.errors import IndexError_

# FAISS k-means wants at least this many training points per centroid.
MIN_POINTS_PER_CENTROID = 39
PQ_CENTROIDS = 256  # per sub-quantizer: 8-bit PQ codes
# The PQ codebooks' k-means gets at least this many points where the index has them: FAISS's
# k-means of 8-d sub-vectors into 256 centroids runs ~6x faster per point from about 16,000
# points than below (faiss-cpu 1.15; bench/pq_train.py), so 16,384 points train faster than
# the 9,984 (39 per centroid) FAISS asks for, and better.
PQ_TRAIN_POINTS = 64 * PQ_CENTROIDS
# k-means iterations for the coarse quantizer (FAISS's default of 25 costs 2.5x the build
# time for no measurable recall after exact re-rank; see BENCHMARKS.md).
KMEANS_ITERS = 10
# The PQ codebooks' k-means iterations (FAISS's default: 25): the same recall after re-rank
# at 1M, training 2.2-2.9x faster (bench/search.py; BENCHMARKS.md).
PQ_KMEANS_ITERS = 10
ADD_CHUNK = 65536


class CoarseKMeans(Protocol):
    """The IVF's coarse k-means and assignment done outside FAISS (indexer/job/
    device_kmeans.py: on the encoder's GPU), numpy in and out: the store imports no torch."""

    def centroids(self, sample: np.ndarray, k: int, iters: int) -> np.ndarray:
        """[k, dim] float32: spherical k-means of `sample` (inner product, unit centroids,
        as FAISS trains an inner-product IVF)."""

    def assigner(self, centroids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """vectors [N, dim] float32 -> int64 [N]: each one's centroid of highest inner
        product."""


def set_threads(n: int) -> None:
    """OpenMP threads for the FAISS calls the calling thread makes from now on (a setting of
    each thread: the others keep theirs)."""
    faiss.omp_set_num_threads(n)


def ivf_params(n: int, dim: int, settings: StoreSettings) -> tuple[int, int]:
    nlist = settings.nlist or int(2 * math.sqrt(n))
    nlist = max(1, min(nlist, n // MIN_POINTS_PER_CENTROID))
    m = settings.pq_m or max(1, dim // 8)
    if dim % m:
        raise ValueError(f"store.pq_m = {m} does not divide the embedding dimension {dim}")
    return nlist, m


class VectorIndex:
    """Tile vectors for approximate (IVF-PQ) or exact (Flat) inner-product search."""

    def __init__(self, index: faiss.Index):
        self._index = index
        # vectors -> IVF list numbers, computed elsewhere (a GPU: CoarseKMeans); None: FAISS's
        self._assign: Callable[[np.ndarray], np.ndarray] | None = None

    # --- making one --------------------------------------------------------------------
    @classmethod
    def flat(cls, dim: int) -> VectorIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def read(cls, path: Path, dim: int, ntotal: int) -> VectorIndex:
        """The committed index file, checked against what the manifest says; a missing file
        raises FileNotFoundError (a reader may have raced a writer's clean-up), damage
        IndexError_."""
        if not path.is_file():
            raise FileNotFoundError(str(path))
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise IndexError_(f"{path.name}: damaged FAISS index file (cannot be read)") from None
        if index.d != dim or index.ntotal != ntotal:
            raise IndexError_(f"{path.name}: holds {index.ntotal} vectors of {index.d} "
                              f"dimensions, the manifest says {ntotal} of {dim}")
        return cls(index)

    @classmethod
    def from_template(cls, data: bytes, dim: int, where: str) -> VectorIndex:
        """An empty index from `template_bytes()` (damage: IndexError_ naming `where`)."""
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError:
            raise IndexError_(f"{where}: damaged FAISS template file (cannot be read)"
                              ) from None
        if index.d != dim or index.ntotal != 0:
            raise IndexError_(f"{where}: a template of {index.ntotal} vectors of {index.d} "
                              f"dimensions, expected an empty one of {dim}")
        return cls(index)

    @classmethod
    def train_ivfpq(cls, sample: np.ndarray, n: int, settings: StoreSettings,
                    kmeans: CoarseKMeans | None = None) -> tuple[VectorIndex, dict]:
        """An empty IVF{nlist},PQ{m} for `n` vectors, trained on `sample` (see
        `training_size`); and what to record about it (factory, nlist, pq_m, sizes).
        `kmeans`: the IVF's centroids and the assignment of vectors to them made there
        (FAISS then trains the PQ codebooks only); None: all by FAISS."""
        dim = sample.shape[1]
        nlist, m = ivf_params(n, dim, settings)
        # "np": no polysemous training (a permutation of the PQ centroids that only Hamming
        # filtering uses, which satfind does not; it took seconds even on 1,000 points).
        factory = f"IVF{nlist},PQ{m}np"
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = KMEANS_ITERS
        # FAISS prints a warning on the C-level stderr when a k-means has fewer than 39
        # points per centroid (the PQ's 256 centroids, below 9,984 vectors): `training_note`
        # says it instead, in the debug log, from whichever thread trains.
        ivf.cp.min_points_per_centroid = 1
        pq = faiss.downcast_index(ivf).pq
        pq.cp.min_points_per_centroid = 1
        pq.cp.niter = PQ_KMEANS_ITERS
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if kmeans is not None:  # a quantizer holding nlist centroids is not trained again
            ivf.quantizer.add(np.ascontiguousarray(
                kmeans.centroids(sample, nlist, KMEANS_ITERS), dtype=np.float32))
        index.train(sample)
        out = cls(index)
        if kmeans is not None:
            out.assign_with(kmeans)
        return out, {"factory": factory, "nlist": nlist, "pq_m": m,
                     "trained_on": int(len(sample)), "trained_at": int(n)}

    @staticmethod
    def training_note(params: dict) -> str | None:
        """What FAISS would have warned about a training `train_ivfpq` recorded as
        `params`: too few points per centroid for the PQ codebooks (or the IVF lists)."""
        points = params["trained_on"]
        for what, k in (("IVF lists", params["nlist"]), ("PQ centroids", PQ_CENTROIDS)):
            if points < MIN_POINTS_PER_CENTROID * k:
                return (f"FAISS: k-means of {points} vectors into {k} {what} (it wants at "
                        f"least {MIN_POINTS_PER_CENTROID * k} training points)")
        return None

    @staticmethod
    def training_size(n: int, dim: int, settings: StoreSettings) -> int:
        """How many of `n` vectors the IVF k-means needs (a random sample of that size)."""
        nlist, _ = ivf_params(n, dim, settings)
        return min(n, max(settings.train_points_per_list * nlist, PQ_TRAIN_POINTS))

    @staticmethod
    def min_training_size(n: int, dim: int, settings: StoreSettings) -> int:
        """The fewest vectors an IVF-PQ for `n` trains on without FAISS's warning (39 points
        per IVF list and per PQ centroid)."""
        nlist, _ = ivf_params(n, dim, settings)
        return MIN_POINTS_PER_CENTROID * max(nlist, PQ_CENTROIDS)

    # --- what it holds -----------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def is_flat(self) -> bool:
        return faiss.try_extract_index_ivf(self._index) is None

    def describe(self) -> dict:
        """Kind, size and (IVF) lists, for stats and logs."""
        d = {"kind": "Flat" if self.is_flat else "IVF-PQ", "ntotal": self.ntotal,
             "dim": self.dim}
        if not self.is_flat:
            d["nlist"] = int(faiss.extract_index_ivf(self._index).nlist)
        return d

    def ids(self) -> np.ndarray:
        """Every id held, in the order the index holds them."""
        idx = self._index
        if isinstance(idx, faiss.IndexIDMap2) or hasattr(idx, "id_map"):
            return faiss.vector_to_array(faiss.downcast_index(idx).id_map).astype(np.int64)
        ivf = faiss.extract_index_ivf(idx)
        out = []
        for lst in range(ivf.nlist):
            size = ivf.invlists.list_size(lst)
            if size:
                out.append(faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size).copy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def exact_vectors(self) -> np.ndarray:
        """A Flat index's vectors, in the order of ids() (what IVF training falls back to
        when there are no float16 copies)."""
        if not self.is_flat:
            raise ValueError("only a Flat index holds exact vectors")
        return faiss.downcast_index(self._index.index).reconstruct_n(0, self.ntotal)

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self._index).tobytes()

    # --- codes: what a commit writes ------------------------------------------------------
    @property
    def code_size(self) -> int:
        """Bytes per vector on disk: the IVF list number + PQ code, or float32 for Flat."""
        return self.dim * 4 if self.is_flat else int(self._index.sa_code_size())

    def emptied(self) -> VectorIndex:
        """A copy of this index's trained structure, holding no vectors."""
        empty = faiss.clone_index(self._index)
        empty.reset()
        return VectorIndex(empty)

    def template_bytes(self) -> bytes:
        """This index's trained structure without its vectors, as bytes."""
        return self.emptied().to_bytes()

    def assign_with(self, kmeans: CoarseKMeans) -> None:
        """From now on `encode` takes each vector's IVF list from `kmeans` (its nearest
        centroid by inner product, as FAISS's quantizer gives it, computed there: a GPU);
        FAISS makes the rest of the code (the PQ of the residual). Flat: nothing to do."""
        if not self.is_flat and self._assign is None:
            ivf = faiss.extract_index_ivf(self._index)
            self._assign = kmeans.assigner(ivf.quantizer.reconstruct_n(0, ivf.nlist))

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """uint8 [N, code_size]: what `add_codes` needs to hold these vectors."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.is_flat:
            return x.view(np.uint8).reshape(len(x), self.code_size)
        if self._assign is None or not len(x):
            return self._index.sa_encode(x)
        lists = np.ascontiguousarray(self._assign(x), dtype=np.int64)
        out = np.empty((len(x), self.code_size), dtype=np.uint8)
        faiss.downcast_index(faiss.extract_index_ivf(self._index)).encode_vectors(
            len(x), faiss.swig_ptr(x), faiss.swig_ptr(lists), faiss.swig_ptr(out), True)
        return out

    def list_of(self, codes: np.ndarray) -> np.ndarray:
        """The IVF list each code goes to (its coarse bytes, little-endian)."""
        coarse = int(faiss.extract_index_ivf(self._index).coarse_code_size())
        head = np.zeros((len(codes), 8), dtype=np.uint8)
        head[:, :coarse] = codes[:, :coarse]
        return head.view("<u8")[:, 0].astype(np.int64)

    def reserve(self, sizes: np.ndarray) -> None:
        """Room for sizes[l] more codes in IVF list l, allocated exactly: adding codes one
        chunk at a time grows each list by doubling, up to twice the memory it needs."""
        if self.is_flat:
            return
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(self._index).invlists)
        for lst in np.flatnonzero(sizes):
            have = int(lists.list_size(int(lst)))
            lists.resize(int(lst), have + int(sizes[lst]))
            lists.resize(int(lst), have)

    def add_codes(self, codes: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors by their codes (no encoding)."""
        for start in range(0, len(ids), ADD_CHUNK):
            c = np.ascontiguousarray(codes[start:start + ADD_CHUNK], dtype=np.uint8)
            i = np.ascontiguousarray(ids[start:start + ADD_CHUNK], dtype=np.int64)
            if self.is_flat:
                self._index.add_with_ids(c.view(np.float32).reshape(len(c), self.dim), i)
            else:
                self._index.add_sa_codes(c, i)

    def export_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, codes) of every vector held, as `encode` would give them (for an index
        written whole by an older satfind)."""
        if self.is_flat:
            return self.ids(), self.exact_vectors().view(np.uint8).reshape(self.ntotal, -1)
        ivf = faiss.extract_index_ivf(self._index)
        coarse = int(ivf.coarse_code_size())
        ids, codes = [], []
        for lst in range(ivf.nlist):
            size = ivf.invlists.list_size(lst)
            if not size:
                continue
            ids.append(faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size).copy())
            body = faiss.rev_swig_ptr(ivf.invlists.get_codes(lst), size * ivf.code_size)
            head = np.frombuffer(lst.to_bytes(coarse, "little"), dtype=np.uint8)
            codes.append(np.hstack([np.tile(head, (size, 1)),
                                    body.reshape(size, ivf.code_size)]))
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.code_size), dtype=np.uint8)
        return np.concatenate(ids), np.concatenate(codes)

    # --- changes -----------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                 np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        return int(self._index.remove_ids(faiss.IDSelectorBatch(
            np.ascontiguousarray(ids, dtype=np.int64))))

    def remove_range(self, first: int, end: int) -> int:
        """Remove ids first..end-1 (undoing an add)."""
        return int(self._index.remove_ids(faiss.IDSelectorRange(first, end)))

    # --- search ------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               allowed: np.ndarray | None = None,
               packed: tuple[np.ndarray, int, int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) [Q, k] of the nearest vectors by inner product; ids are -1 past
        the end. `allowed`: bool per id (index = tile id), only those are returned. With a
        mask an IVF index probes enough lists to expect 2 x k allowed vectors in them (a
        filter keeping few tiles needs more lists than an unfiltered query). `packed`: the
        same mask already packed (bitmap, length, allowed count), made once, not per query."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        selector, bitmap, kept = None, None, None
        if allowed is not None:
            # A bitmap over all ids: N/8 bytes, O(1) per test (a hash set of 300k ids costs
            # more to build than the search itself).
            bitmap = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
            kept = int(np.count_nonzero(allowed))
        elif packed is not None:
            bitmap, n, kept = packed
            selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
        if self.is_flat:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        else:
            ivf = faiss.extract_index_ivf(self._index)
            nlist = int(ivf.nlist)
            probe = int(ivf.nprobe) if nprobe is None else nprobe
            if kept is not None:
                probe = max(probe, int(np.ceil(2 * k * nlist / max(1, kept))))
            params = faiss.SearchParametersIVF(nprobe=min(nlist, probe), sel=selector)
        scores, ids = self._index.search(q, k, params=params)
        return scores, ids
