"""`SearchEngine`: text / image / tile-id / feedback queries over an index, with bbox, time,
sensor and source filters (columnar masks over the tile table), ANN or exact candidates and
an exact re-rank from the float16 copies. No HTTP here, and no FAISS: the snapshot's vector
index is the only ANN it sees."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import numpy as np

from encoder.model import SatelliteEncoder
from encoder.prompts import ensemble_text_embedding
from indexer.config import TileRecipe
from indexer.store.snapshot import IndexSnapshot
from indexer.store.tiles import Filters, TileTable
from search import regions
from search.query import RESULT_COLUMNS, NotFound, Query, QueryError
from search.query_image import decode_query_image
from search.settings import ApiSettings, SearchSettings, ServeConfig
from search.text_cache import TextEmbeddingCache

log = logging.getLogger("satfind.search")
TILE_COLUMNS = [*RESULT_COLUMNS, "native_gsd_m", "nodata_fraction"]  # a tile's metadata


class Loaded:
    """One snapshot and its tile table: what a query runs against from start to end."""

    def __init__(self, snap: IndexSnapshot, tiles: TileTable | None = None):
        self.snap = snap
        self.tiles = tiles if tiles is not None else TileTable(snap.part_rows(), snap.next_id)

    def refreshed(self) -> Loaded:
        """The latest commit; the tile table changes by what the commits added (their new
        parts' metadata) and removed (their tombstones), nothing else is re-read."""
        snap = self.snap.refreshed()
        if snap is self.snap:
            return self
        change = snap.changes_since(self.snap)
        if change is None:
            return Loaded(snap)
        return Loaded(snap, self.tiles.changed(snap.part_rows(), *change, snap.next_id))


class SearchEngine:
    def __init__(self, index_dir: str | Path, config: ServeConfig,
                 encoder: SatelliteEncoder | None = None):
        self.dir = Path(index_dir)
        self.config = config
        self.search_settings: SearchSettings = config.search
        self.api_settings: ApiSettings = config.api
        self.encoder = encoder or SatelliteEncoder(config.settings.encoder)
        if config.search.text_int8:
            self.encoder.quantize_text()
        self._lock = threading.Lock()
        # One model forward at a time: torch already spreads one over every core, and
        # concurrent forwards only oversubscribe them and starve the cheap queries.
        self._model_lock = threading.Lock()
        self._texts = TextEmbeddingCache(self._embed_text, config.search.text_cache_size)
        # Decoding an upload can take hundreds of MB at the pixel cap: a few at a time.
        self._decode_slots = threading.BoundedSemaphore(config.api.max_concurrent_decodes)
        self._recipe_notice = False  # said once: "this index records no tile recipe"
        self._loaded = self._load()

    # --- snapshots ----------------------------------------------------------------------
    def _load(self) -> Loaded:
        snap = IndexSnapshot.open(self.dir)
        snap.check_encoder(self.encoder.identity)
        return Loaded(snap)

    @property
    def loaded(self) -> Loaded:
        """The current snapshot; a newly committed manifest is picked up here. Queries keep
        the object they started with, so a swap never disturbs one in flight."""
        cur = self._loaded
        if cur.snap.newer_commit():
            with self._lock:
                if self._loaded.snap.newer_commit():
                    fresh = self._loaded.refreshed()
                    fresh.snap.check_encoder(self.encoder.identity)
                    self._loaded = fresh
                cur = self._loaded
        return cur

    @property
    def snapshot(self) -> IndexSnapshot:
        return self.loaded.snap

    def recipe(self, snap: IndexSnapshot) -> TileRecipe:
        """How query images are prepared: the index's tile recipe; for an index written
        before recipes were recorded, the server's [tiling] config (said once in the log)."""
        if snap.recipe is not None:
            return snap.recipe
        if not self._recipe_notice:
            self._recipe_notice = True
            log.warning("%s records no tile recipe (written before satfind recorded it): query "
                        "images are prepared with this server's [tiling] settings", self.dir)
        return TileRecipe.from_tiling(self.config.settings.tiling.for_index(None),
                                     self.encoder.image_size, self.encoder.spec.preset)

    # --- query vectors ------------------------------------------------------------------
    def _embed_text(self, key: str) -> np.ndarray:
        # An aware prompt set names the index's tile GSD (and the configured sensor).
        templates = self.encoder.prompts.for_imagery(self.recipe(self.snapshot).target_gsd_m,
                                                     self.encoder.spec.prompt_sensor)
        with self._model_lock:
            return ensemble_text_embedding(self.encoder, key, templates)

    def text_vector(self, text: str) -> np.ndarray:
        """Prompt-ensembled embedding, cached; concurrent misses of one query embed it once."""
        key = " ".join(text.split()).lower()
        if not key:
            raise QueryError("empty text query")
        return self._texts.get(key)

    def image_vector(self, data: bytes, snap: IndexSnapshot | None = None) -> np.ndarray:
        a = self.api_settings
        recipe = self.recipe(snap or self.snapshot)
        with self._decode_slots:
            tile = decode_query_image(data, recipe, a.allowed_image_types, a.min_image_px,
                                      a.max_image_pixels)
        with self._model_lock:
            return self.encoder.encode_images(tile[None])[0]

    def _stored(self, loaded: Loaded, ids: tuple[int, ...] | list[int]) -> np.ndarray:
        arr = np.asarray([int(i) for i in ids], dtype=np.int64)
        known = loaded.tiles.has(arr)
        if not known.all():
            raise NotFound(f"unknown tile id {int(arr[~known][0])}")
        return loaded.snap.get_vectors(arr)

    def query_vector(self, q: Query, loaded: Loaded) -> np.ndarray:
        parts = [x is not None for x in (q.text, q.image, q.tile_id)]
        if sum(parts) > 1:
            raise QueryError("give one of text, image or tile id (plus optional feedback)")
        base = None
        if q.text is not None:
            base = self.text_vector(q.text)
        elif q.image is not None:
            base = self.image_vector(q.image, loaded.snap)
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

    def search_vector(self, v: np.ndarray, k: int, filters: Filters | None = None) -> tuple:
        """(ids, scores) of the k best tiles for a unit query vector: the path every query
        takes after embedding (filters, ANN or exact candidates, exact re-rank)."""
        return self._rank(self.loaded, np.asarray(v, dtype=np.float32), filters or Filters(), k)

    def _rank(self, loaded: Loaded, v: np.ndarray, filters: Filters, k: int):
        snap, s = loaded.snap, self.search_settings
        empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if snap.ntotal == 0:
            return empty
        allowed = None
        if filters.active:
            mask = loaded.tiles.mask(filters)
            kept = int(np.count_nonzero(mask))
            if kept == 0:
                return empty
            if kept <= s.exact_max_candidates and snap.vectors is not None:
                return self._exact(snap, v, np.flatnonzero(mask), k)
            allowed = mask
        depth = max(k, s.rerank_depth)
        scores, ids = snap.search(v[None], depth, nprobe=s.nprobe, allowed=allowed)
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

    def _rows(self, loaded: Loaded, ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        if len(ids) == 0:
            return []
        rows = loaded.tiles.rows(np.asarray(ids, dtype=np.int64), RESULT_COLUMNS)
        for r, sc in zip(rows, scores, strict=True):
            r["score"] = float(sc)
        return rows

    # --- beyond top-k (search.regions) ------------------------------------------------------
    def region_scores(self, q: Query, max_tiles: int):
        """(loaded, Scored): the score of every tile passing q.filters (q.k is ignored)."""
        loaded = self.loaded
        v = self.query_vector(q, loaded)
        return loaded, regions.region_scores(loaded, v, q.filters, max_tiles)

    def change(self, q: Query, before, after, fell: bool = False):
        """(loaded, [Change]): cells whose match rose (fell) most between two periods."""
        loaded = self.loaded
        v = self.query_vector(q, loaded)
        return loaded, regions.change_search(loaded, v, q.filters, before, after, q.k, fell)

    def history(self, tile_id: int, q: Query | None):
        """Every acquisition of a tile's place, with scores when a query is given."""
        loaded = self.loaded
        self._stored(loaded, [tile_id])
        v = self.query_vector(q, loaded) if q is not None else None
        return loaded, regions.place_history(loaded, int(tile_id), v)

    def where(self, tile_id: int, q: Query):
        """WhereMap: the query's patch-token similarity over one tile's pixels."""
        from PIL import Image

        from search.where import WhereMap, tile_pixels

        loaded = self.loaded
        row = self.tile(tile_id)
        v = self.query_vector(q, loaded)
        thumb = loaded.snap.thumbnail(int(tile_id))
        pixels, how = tile_pixels(row, self.recipe(loaded.snap), thumb)
        with self._model_lock:
            grid = self.encoder.similarity_map(pixels, v)
        size = Image.open(io.BytesIO(thumb)).width if thumb else self.encoder.image_size
        return WhereMap(int(tile_id), grid, row["z"], row["x"], row["y"], how, size)

    # --- lookups ------------------------------------------------------------------------
    def tile(self, tile_id: int) -> dict:
        loaded = self.loaded
        tid = np.asarray([int(tile_id)], dtype=np.int64)
        if not loaded.tiles.has(tid)[0]:
            raise NotFound(f"unknown tile id {tile_id}")
        return loaded.tiles.rows(tid, TILE_COLUMNS)[0]

    def tiles_at(self, lon: float, lat: float, filters: Filters, limit: int
                 ) -> tuple[Loaded, list[dict], int]:
        """(loaded, rows, total): the tiles whose footprint contains lon/lat and that pass
        the filters, newest acquisition first (undated last), at most `limit` of the
        `total`; rows as `tile` gives them."""
        if limit < 1:
            raise QueryError("limit must be at least 1")
        loaded = self.loaded
        ids = regions.tiles_at(loaded.tiles, float(lon), float(lat), filters)
        rows = loaded.tiles.rows(ids[:limit], TILE_COLUMNS) if len(ids) else []
        return loaded, rows, len(ids)

    def thumbnail(self, tile_id: int) -> bytes:
        self.tile(tile_id)
        jpeg = self.snapshot.thumbnail(int(tile_id))
        if jpeg is None:
            raise NotFound(f"no thumbnail for tile {tile_id}")
        return jpeg

    def stats(self) -> dict:
        loaded = self.loaded
        snap = loaded.snap
        sensors, first, last = loaded.tiles.counts()
        return {
            "tiles": snap.ntotal, "sources": len(snap.sources),
            "generation": snap.generation, "encoder": snap.identity.to_dict(),
            "index": snap.describe_index(),
            "search": {"nprobe": self.search_settings.nprobe,
                       "rerank_depth": self.search_settings.rerank_depth,
                       "exact_max_candidates": self.search_settings.exact_max_candidates},
            "sensors": sensors, "acquired_min": first, "acquired_max": last,
            "undated": loaded.tiles.undated(),
            "limits": {"max_upload_bytes": self.api_settings.max_upload_bytes,
                       "max_k": self.api_settings.max_k,
                       "max_score_tiles": self.api_settings.max_score_tiles},
        }
