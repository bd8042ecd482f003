"""FAISS index choice: exact Flat below a size where IVF training is meaningful, IVF-PQ
above it; inner product on L2-normalised vectors, ids = tile ids."""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from indexer.config import StoreSettings
from indexer.errors import IndexError_

# FAISS k-means wants at least this many training points per centroid.
MIN_POINTS_PER_CENTROID = 39


def new_flat(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


# k-means iterations for the coarse quantizer (FAISS's default of 25 costs 2.5x the build
# time for no measurable recall after exact re-rank; see BENCHMARKS.md).
KMEANS_ITERS = 10


def ivf_params(n: int, dim: int, settings: StoreSettings) -> tuple[int, int]:
    nlist = settings.nlist or int(2 * math.sqrt(n))
    nlist = max(1, min(nlist, n // MIN_POINTS_PER_CENTROID))
    m = settings.pq_m or max(1, dim // 8)
    if dim % m:
        raise ValueError(f"store.pq_m = {m} does not divide the embedding dimension {dim}")
    return nlist, m


def build_ivfpq(vectors: np.ndarray, ids: np.ndarray, settings: StoreSettings,
                seed: int = 1234) -> tuple[faiss.Index, dict]:
    """Train IVF{nlist},PQ{m} on (a sample of) `vectors` and add them all with `ids`."""
    n, dim = vectors.shape
    nlist, m = ivf_params(n, dim, settings)
    factory = f"IVF{nlist},PQ{m}"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).cp.niter = KMEANS_ITERS
    max_train = max(settings.train_points_per_list * nlist, 256 * MIN_POINTS_PER_CENTROID)
    rng = np.random.default_rng(seed)
    train = vectors if n <= max_train else vectors[np.sort(rng.choice(n, max_train, replace=False))]
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    for start in range(0, n, 65536):
        index.add_with_ids(np.ascontiguousarray(vectors[start:start + 65536], dtype=np.float32),
                           np.ascontiguousarray(ids[start:start + 65536], dtype=np.int64))
    return index, {"factory": factory, "nlist": nlist, "pq_m": m, "trained_on": int(len(train)),
                   "trained_at": int(n)}


def index_ids(index: faiss.Index) -> np.ndarray:
    """All ids held by a Flat (IDMap2) or IVF index."""
    if isinstance(index, faiss.IndexIDMap2) or hasattr(index, "id_map"):
        return faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    out = []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            out.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def read_faiss(index_dir, m: dict) -> faiss.Index:
    """The committed FAISS index a manifest names, checked against it; a missing file raises
    FileNotFoundError (a reader may have raced a writer's clean-up), damage IndexError_."""
    path = Path(index_dir) / m["index"]["file"]
    if not path.is_file():
        raise FileNotFoundError(str(path))
    try:
        index = faiss.read_index(str(path))
    except RuntimeError:
        raise IndexError_(f"{path.name}: damaged FAISS index file (cannot be read)") from None
    if index.d != int(m["dim"]) or index.ntotal != int(m["index"]["ntotal"]):
        raise IndexError_(f"{path.name}: holds {index.ntotal} vectors of {index.d} dimensions, "
                          f"the manifest says {m['index']['ntotal']} of {m['dim']}")
    return index
