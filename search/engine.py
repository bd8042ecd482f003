"""`SearchEngine`: text / image / tile-id / feedback queries over an index, with bbox, time,
sensor and source filters (DuckDB), ANN candidates (FAISS) and exact re-rank (float16)."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from encoder.model import SatelliteEncoder
from encoder.prompts import ensemble_text_embedding
from indexer.errors import IndexError_
from indexer.store.layout import MANIFEST
from indexer.store.snapshot import IndexSnapshot
from search.query_image import decode_query_image
from search.settings import ApiSettings, SearchSettings, ServeConfig


class QueryError(ValueError):
    """A query the engine cannot answer; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Filters:
    # west, south, east, north; west > east is a box across the antimeridian (as in GeoJSON
    # and STAC): west..180 and -180..east.
    bbox: tuple[float, float, float, float] | None = None
    start: datetime | None = None
    end: datetime | None = None
    sensors: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # exact path or folder prefix

    def __post_init__(self):
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not all(np.isfinite(self.bbox)):
                raise QueryError("bbox: values must be finite numbers")
            if not (-180 <= w <= 180 and -180 <= e <= 180):
                raise QueryError("bbox: longitudes must be within -180..180")
            if not (-90 <= s <= 90 and -90 <= n <= 90):
                raise QueryError("bbox: latitudes must be within -90..90")
            if w == e:
                raise QueryError("bbox: west equals east (west,south,east,north; west > east "
                                 "means a box across the antimeridian)")
            if s >= n:
                raise QueryError("bbox: south must be less than north (west,south,east,north)")
        for name in ("start", "end"):
            v = getattr(self, name)
            if v is not None and v.tzinfo is None:
                raise QueryError(f"{name}: give a time zone (e.g. 2014-01-01T00:00:00Z)")
        if self.start and self.end and self.start > self.end:
            raise QueryError("start is after end")

    @property
    def active(self) -> bool:
        return bool(self.bbox or self.start or self.end or self.sensors or self.sources)

    def sql(self) -> tuple[str, list]:
        where, params = [], []
        if self.bbox:
            w, s, e, n = self.bbox
            lon = "east > ? AND west < ?" if w < e else "(east > ? OR west < ?)"
            where.append(f"{lon} AND north > ? AND south < ?")
            params += [w, e, s, n]
        if self.start:
            where.append("acquired >= ?")
            params.append(self.start)
        if self.end:
            where.append("acquired <= ?")
            params.append(self.end)
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


@dataclass(frozen=True)
class Query:
    text: str | None = None
    image: bytes | None = None
    tile_id: int | None = None
    positives: tuple[int, ...] = ()
    negatives: tuple[int, ...] = ()
    k: int = 20
    filters: Filters = Filters()
    collapse: bool = False  # keep only the best tile per z/x/y across dates


RESULT_COLUMNS = ["id", "z", "x", "y", "west", "south", "east", "north", "acquired", "source",
                  "sensor", "gsd_m"]


class _Loaded:
    """A snapshot plus its tile metadata held in memory as columns: filters are evaluated
    with numpy over float32 bounds, int64 times and dictionary codes (1-3 ms at 1M tiles,
    against 3-6 ms for the same query in DuckDB; see BENCHMARKS.md)."""

    def __init__(self, snap: IndexSnapshot, stamp: tuple):
        self.snap = snap
        self.stamp = stamp
        t = snap.tiles().sort_by("id").combine_chunks()
        self.table = t
        self.ids = t["id"].to_numpy()
        self.bounds = {c: t[c].to_numpy().astype(np.float32) for c in
                       ("west", "south", "east", "north")}
        acq = pc.cast(t["acquired"], pa.int64())
        self.acquired = pc.fill_null(acq, NO_TIME).to_numpy()
        self.sensor_codes, self.sensor_names = _codes(t["sensor"])
        self.source_codes, self.source_names = _codes(t["source"])

    def has(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, len(self.ids) - 1) if len(self.ids) else pos
        return (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), dtype=bool)

    def rows(self, ids: np.ndarray, columns: list[str]) -> list[dict]:
        pos = np.searchsorted(self.ids, ids)
        return self.table.select(columns).take(pa.array(pos)).to_pylist()

    def bitmap(self, mask: np.ndarray) -> np.ndarray:
        """FAISS IDSelectorBitmap bytes (bit i = id i) of the tiles in `mask`."""
        next_id = int(self.snap.manifest["next_id"])
        if len(self.ids) == next_id:  # no removed ids: positions are ids
            return np.packbits(mask, bitorder="little")
        bits = np.zeros(next_id, dtype=bool)
        bits[self.ids[mask]] = True
        return np.packbits(bits, bitorder="little")

    def mask(self, f: Filters) -> np.ndarray:
        """Per tile (in id order): does it pass the filters? The same semantics as
        Filters.sql(), which the tests use to check this."""
        m = np.ones(len(self.ids), dtype=bool)
        if f.bbox is not None:
            w, s, e, n = (np.float32(v) for v in f.bbox)
            b = self.bounds
            if w < e:
                m &= b["east"] > w
                m &= b["west"] < e
            else:  # across the antimeridian
                m &= (b["east"] > w) | (b["west"] < e)
            m &= b["north"] > s
            m &= b["south"] < n
        if f.start is not None:  # tiles without a time (NO_TIME) never pass a time filter
            m &= self.acquired >= _micros(f.start)
        elif f.end is not None:
            m &= self.acquired != NO_TIME
        if f.end is not None:
            m &= self.acquired <= _micros(f.end)
        if f.sensors:
            wanted = [i for i, name in enumerate(self.sensor_names) if name in f.sensors]
            m &= np.isin(self.sensor_codes, wanted)
        if f.sources:
            wanted = [i for i, name in enumerate(self.source_names)
                      if any(name == src or name.startswith(src.rstrip("/") + "/")
                             for src in f.sources)]
            m &= np.isin(self.source_codes, wanted)
        return m


NO_TIME = np.iinfo(np.int64).min
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


def _codes(column) -> tuple[np.ndarray, list[str]]:
    enc = pc.dictionary_encode(column).combine_chunks()
    return enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist()


class SearchEngine:
    def __init__(self, index_dir: str | Path, config: ServeConfig,
                 encoder: SatelliteEncoder | None = None):
        self.dir = Path(index_dir)
        self.config = config
        self.search_settings: SearchSettings = config.search
        self.api_settings: ApiSettings = config.api
        self.encoder = encoder or SatelliteEncoder(config.settings.encoder)
        self._lock = threading.Lock()
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        # One model forward at a time: torch already spreads one over every core, and
        # concurrent forwards only oversubscribe them and starve the cheap queries.
        self._model_lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        # Decoding an upload can take hundreds of MB at the pixel cap: a few at a time.
        self._decode_slots = threading.BoundedSemaphore(config.api.max_concurrent_decodes)
        self._loaded = self._load()

    # --- snapshots ----------------------------------------------------------------------
    def _stamp(self) -> tuple:
        try:
            st = os.stat(self.dir / MANIFEST)
        except FileNotFoundError:
            raise IndexError_(f"{self.dir}: no committed index here (manifest.json missing)") \
                from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> _Loaded:
        stamp = self._stamp()
        snap = IndexSnapshot.open(self.dir)
        snap.check_encoder(self.encoder.identity)
        return _Loaded(snap, stamp)

    @property
    def loaded(self) -> _Loaded:
        """The current snapshot; a newly committed manifest is picked up here. Queries keep
        the object they started with, so a swap never disturbs one in flight."""
        cur = self._loaded
        if self._stamp() != cur.stamp:
            with self._lock:
                if self._stamp() != self._loaded.stamp:
                    self._loaded = self._load()
                cur = self._loaded
        return cur

    @property
    def snapshot(self) -> IndexSnapshot:
        return self.loaded.snap

    # --- query vectors ------------------------------------------------------------------
    def text_vector(self, text: str) -> np.ndarray:
        """Prompt-ensembled embedding, cached; concurrent misses of one query embed it once."""
        key = " ".join(text.split()).lower()
        if not key:
            raise QueryError("empty text query")
        while True:
            with self._cache_lock:
                if key in self._text_cache:
                    self._text_cache.move_to_end(key)
                    return self._text_cache[key]
                pending = self._inflight.get(key)
                if pending is None:
                    pending = self._inflight[key] = threading.Event()
                    break
            pending.wait()  # another request is embedding this text; then read the cache
        try:
            with self._model_lock:
                v = ensemble_text_embedding(self.encoder, key)
            with self._cache_lock:
                self._text_cache[key] = v
                while len(self._text_cache) > self.search_settings.text_cache_size:
                    self._text_cache.popitem(last=False)
            return v
        finally:
            with self._cache_lock:
                self._inflight.pop(key, None)
            pending.set()

    def image_vector(self, data: bytes) -> np.ndarray:
        from search.query_image import ImageError, UnsupportedImageType

        a = self.api_settings
        try:
            with self._decode_slots:
                tile = decode_query_image(data, self.encoder.image_size,
                                          self.config.settings.tiling, a.allowed_image_types,
                                          a.min_image_px, a.max_image_pixels)
        except ImageError as e:
            status = 415 if isinstance(e, UnsupportedImageType) else 400
            raise QueryError(str(e), status=status) from None
        with self._model_lock:
            return self.encoder.encode_images(tile[None])[0]

    def _stored(self, loaded: _Loaded, ids: tuple[int, ...] | list[int]) -> np.ndarray:
        arr = np.asarray([int(i) for i in ids], dtype=np.int64)
        known = loaded.has(arr)
        if not known.all():
            raise QueryError(f"unknown tile id {int(arr[~known][0])}", status=404)
        return loaded.snap.get_vectors(arr)

    def query_vector(self, q: Query, loaded: _Loaded) -> np.ndarray:
        parts = [x is not None for x in (q.text, q.image, q.tile_id)]
        if sum(parts) > 1:
            raise QueryError("give one of text, image or tile id (plus optional feedback)")
        base = None
        if q.text is not None:
            base = self.text_vector(q.text)
        elif q.image is not None:
            base = self.image_vector(q.image)
        elif q.tile_id is not None:
            base = self._stored(loaded, [q.tile_id])[0]
        v = np.zeros(self.encoder.dim, dtype=np.float32) if base is None else base.copy()
        if q.positives:
            v += self._stored(loaded, q.positives).mean(axis=0)
        if q.negatives:
            v -= self.search_settings.negative_weight * self._stored(loaded,
                                                                     q.negatives).mean(axis=0)
        if base is None and not q.positives:
            raise QueryError("empty query: give text, an image, a tile id or positive tile ids")
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm < 1e-6:
            raise QueryError("query vector is zero (positives and negatives cancel out)")
        return (v / norm).astype(np.float32)

    # --- search -------------------------------------------------------------------------
    def search(self, q: Query, timings: dict | None = None) -> list[dict]:
        """Result rows, best first; `timings` (if given) gets embed_ms and search_ms."""
        if q.k < 1:
            raise QueryError("k must be at least 1")
        t0 = time.perf_counter()
        loaded = self.loaded
        v = self.query_vector(q, loaded)
        t1 = time.perf_counter()
        want = q.k * 8 if q.collapse else q.k
        ids, scores = self._rank(loaded, v, q.filters, want)
        rows = self._rows(loaded, ids, scores)
        if timings is not None:
            timings["embed_ms"] = (t1 - t0) * 1000
            timings["search_ms"] = (time.perf_counter() - t1) * 1000
        if q.collapse:
            seen, kept = set(), []
            for r in rows:
                cell = (r["z"], r["x"], r["y"])
                if cell not in seen:
                    seen.add(cell)
                    kept.append(r)
            rows = kept
        return rows[: q.k]

    def search_vector(self, v: np.ndarray, k: int, filters: Filters = Filters()) -> tuple:
        """(ids, scores) of the k best tiles for a unit query vector: the path every query
        takes after embedding (filters, ANN or exact candidates, exact re-rank)."""
        return self._rank(self.loaded, np.asarray(v, dtype=np.float32), filters, k)

    def _rank(self, loaded: _Loaded, v: np.ndarray, filters: Filters, k: int):
        snap, s = loaded.snap, self.search_settings
        if snap.ntotal == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        selector = None
        kept = snap.ntotal
        if filters.active:
            mask = loaded.mask(filters)
            kept = int(np.count_nonzero(mask))
            if kept == 0:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            if kept <= s.exact_max_candidates and snap.vectors is not None:
                return self._exact(snap, v, loaded.ids[mask], k)
            # A bitmap over all ids: N/8 bytes, O(1) per test (a hash set of 300k ids
            # costs more to build than the search itself).
            bitmap = loaded.bitmap(mask)
            selector = faiss.IDSelectorBitmap(int(snap.manifest["next_id"]),
                                              faiss.swig_ptr(bitmap))
        depth = max(k, s.rerank_depth)
        params = None
        info = snap.manifest["index"]
        if info["factory"] == "Flat":
            if selector is not None:
                params = faiss.SearchParameters(sel=selector)
        else:
            nprobe = s.nprobe
            if selector is not None:
                # Probe enough lists to expect 2 x depth matching vectors in them: a filter
                # keeping few tiles needs more lists than an unfiltered query.
                nlist = int(info.get("nlist", nprobe))
                expect = int(np.ceil(2 * depth * nlist / kept))
                nprobe = min(nlist, max(nprobe, expect))
            params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        scores, ids = snap.index.search(v[None], depth, params=params)
        ids = ids[0][ids[0] >= 0]
        if snap.vectors is None:
            return ids[:k], scores[0][: len(ids)][:k]
        return self._exact(snap, v, ids, k)

    @staticmethod
    def _exact(snap: IndexSnapshot, v: np.ndarray, ids: np.ndarray, k: int):
        scores = snap.get_vectors(ids) @ v
        if len(ids) > k:
            top = np.argpartition(-scores, k - 1)[:k]
            ids, scores = ids[top], scores[top]
        order = np.lexsort((ids, -scores))  # ties broken by id: deterministic
        return ids[order], scores[order]

    def _rows(self, loaded: _Loaded, ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        if len(ids) == 0:
            return []
        rows = loaded.rows(np.asarray(ids, dtype=np.int64), RESULT_COLUMNS)
        for r, sc in zip(rows, scores, strict=True):
            r["score"] = float(sc)
        return rows

    # --- lookups ------------------------------------------------------------------------
    def tile(self, tile_id: int) -> dict:
        loaded = self.loaded
        tid = np.asarray([int(tile_id)], dtype=np.int64)
        if not loaded.has(tid)[0]:
            raise QueryError(f"unknown tile id {tile_id}", status=404)
        return loaded.rows(tid, [*RESULT_COLUMNS, "native_gsd_m", "nodata_fraction"])[0]

    def thumbnail(self, tile_id: int) -> bytes:
        self.tile(tile_id)
        jpeg = self.snapshot.thumbnail(int(tile_id))
        if jpeg is None:
            raise QueryError(f"no thumbnail for tile {tile_id}", status=404)
        return jpeg

    def stats(self) -> dict:
        snap = self.snapshot
        idx = dict(snap.manifest["index"])
        idx.pop("file", None)
        loaded = self.loaded
        con = duckdb.connect()
        try:
            con.register("tiles", loaded.table)
            sensors = con.sql("SELECT sensor, count(*) AS n FROM tiles GROUP BY sensor "
                              "ORDER BY sensor").to_arrow_table().to_pylist()
            span = con.sql("SELECT min(acquired) AS a, max(acquired) AS b FROM tiles"
                           ).to_arrow_table().to_pylist()[0]
        finally:
            con.close()
        return {
            "tiles": snap.ntotal, "sources": len(snap.manifest["sources"]),
            "generation": snap.generation, "encoder": snap.identity.to_dict(), "index": idx,
            "search": {"nprobe": self.search_settings.nprobe,
                       "rerank_depth": self.search_settings.rerank_depth,
                       "exact_max_candidates": self.search_settings.exact_max_candidates},
            "sensors": {r["sensor"]: r["n"] for r in sensors},
            "acquired_min": span["a"], "acquired_max": span["b"],
        }
