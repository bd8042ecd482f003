"""The embedding job on a Ray cluster (`--runner ray`).

The driver plans exactly as with the local runner and alone writes and commits (one writer,
atomic commits). Ray tasks read tile strips on CPU workers anywhere in the cluster (each task
one reader call: `job.read_batch` tiles); a pool of encoder actors, the model loaded once per
actor (`gpus_per_actor` GPUs each where the cluster has GPUs, one CPU each otherwise),
embeds them; results come back to the driver in plan order, at most `window` units in
flight (backpressure: the driver never holds more).

Faults: a read task whose node is lost is run again elsewhere (Ray's retries and lineage);
an actor whose node is lost is restarted elsewhere and its pending calls retried. Units come
back in order and each exactly once, so a node lost mid-job costs time, never tiles or
duplicates. The driver killed: the cluster's work is dropped with it, and a rerun resumes
from the last commit like the local runner.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator

import numpy as np
import torch

from encoder.identity import EncoderIdentity, EncoderSpec
from indexer.config import JobSettings, RemoteSettings, TilingSettings
from indexer.errors import JobError
from indexer.job.read import (
    RasterPlan,
    StripBatches,
    TileBatch,
    TileDataset,
    collate,
    reader_cache,
)

INSTALL = ("--runner ray needs Ray on this machine and the cluster's: pip install "
           "'satfind[cluster]' (ray[data])")


def import_ray():
    try:
        import ray
    except ImportError:
        raise JobError(INSTALL) from None
    return ray


def read_unit(dataset: TileDataset, strips: list[int]) -> TileBatch:
    """One reader call: the strips read and collated, as a DataLoader worker would."""
    torch.set_num_threads(1)
    reader_cache(dataset.job.reader_cache_mb)
    return collate([dataset[i] for i in strips])


class EncoderActor:
    """The model, loaded once; embeds read units. Returns the unit without its pixels (the
    driver needs only the tiles' keys, thumbnails and vectors)."""

    def __init__(self, spec: EncoderSpec, threads: int):
        from encoder.model import SatelliteEncoder

        if threads:
            torch.set_num_threads(threads)
        self.encoder = SatelliteEncoder(spec)
        import ray

        self.node = ray.get_runtime_context().get_node_id()

    def identity(self) -> EncoderIdentity:
        return self.encoder.identity

    def encode(self, batch: TileBatch, batch_size: int):
        t = time.perf_counter()
        parts = [self.encoder.encode_images(batch.rgb[s:s + batch_size])
                 for s in range(0, len(batch.rgb), batch_size)]
        vectors = (np.concatenate(parts) if parts
                   else np.zeros((0, self.encoder.dim), np.float32))
        batch.rgb = torch.zeros((0, 3, 1, 1), dtype=torch.uint8)
        return batch, vectors, time.perf_counter() - t, self.node


def _last_line(e: Exception) -> str:
    """A Ray error's last line (its cause), short, with the error's type."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1][:200] if text else ''}"


@dataclasses.dataclass(frozen=True)
class RayOptions:
    address: str = ""  # "" = RAY_ADDRESS or a new local Ray; "auto"; "ray://host:10001"
    actors: int = 0  # 0 = one per gpus_per_actor GPUs in the cluster, else half its CPUs
    gpus_per_actor: float = 1.0
    window: int = 0  # units in flight; 0 = 2 per actor (at least 4)


@dataclasses.dataclass(frozen=True)
class ActorPlan:
    count: int  # encoder actors
    gpus: float  # GPUs per actor (0: CPU actors, one CPU each)
    batch_size: int  # tiles per encoder call in an actor


def actor_plan(resources: dict, options: RayOptions, job: JobSettings) -> ActorPlan:
    """How many encoder actors, on what, with which batch size, for a cluster's resources:
    GPU actors where the cluster has at least gpus_per_actor GPUs (one per gpus_per_actor
    GPUs unless `actors` says), else CPU actors (half the CPUs: the rest read); batch_size 0
    = the actors' device's (512 on a GPU), not the driver's, which may have no GPU."""
    gpus = float(resources.get("GPU", 0))
    on_gpu = gpus >= options.gpus_per_actor > 0
    count = options.actors or (int(gpus // options.gpus_per_actor) if on_gpu
                               else max(1, int(resources.get("CPU", 1)) // 2))
    batch = job.for_device("cuda" if on_gpu else "cpu").batch_size
    return ActorPlan(count, options.gpus_per_actor if on_gpu else 0.0, batch)


class RayRunner:
    def __init__(self, tiling: TilingSettings, job: JobSettings, tile_px: int,
                 spec: EncoderSpec, identity: EncoderIdentity, options: RayOptions,
                 remote: RemoteSettings | None = None):
        self.ray = import_ray()
        self.tiling, self.job, self.tile_px, self.remote = tiling, job, tile_px, remote
        self.spec, self.identity, self.options = spec, identity, options
        self.nodes: Counter[str] = Counter()  # tiles embedded per node id

    def _connect(self):
        ray = self.ray
        if not ray.is_initialized():
            address = self.options.address or os.environ.get("RAY_ADDRESS") or None
            try:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = address or "a new local Ray instance"
                raise JobError(f"--runner ray: cannot connect to {where}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                               ) from None

    def _actors(self) -> tuple[ActorPlan, list]:
        ray = self.ray
        plan = actor_plan(ray.cluster_resources(), self.options, self.job)
        spec = dataclasses.replace(self.spec, device="auto" if plan.gpus else "cpu")
        cls = ray.remote(EncoderActor).options(
            num_gpus=plan.gpus, num_cpus=0 if plan.gpus else 1,
            max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD")
        return plan, [cls.remote(spec, 0 if plan.gpus else 1) for _ in range(plan.count)]

    def _check(self, actors: list) -> None:
        """Every actor's encoder is the driver's (same satfind, same weights)."""
        try:
            got = self.ray.get([a.identity.remote() for a in actors])
        except self.ray.exceptions.RayError as e:
            raise JobError(f"--runner ray: an encoder actor could not start ({_last_line(e)})"
                           ) from None
        for ident in got:
            if ident != self.identity:
                raise JobError(f"--runner ray: an encoder actor built {ident.short()}, the "
                               f"driver {self.identity.short()}: the cluster's satfind or "
                               "weights differ from this machine's")

    def embedded(self, plans: list[RasterPlan], encoder, stages: defaultdict[str, float]
                 ) -> Iterator[tuple[TileBatch, np.ndarray]]:
        """(unit, vectors) for every read unit of the plans, in plan order. `encoder` is
        the driver's (its identity checked against every actor's); the cluster embeds."""
        dataset = TileDataset(plans, self.tile_px, self.tiling, self.job, self.remote)
        if len(dataset) == 0:
            return
        self._connect()
        ray = self.ray
        # The actors load the model while the first units are read; their identity is
        # checked before the first result is used.
        plan, actors = self._actors()
        read = ray.remote(read_unit).options(num_cpus=1, max_retries=5)
        ds = ray.put(dataset)
        size = max(plan.batch_size, self.job.read_batch)
        units = iter(StripBatches(dataset, size))
        window = self.options.window or max(4, 2 * len(actors))
        pending: deque = deque()
        submitted = 0

        def submit() -> bool:
            nonlocal submitted
            strips = next(units, None)
            if strips is None:
                return False
            actor = actors[submitted % len(actors)]
            pending.append(actor.encode.remote(read.remote(ds, strips), plan.batch_size))
            submitted += 1
            return True

        try:
            while len(pending) < window and submit():
                pass
            t = time.perf_counter()
            self._check(actors)
            stages["start encoder actors"] += time.perf_counter() - t
            while pending:
                t = time.perf_counter()
                try:
                    batch, vectors, encode_s, node = ray.get(pending.popleft())
                except ray.exceptions.RayError as e:
                    raise JobError(f"--runner ray: a unit failed on the cluster "
                                   f"({_last_line(e)})") from None
                stages["wait for the cluster"] += time.perf_counter() - t
                stages["read (worker seconds)"] += batch.read_s
                stages["encode (actor seconds)"] += encode_s
                self.nodes[node] += len(batch)
                submit()
                yield batch, vectors
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001  (already done or gone: nothing to stop)
                    pass
            for a in actors:
                ray.kill(a)

    def node_line(self) -> str:
        """Tiles per node, e.g. "nodes: 3 (a1b2c3: 4,096 tiles, ...)"."""
        parts = [f"{n[:6]}: {c:,} tiles" for n, c in self.nodes.most_common()]
        return f"nodes: {len(self.nodes)} ({', '.join(parts)})"
