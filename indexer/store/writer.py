"""`IndexWriter`: the store's write API. Sources are begun, get tiles added, are finished or
removed; each `commit()` makes everything so far visible atomically (the manifest rename).
One writer at a time (an advisory lock); readers never lock."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from encoder.identity import EncoderIdentity
from indexer import logs
from indexer.config import StoreSettings, TileRecipe
from indexer.critical import deferred_interrupts
from indexer.errors import IndexError_
from indexer.store import ann, directory
from indexer.store.cells import exact_cell_bounds
from indexer.store.layout import FORMAT_VERSION, THUMBS_DIR, TILES_DIR, VECTORS_F16, fsync_dir
from indexer.store.manifest import Manifest, SourceEntry, now, read_manifest, write_manifest
from indexer.store.parts import (
    ROW_SCHEMA,
    check_cells,
    new_tables,
    rows_table,
    source_tiles,
    without_source,
    write_part,
)
from indexer.store.training import BackgroundTraining, TrainingPlan
from indexer.store.vector_index import CoarseKMeans, VectorIndex
from indexer.store.vectors import RowFileWriter, open_rows


def warm_up() -> None:
    """Pay pyarrow's one-time cost of converting Python values (datetimes with a time zone,
    a table from dicts): the first conversion imports pandas (0.2-0.4 s). The indexing job
    calls this on a thread of its own while it hashes the rasters, so that its first commit
    does not stall the readers for it."""
    new_tables(0, rows_table([]), [])


def tile_rows(z: np.ndarray, x: np.ndarray, y: np.ndarray, nodata_fraction: np.ndarray,
              source: np.ndarray, per_source: dict[str, list]) -> pa.Table:
    """Rows for `IndexWriter.add`, built column-wise: tiles' cells z/x/y (their bounds are
    computed here, bit for bit mercantile's), nodata fractions, and `source` [T] indexing
    the lists of `per_source` (source, source_key, acquired, sensor, gsd_m, native_gsd_m:
    one value per source, not per tile)."""
    west, south, east, north = exact_cell_bounds(z, x, y)
    at = pa.array(np.asarray(source, dtype=np.int64))
    cols = {name: pa.array(values, ROW_SCHEMA.field(name).type).take(at)
            for name, values in per_source.items()}
    return pa.table({
        "z": np.asarray(z).astype(np.int8), "x": np.asarray(x).astype(np.int32),
        "y": np.asarray(y).astype(np.int32),
        "west": west, "south": south, "east": east, "north": north, **cols,
        "nodata_fraction": np.asarray(nodata_fraction, dtype=np.float32)},
        schema=ROW_SCHEMA)


class IndexWriter:
    def __init__(self, index_dir: str | Path, identity: EncoderIdentity,
                 settings: StoreSettings, recipe: TileRecipe | None = None,
                 create: bool = True, background_training: bool = False,
                 kmeans: CoarseKMeans | None = None):
        """`recipe`: how the tiles to be added were cut; an index cut another way is
        refused (None: no tiles will be added, e.g. only removals).
        `background_training`: a commit that makes the ANN due for (re-)training starts it
        on a thread of its own (store/training.py) and later commits go on without it, until
        one finds it done and takes the result; `commit(wait_for_training=True)` waits for
        it. Off: the commit trains (the writer is busy meanwhile).
        `kmeans`: the IVF's k-means, and the lists of the vectors every commit encodes, done
        there (the job's `job.kmeans_on`: the encoder's GPU); None: by FAISS on the CPU."""
        if str(index_dir).strip() == "":
            raise IndexError_("the index directory is empty: give a path (e.g. --index idx)")
        self.dir = Path(index_dir)
        self.settings = settings
        self.background_training = background_training
        self._kmeans = kmeans
        self._trainer: BackgroundTraining | None = None
        self.training_s = 0.0  # seconds the ANN's training took (on its own thread or not)
        directory.check_directory(self.dir, create)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = directory.WriterLock(self.dir)
        try:
            directory.check_directory(self.dir, create)  # again, now that no writer can act
            self._open(identity, recipe)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, identity: EncoderIdentity, recipe: TileRecipe | None) -> None:
        m = read_manifest(self.dir)
        self._created = m is None
        if m is None:
            # The manifest comes first: from here on the directory is provably an index, and
            # only then are its sub-folders created.
            m = Manifest(encoder=identity, dim=identity.embed_dim, recipe=recipe,
                         vectors_f16=VECTORS_F16 if self.settings.keep_float16 else None)
            write_manifest(self.dir, m)
        _check_same_space(self.dir, m, identity, recipe)
        (self.dir / TILES_DIR).mkdir(exist_ok=True)
        (self.dir / THUMBS_DIR).mkdir(exist_ok=True)
        self.m = m
        self.dim = m.dim
        self._plan = TrainingPlan(self.settings, self.dim)  # the run's size: expect()
        self._recipe = recipe
        try:
            self.index = ann.load(self.dir, m)
        except FileNotFoundError as e:
            raise IndexError_(f"{self.dir}: {Path(str(e)).name}, named by the manifest, is "
                              "missing") from None
        self._vectors = None
        if m.vectors_f16:
            self._vectors = RowFileWriter(self.dir / m.vectors_f16, self.dim, m.next_id)
        self._ann = ann.AnnFiles(self.dir, m)
        directory.clean_garbage(self.dir, m)
        # Each entry is one add(): (rows, float32 vectors, thumbnails), appended in one step.
        self._buf: list[tuple[pa.Table, np.ndarray, list[bytes]]] = []
        self._dead: list[np.ndarray] = []  # ids removed since the last commit
        # A new index commits even when empty; an old-format one is converted at once.
        self._dirty = m.generation == 0 or m.version < FORMAT_VERSION

    # --- what is already there -------------------------------------------------------------
    @property
    def sources(self) -> Mapping[str, SourceEntry]:
        """Every source of the index, as of the last change (read-only)."""
        return MappingProxyType(self.m.sources)

    def find_sources(self, target: str) -> list[str]:
        """Keys of the sources named by `target`: a source key, a raster path or a URL (as
        stored: without its query string)."""
        path = target if "://" in target else str(Path(target).resolve())
        return [k for k, e in self.m.sources.items() if k == target or e.path == path]

    def committed_tiles(self, key: str) -> set[tuple[int, int, int]]:
        """(z, x, y) of tiles of source `key` in committed parts."""
        return source_tiles(self.dir, self.m, key)

    @property
    def pending(self) -> int:
        return sum(rows.num_rows for rows, _, _ in self._buf)

    def expect(self, more: int) -> None:
        """This run will add about `more` tiles to what the index holds and buffers: the
        ANN's (re-)training plans for the size the run ends at (training.TrainingPlan)."""
        self._plan = TrainingPlan(self.settings, self.dim,
                                  self.index.ntotal + self.pending + max(0, int(more)))

    @property
    def generation(self) -> int:
        return self.m.generation

    # --- changes (visible at the next commit) ------------------------------------------------
    def begin(self, key: str, entry: SourceEntry) -> None:
        """Record a source whose tiles are being added ("partial" until `finish`)."""
        self.m.sources[key] = dataclasses.replace(entry, status="partial")
        self._dirty = True

    def progress(self, key: str, through: int) -> None:
        """The first `through` tiles of source `key`, in the job's read order, went through
        (added, or skipped as nodata): recorded with the next commit, so a resumed run
        reads none of them again."""
        self.m.sources[key] = dataclasses.replace(self.m.sources[key], through=through)
        self._dirty = True

    def finish(self, key: str, tiles: int, skipped_nodata: int) -> None:
        """Every tile of source `key` went through: it is complete."""
        self.m.sources[key] = dataclasses.replace(self.m.sources[key], status="complete",
                                                  tiles=tiles, skipped_nodata=skipped_nodata)
        self._dirty = True

    def add(self, rows: list[dict] | pa.Table, vectors: np.ndarray, thumbs: list[bytes]
            ) -> None:
        """Tiles to commit: their rows (every column of the tile table but `id`: one dict
        per tile, or a table, as the job builds them column-wise), vectors and JPEGs."""
        if not (len(rows) == len(vectors) == len(thumbs)):
            raise ValueError("rows, vectors and thumbs must have the same length")
        if len(rows) == 0:
            return
        if vectors.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim}-d vectors, got {vectors.shape[1]}")
        table = rows_table(rows)
        check_cells(table)
        # One list append: an interrupt leaves the batch either wholly in or wholly out.
        self._buf.append((table, np.asarray(vectors, dtype=np.float32), list(thumbs)))
        self._dirty = True

    def remove(self, key: str) -> int:
        """Drop a source and every tile of it (buffered and committed); returns tiles removed.
        New parts are written first; the in-memory state changes in one uninterruptible step."""
        buf, removed = [], 0
        for rows, vecs, thumbs in self._buf:
            keep = np.flatnonzero(pc.not_equal(rows["source_key"], key).to_numpy())
            removed += rows.num_rows - len(keep)
            if len(keep):
                buf.append((rows.take(keep), vecs[keep], [thumbs[i] for i in keep]))
        new_parts, ids = without_source(self.dir, self.m, key)
        with deferred_interrupts():
            self._buf = buf
            if ids is not None:
                self.index.remove(ids)
                self._dead.append(ids)
                removed += len(ids)
                self.m.parts = new_parts
            if self.m.sources.pop(key, None) is not None or removed:
                self._dirty = True
        return removed

    def commit(self, wait_for_training: bool = False) -> int:
        """Make everything added/removed so far durable and visible; returns the generation.
        Writes only what changed: new rows of the float16 and code files, new tombstones, new
        parts (and, when the ANN is (re-)trained, its new template and codes).
        `wait_for_training`: a training running in the background is waited for and taken
        by this commit (and one due now is done here, not started in the background).

        Exception-safe: everything is prepared on a copy of the manifest; the manifest rename
        and the switch of the in-memory state happen together, with interrupts deferred. If
        anything fails before that, the writer is exactly as before the call (a retry commits
        the same tiles under the same ids) and the directory holds the previous commit."""
        if self._trainer is not None and (wait_for_training or self._trainer.done()):
            self._trainer.wait()
            self._dirty = True  # the trained index is a change to commit
        if not self._dirty:
            return self.m.generation
        new = self.m.copy()
        new.generation += 1
        index, added = self.index, None
        previous = (self.m.index.file, self.m.index.codes)
        try:
            if new.version < FORMAT_VERSION:
                index = self._convert(new)
            if self._dead:
                self._ann.delete(new, np.concatenate(self._dead))
            if self._buf:
                added = (index, *self._append(new, index))
            index, trained = self._maybe_train_ivf(index, new, wait_for_training)
            new.index.ntotal = index.ntotal
            new.updated = now()
            if new.recipe is None and self._recipe is not None and new.next_id:
                new.recipe = self._recipe  # an index from before recipes: record it now
            # New part files' directory entries must be durable before the manifest names them.
            fsync_dir(self.dir)
            fsync_dir(self.dir / TILES_DIR)
            fsync_dir(self.dir / THUMBS_DIR)
            with deferred_interrupts():
                write_manifest(self.dir, new)
                self.m, self.index, self._buf, self._dead = new, index, [], []
                self._dirty, added = False, None
                if trained:
                    self.training_s += self._trainer.seconds if self._trainer else 0.0
                    self._trainer = None
        finally:
            if added is not None and added[0] is self.index:  # roll back to the last commit
                with deferred_interrupts():
                    self.index.remove_range(*added[1:])
        # Keep the previous generation's files for readers that just read the old manifest.
        self._ann.forget_unnamed(new)
        directory.drop_old_index_files(self.dir, {new.index.file, new.index.codes,
                                                  *previous})
        if (self.background_training and self._trainer is None
                and self._trains(new.index, self.index.ntotal)):
            self._trainer = self._start_training()
        return new.generation

    def _append(self, new: Manifest, index: VectorIndex) -> tuple[int, int]:
        """Write the buffered tiles as a new part of `new` (their float16 rows and ANN
        codes too), add them to the in-memory index; returns the id range added."""
        rows = pa.concat_tables([b[0] for b in self._buf])
        vecs = np.concatenate([b[1] for b in self._buf])
        thumbs = [t for b in self._buf for t in b[2]]
        first = new.next_id
        if self._vectors is not None:
            self._vectors.write_at(first, vecs.astype(np.float16))
        if self._kmeans is not None:  # an IVF loaded from disk: its lists computed there too
            index.assign_with(self._kmeans)
        codes = self._ann.append(new, index, first, vecs)
        tiles, thumb_table = new_tables(first, rows, thumbs)
        new.parts.append(write_part(self.dir, new, tiles, thumb_table))
        new.next_id = first + len(vecs)
        with deferred_interrupts():
            index.add_codes(codes, np.arange(first, first + len(vecs), dtype=np.int64))
            return first, first + len(vecs)

    def _convert(self, new: Manifest) -> VectorIndex:
        """An index of format 1 (one whole FAISS file) as format 2: its codes, taken from
        the index as it is (nothing re-encoded), and tombstones for ids it no longer holds."""
        ids, codes = self.index.export_codes()
        live = np.zeros(new.next_id, dtype=bool)
        live[ids] = True
        by_id = np.zeros((new.next_id, self.index.code_size), dtype=np.uint8)
        by_id[ids] = codes
        self._ann.delete(new, np.flatnonzero(~live).astype(np.int64))
        empty = VectorIndex.flat(self.dim) if self.index.is_flat else self.index.emptied()
        new.index.file = new.index.codes = None
        index = self._ann.rewrite(new, empty, lambda lo, hi: (by_id[lo:hi], live[lo:hi]))
        new.version = FORMAT_VERSION
        return index

    def training_due(self) -> bool:
        """Would the next commit train (or re-train) the ANN? (An estimate from the sizes:
        the commit itself decides.)"""
        return self._trains(self.m.index, self.index.ntotal + self.pending)

    def _trains(self, info, n: int) -> bool:
        """Whether an index of `n` vectors, its ANN as `info` says, is due for (re-)training
        (re-training needs the float16 copies): training.TrainingPlan.due."""
        return self._plan.due(info.factory == "Flat", info.trained_at or n, n,
                              retrain=self._vectors is not None)

    def _maybe_train_ivf(self, index: VectorIndex, m: Manifest, wait: bool
                         ) -> tuple[VectorIndex, bool]:
        """The index to commit: `index`, or an IVF-PQ trained from it (recorded in m, with
        its template and codes written): trained here, or taken from the background training
        once it is done. Second: whether it was (re-)trained."""
        info, st = m.index, self.settings
        n = index.ntotal
        flat = info.factory == "Flat"
        if self._trainer is not None:
            if not self._trainer.done():
                return index, False
            try:
                empty, params, codes = self._trainer.result()
            except BaseException:
                self._trainer = None  # the next commit that finds training due starts again
                raise
            trained_at = self._trainer.n
        elif not self._trains(info, n):
            if flat:
                info.chosen = (f"auto: Flat (exact) while below store.ivf_min_vectors = "
                               f"{st.ivf_min_vectors}")
            return index, False
        elif self.background_training and not wait:  # started once this commit is made
            if flat:
                info.chosen = (f"auto: Flat (exact) until the IVF-PQ being trained from {n} "
                               "vectors is ready")
            return index, False
        held = index.ids()
        vectors = self._vectors_by_id(index, m, held)
        if self._trainer is None:  # trained here
            t = time.perf_counter()
            trained_at = self._plan.target(n)
            empty, params = VectorIndex.train_ivfpq(
                vectors(self._training_sample(held, trained_at)), trained_at, st,
                self._kmeans)
            self.training_s += time.perf_counter() - t
            codes = np.zeros((0, empty.code_size), dtype=np.uint8)
        if note := VectorIndex.training_note(params):
            logs.note(note)
        if trained_at > n:  # made for the size the run brings the index to (`expect`)
            why = (f"this run brings the index past store.ivf_min_vectors = "
                   f"{st.ivf_min_vectors}" if flat else
                   "re-trained: for the size this run brings the index to")
        else:
            why = (f"store.ivf_min_vectors = {st.ivf_min_vectors}" if flat else
                   f"re-trained: grew {st.retrain_growth:g}x past the last training")
        for k, v in params.items():
            setattr(info, k, v)
        info.chosen = f"auto: IVF-PQ trained for {trained_at} vectors ({why})"
        live = np.zeros(m.next_id, dtype=bool)
        live[held] = True

        def codes_of(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
            """Codes of ids lo..hi-1: those the training thread encoded, the rest now."""
            known = codes[lo:hi]
            if len(known) < hi - lo:
                known = np.concatenate([known, empty.encode(vectors(np.arange(
                    lo + len(known), hi)))])
            return known, live[lo:hi]

        return self._ann.rewrite(m, empty, codes_of), True

    def _vectors_by_id(self, index: VectorIndex, m: Manifest, held: np.ndarray):
        """vectors(ids) -> float32 rows: from the float16 copies (row = id), or, for a Flat
        index without them, from the Flat index itself (`held`: its ids())."""
        if self._vectors is not None:
            f16 = open_rows(self._vectors.path, m.next_id, self.dim)
            return lambda ids: np.asarray(f16[ids], dtype=np.float32)
        exact = self._exact_by_id(index, m, held)
        return lambda ids: exact[ids]

    def _exact_by_id(self, index: VectorIndex, m: Manifest, held: np.ndarray) -> np.ndarray:
        """A Flat index's vectors as float32 rows, row = id (zeros for removed ids);
        `held`: its ids(), the order exact_vectors() gives them in."""
        exact = np.zeros((m.next_id, self.dim), dtype=np.float32)
        exact[held] = index.exact_vectors()
        return exact

    def _training_sample(self, held: np.ndarray, target: int) -> np.ndarray:
        """The ids to train an ANN for `target` vectors on: a seeded random sample of the
        live ids `held`, sorted."""
        live_ids = np.sort(held)
        n = len(live_ids)
        size = min(n, VectorIndex.training_size(target, self.dim, self.settings))
        rng = np.random.default_rng(1234)
        return np.sort(rng.choice(live_ids, size, replace=False)) if size < n else live_ids

    def _start_training(self) -> BackgroundTraining:
        """Training of the committed index on a thread of its own (see training.py)."""
        held = self.index.ids()
        target = self._plan.target(self.index.ntotal)
        sample = self._training_sample(held, target)
        if self._vectors is None:  # a Flat index without float16 copies: its vectors now
            exact = self._exact_by_id(self.index, self.m, held)
            return BackgroundTraining(exact[sample], target, self.settings,
                                      rows=lambda: self.m.next_id, exact=exact,
                                      kmeans=self._kmeans)
        vectors = self._vectors_by_id(self.index, self.m, held)
        return BackgroundTraining(vectors(sample), target, self.settings,
                                  rows=lambda: self.m.next_id, source=self._vectors.path,
                                  kmeans=self._kmeans)

    def close(self) -> None:
        if self._trainer is not None:  # not taken by a commit: the next run trains again
            self._trainer.stop()
        if self._vectors is not None:
            self._vectors.close()
        self._ann.close()
        if self._created and self.m.generation == 0:
            directory.uncreate(self.dir, self.m)
        self._lock.release()

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def recorded_recipe(index_dir: Path) -> tuple[bool, TileRecipe | None]:
    """(whether `index_dir` holds an index, the tile recipe it records: None for an index
    written before recipes were). A directory that is not an index reads as none here; the
    writer says what is wrong with it when it opens it."""
    try:
        m = read_manifest(index_dir)
    except IndexError_:
        return False, None
    return m is not None, m.recipe if m is not None else None


def _check_same_space(d: Path, m: Manifest, identity: EncoderIdentity,
                      recipe: TileRecipe | None) -> None:
    """Tiles of one index come from one encoder and one tile recipe."""
    if m.encoder != identity:
        raise IndexError_(
            f"{d}: index was built with encoder {m.encoder.short()}, this config gives "
            f"{identity.short()}; use the same encoder"
            f"{f' (--encoder {m.encoder.preset})' if m.encoder.preset else ''} or a new "
            "--index directory")
    if recipe is not None and m.recipe is not None and m.recipe != recipe:
        diff = "; ".join(m.recipe.differences(recipe))
        raise IndexError_(f"{d}: index tiles were cut with another tile recipe ({diff}); "
                          "use the index's [tiling] settings or a new --index directory")
