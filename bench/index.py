"""Indexing throughput: the full job (discover, read, warp, tile, encode, store) against
the encoder alone on pre-loaded tiles, on the same tiles in one run. The ratio says
whether reading or the model is the limit.

    python bench/index.py --model tiny             # small test model: read-bound
    python bench/index.py --model vit-b-16 --tiles 96   # ViT-B-16, random weights: compute-bound
    python bench/index.py --model null --tiles 3000     # no model: the pipeline's ceiling
    python bench/index.py ... --timeline    # when the encoder's device was idle, and why
    python bench/index.py ... --profile 20  # torch.profiler's table over 20 encoder calls

The same file runs against an older checkout too (copy it there), for side-by-side
numbers of the code before a change (see BENCHMARKS.md).

Tiles come from a synthetic 5 m GeoTIFF in UTM (generated, --tiles of them), read exactly
as the job reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from encoder.identity import EncoderSpec  # noqa: E402
from encoder.model import SatelliteEncoder  # noqa: E402
from indexer.config import load_settings  # noqa: E402
from indexer.job.pipeline import IndexJob  # noqa: E402
from indexer.job.read import RasterPlan, TileDataset  # noqa: E402
from indexer.rasters.grid import choose_zoom, raster_blocks  # noqa: E402
from indexer.rasters.inspect import inspect_raster  # noqa: E402
from indexer.rasters.sources import RasterSource  # noqa: E402
from tests.helpers import OFFLINE_CONFIG, make_raster  # noqa: E402

MODELS = {
    "tiny": EncoderSpec(model="satfind-tiny", random_weights=True),
    "vit-b-16": EncoderSpec(model="ViT-B-16", random_weights=True),
    "null": None,
}


class NullEncoder:
    """Stands in for the model at no cost (unit vectors from a fixed random bank): the job's
    tiles/s with it is the pipeline's ceiling (read, transfer, write, commit)."""

    def __init__(self, image_size: int = 224, dim: int = 512):
        from encoder.identity import EncoderIdentity

        self.image_size, self.dim = image_size, dim
        self.spec = EncoderSpec(model="null", random_weights=True)
        self.identity = EncoderIdentity("null", "0" * 64, "0" * 64, dim, image_size)
        self.device = torch.device("cpu")
        bank = np.random.default_rng(0).normal(size=(4096, dim)).astype(np.float32)
        self._bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
        self._next = 0

    def encode_images(self, images) -> np.ndarray:
        n = len(images)
        rows = (np.arange(self._next, self._next + n)) % len(self._bank)
        self._next += n
        return self._bank[rows]


def noise(side: int) -> np.ndarray:
    """Random pixels [3, side, side], drawn as uint8 (make_raster's default draws int64
    first: ~4x the time, 8x the memory, at 1.7 GB of pixels)."""
    return np.random.default_rng(1).integers(1, 255, size=(3, side, side), dtype=np.uint8)


# --layout: how the raster is stored. "strips": bench/index.py's (uncompressed, a row per
# strip); the others tiled 512 x 512 as a COG is, compressed as archives often are.
LAYOUTS = {"strips": {}, "tiled": {"tiled": True, "blockxsize": 512, "blockysize": 512},
           "deflate": {"tiled": True, "blockxsize": 512, "blockysize": 512,
                       "compress": "deflate", "predictor": 2},
           "jpeg": {"tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "jpeg",
                    "photometric": "ycbcr", "jpeg_quality": 90}}


def scene_raster(path: Path, tiles: int, px: int, keep: bool, pixels=noise,
                 **creation) -> Path:
    """A 5 m UTM GeoTIFF at `path` that yields about `tiles` tiles of `px` pixels, of
    `pixels(side)`; `keep`: one already there of that size is used as it is. `creation`:
    GDAL creation options (tiling, compression)."""
    tile_m = 6.9 * px  # tile width at zoom 16, 43.5 N
    side = int(math.sqrt(tiles) * tile_m / 5.0)
    if not (keep and path.exists() and _width(path) == side):
        make_raster(path, size=side, res=5.0, data=pixels(side), **creation)
    return path


def _width(path: Path) -> int:
    import rasterio

    with rasterio.open(path) as src:
        return src.width


def gpu_sampler(device: torch.device):
    """Samples the GPU's utilisation (nvml) every 0.2 s until the returned function is
    called; it returns "mean N % (M samples)" or why there is none."""
    if device.type != "cuda":
        return lambda: "no GPU"
    import threading

    samples: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.2):
            try:
                samples.append(torch.cuda.utilization())
            except Exception:  # noqa: BLE001  (pynvml missing)
                return

    t = threading.Thread(target=poll, daemon=True)
    t.start()

    def done() -> str:
        stop.set()
        t.join()
        if not samples:
            return "not available (nvml)"
        return f"mean {np.mean(samples):.0f} % ({len(samples)} samples)"

    return done


def ray_vs_local(args, settings, enc, archive: Path, work: Path, total: int,
                 first_local: float) -> None:
    """The same job through the Ray runner (a local Ray of workers + actors CPUs: the
    local runner's reader processes, plus the actors in place of the main thread's encoding),
    alternated with the local runner: ray, local, ray."""
    import ray

    ray.init(num_cpus=args.workers + args.actors, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    on_ray = dataclasses.replace(settings, job=dataclasses.replace(
        settings.job, runner="ray", actors=args.actors))
    rates = {"local": [first_local], "ray": []}
    starts = []
    for i, (name, s) in enumerate([("ray", on_ray), ("local", settings), ("ray", on_ray)]):
        t0 = time.perf_counter()
        rep = IndexJob(work / f"idx-{i}", s, enc, progress=False).run([str(archive)])
        rates[name].append(rep.tiles_written / (time.perf_counter() - t0))
        assert rep.tiles_written + rep.tiles_nodata == total, (rep, total)
        if name == "ray":
            starts.append(rep.stages["start encoder actors"])
    ray.shutdown()
    local, on = np.mean(rates["local"]), np.mean(rates["ray"])
    print(f"\nRay runner ({args.workers} reader CPUs + {args.actors} actor(s)) vs local "
          f"runner ({args.workers} workers), alternated:")
    print(f"  local: {', '.join(f'{r:.1f}' for r in rates['local'])} tiles/s")
    print(f"  ray:   {', '.join(f'{r:.1f}' for r in rates['ray'])} tiles/s (actors started in "
          f"{', '.join(f'{t:.1f}' for t in starts)} s, counted)")
    print(f"  ray / local = {on / local:.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--tiles", type=int, default=2000, help="about this many tiles")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=0, help="0 = the config's (by device)")
    p.add_argument("--commit-every", type=int, default=2048, help="as index_config.toml")
    p.add_argument("--read-batch", type=int, default=0, help="tiles per reader call; "
                   "0 = the config's")
    p.add_argument("--sample", type=int, default=2048, help="tiles read in one process for "
                   "the per-reader rate and the encoder-only input (cycled)")
    p.add_argument("--copies", type=int, default=1, help="index the raster under this many "
                   "names (hard links: separate sources, same pixels), for a longer job")
    p.add_argument("--runner", choices=("local", "ray"), default="local",
                   help="ray: also the Ray runner on a local Ray with workers + actors CPUs, "
                   "alternated with the local runner (run it under `unshare --net`)")
    p.add_argument("--actors", type=int, default=1, help="Ray encoder actors (--runner ray)")
    p.add_argument("--ivf-at", type=int, default=0, help="store.ivf_min_vectors (0: the "
                   "config's; with --model null: never, random vectors stay Flat)")
    p.add_argument("--train-in-commit", action="store_true",
                   help="train the IVF-PQ inside the commit that makes it due (the writer "
                   "waits for it), not on a thread of its own as the job does")
    p.add_argument("--warp", choices=("auto", "fast", "gdal"), default="auto",
                   help="tiling.warp (auto: fast for a new index)")
    p.add_argument("--warp-on", choices=("auto", "device", "readers"), nargs="+",
                   default=["auto"], help="job.warp_on: where the fast warp resamples plain "
                   "tiles (several: each, alternated, as --rounds says)")
    p.add_argument("--ramp-rounds", type=int, nargs="+", default=[-1], help="read.RAMP_ROUNDS: "
                   "the readers' first calls smaller (0: none, as before; -1: the code's)")
    p.add_argument("--hash-while-reading", choices=("auto", "yes", "no"), nargs="+",
                   default=["auto"],
                   help="job.hash_while_reading: new rasters hashed while read, or before")
    p.add_argument("--fixed-batches", choices=("yes", "no"), nargs="+", default=["yes"],
                   help="on CUDA: the GPU gets chunks of exactly the batch size (yes, the "
                   "runner's FixedBatches) or each batch as the readers made it (no: before)")
    p.add_argument("--device-thumbnails", choices=("yes", "no"), nargs="+", default=["yes"],
                   help="job.thumbnails_on with the warp on the device: the deferred tiles' "
                   "thumbnails resampled there and JPEG-encoded on the job's threads (yes: "
                   "device) or made by the readers (no: readers)")
    p.add_argument("--warp-stream", choices=("config", "beside", "inline"), nargs="+",
                   default=["config"], help="device_warp.WARP_BESIDE: the device's warp on the "
                   "copy stream beside the encoding (beside) or on the encoder's stream "
                   "(inline); config: as the code has it")
    p.add_argument("--kmeans-on", choices=("config", "auto", "device", "faiss"), nargs="+",
                   default=["config"], help="job.kmeans_on: the IVF's k-means and the "
                   "vectors' lists on the encoder's device or by FAISS (config: as the "
                   "config file says)")
    p.add_argument("--cuda-graphs", choices=("config", "yes", "no"), nargs="+",
                   default=["config"], help="encoder.cuda_graphs for the encoder alone and "
                   "the job (config: as the config file says)")
    p.add_argument("--writer-depth", type=int, nargs="+", default=[0], help="batches queued "
                   "for the writer thread (pipeline.WRITER_DEPTH; 0: the code's)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="strips",
                   help="how the synthetic raster is stored (LAYOUTS: strips, as every "
                   "GPU run so far; tiled, deflate or jpeg as COGs are)")
    p.add_argument("--keep-raster", action="store_true", help="reuse the synthetic raster "
                   "of an earlier run in --out if it has the size asked for")
    p.add_argument("--rounds", type=int, default=1, help="run the job this many times; with "
                   "several values of --ramp-rounds / --hash-while-reading, every combination "
                   "once per round, alternated, on the same raster and encoder")
    p.add_argument("--timeline", action="store_true", help="where the encoder's device "
                   "spent the job's time, batch by batch (bench/timeline.py; local runner)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="torch.profiler "
                   "over N encoder calls after the first 20: the table of where the time went")
    p.add_argument("--trace", default="", help="with --profile: a Chrome trace file too")
    p.add_argument("--out", default="/tmp/satfind-bench-index")
    args = p.parse_args()
    if (args.timeline or args.profile) and args.runner != "local":
        p.error("--timeline, --profile: the local runner only")
    if args.runner == "ray" and args.model == "null":
        p.error("--runner ray: the actors build the encoder from its spec; use --model tiny")
    work = Path(args.out)
    if args.keep_raster:  # the indexes and links go; the raster stays if it fits (below)
        for old in [*work.glob("idx*"), *work.glob("archive/*.tif")]:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    base = load_settings(OFFLINE_CONFIG)
    spec = dataclasses.replace(MODELS[args.model] or base.encoder, device="auto")
    t0 = time.perf_counter()
    enc = NullEncoder() if args.model == "null" else SatelliteEncoder(spec)
    print(f"model {args.model}: {enc.image_size} px input, {enc.dim}-d, device {enc.device}, "
          f"built in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    job = dataclasses.replace(base.job, workers=args.workers, commit_every=args.commit_every,
                              batch_size=args.batch_size or base.job.batch_size)
    if hasattr(job, "for_device"):  # batch_size 0 = by device (older checkouts: a number)
        job = job.for_device(enc.device.type)
    if args.read_batch and hasattr(job, "read_batch"):  # older checkouts have none
        job = dataclasses.replace(job, read_batch=args.read_batch)
    settings = dataclasses.replace(base, encoder=spec, job=job)
    if hasattr(settings.tiling, "warp"):  # older checkouts warp with GDAL only
        settings = dataclasses.replace(settings, tiling=dataclasses.replace(
            settings.tiling, warp=args.warp))
        print(f"tiling.warp {args.warp} ({settings.tiling.resolved_warp()})")
    if args.train_in_commit:
        import indexer.job.pipeline as pipeline

        background = pipeline.IndexWriter

        def in_commit(*a, **k):
            return background(*a, **{**k, "background_training": False})

        pipeline.IndexWriter = in_commit
    if args.model == "null" or args.ivf_at:
        settings = dataclasses.replace(settings, store=dataclasses.replace(
            settings.store, ivf_min_vectors=args.ivf_at or 10**9))  # null: keep it Flat

    stored = scene_raster(work / "rasters" / f"scene-{args.layout}.tif", args.tiles,
                          enc.image_size, args.keep_raster, **LAYOUTS[args.layout])
    raster = work / "archive" / "scene.tif"  # a link: the archive holds only this run's
    raster.parent.mkdir(exist_ok=True)
    os.link(stored, raster)
    info = inspect_raster(RasterSource(str(raster)), settings.discovery, settings.tiling)
    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, enc.image_size, settings.tiling)
    plans = [RasterPlan(info, block, 0) for block in raster_blocks(info, zoom)]
    ds = TileDataset(plans, enc.image_size, settings.tiling, settings.job)
    # Reading in one process (the per-reader rate) and the encoder-only input: the first
    # --sample tiles in plan order, read here.
    t0 = time.perf_counter()
    strips, tiles = [], 0
    for i in range(len(ds)):
        strips.append(ds[i])
        tiles += 1 if isinstance(strips[-1]["x"], int) else len(strips[-1]["x"])
        if tiles >= args.sample:
            break
    read_s = time.perf_counter() - t0
    if isinstance(strips[0]["x"], int):  # the code before strips (--baseline runs)
        batch = np.stack([s["rgb"] for s in strips if s["rgb"] is not None])
    else:
        # A strip's tiles (now: all of them, `has` saying which are kept; older checkouts:
        # the kept ones only).
        batch = np.concatenate([s["rgb"][s["has"]] if len(s["rgb"]) == len(s["has"])
                                else s["rgb"] for s in strips if s["rgb"] is not None])
    if not len(batch):
        sys.exit(f"the first {tiles} tiles read (--sample) have no pixels to encode (nodata): "
                 "raise --sample")
    total = sum(p.block.count for p in plans)
    per_worker = tiles / read_s
    print(f"{total} tiles at zoom {zoom}; reading + warping + thumbnails in one process "
          f"({tiles} tiles): {per_worker:.1f} tiles/s")

    bs = settings.job.batch_size
    pixels = torch.from_numpy(batch)
    if enc.device.type == "cuda":
        pixels = pixels.pin_memory()  # as the job's readers hand them over
    graphs = {}  # encoder-only tiles/s per --cuda-graphs choice
    for g in dict.fromkeys(args.cuda_graphs):
        with_graphs(enc, g)
        graphs[g] = encoder_rate(enc, pixels, bs, min(total, 20 * args.sample))
        print(f"encoder only, cuda graphs {g}: {graphs[g]:,.1f} tiles/s")
    for i in range(1, args.copies):
        os.link(raster, raster.with_name(f"scene-{i}.tif"))
    total *= args.copies
    variants = [dict(warp_on=w, ramp=r, hash=h, fixed=f, thumbs=t, graphs=g, depth=d,
                     kmeans=k, stream=ws)
                for w in args.warp_on for r in args.ramp_rounds
                for h in args.hash_while_reading for f in args.fixed_batches
                for t in args.device_thumbnails
                for g in args.cuda_graphs for d in args.writer_depth
                for k in args.kmeans_on for ws in args.warp_stream]
    rows = []
    for round_ in range(args.rounds):
        for n, v in enumerate(variants):
            label = ", ".join(f"{k} {x}" for k, x in v.items())
            print(f"\n=== round {round_ + 1}, job {n + 1}: {label}")
            with_graphs(enc, v["graphs"])
            row = one_job(args, settings, enc, v, raster.parent, work / f"idx-{round_}-{n}",
                          total, graphs[v["graphs"]], bs)
            rows.append((round_ + 1, label, row))
    if len(rows) > 1:
        print("\nthe jobs side by side (full / encoder: against the encoder alone with the "
              "same cuda graphs choice: " + ", ".join(f"{g} {r:,.0f}" for g, r in graphs.items())
              + " tiles/s):")
        keys = ["tiles/s", "full / encoder", "wall s", "readers CPU ms", "job process CPU ms",
                "plan", "start readers", "first tiles",
                "wait tiles", "warp", "encode", "last commit", "idle", "before", "after",
                "stream / encoder"]
        print("| round | job | " + " | ".join(keys) + " |")
        print("|---" * (len(keys) + 2) + "|")
        for round_, label, row in rows:
            print(f"| {round_} | {label} | " + " | ".join(
                "-" if row.get(k) is None else f"{row[k]:,.2f}" if k != "tiles/s"
                else f"{row[k]:,.0f}" for k in keys) + " |")
    return 0


def with_graphs(enc, choice: str) -> None:
    """encoder.cuda_graphs on or off on a built encoder (CUDA; "config": as built)."""
    if choice == "config" or getattr(enc.device, "type", "cpu") != "cuda":
        return
    if not hasattr(enc, "set_cuda_graphs"):
        sys.exit("--cuda-graphs: this checkout's encoder has no CUDA graphs")
    enc.set_cuda_graphs(choice == "yes")


def encoder_rate(enc, pixels: torch.Tensor, bs: int, tiles: int) -> float:
    """tiles/s of the encoder alone on pre-loaded tiles, at most `tiles` or 10 s: on CUDA
    with one batch queued ahead, as the job's runner encodes (older checkouts and the CPU:
    each batch waited for)."""
    enc.encode_images(pixels[: min(bs, len(pixels))])  # warm-up (and CUDA graphs: 2 calls)
    enc.encode_images(pixels[: min(bs, len(pixels))])
    later = getattr(enc, "encode_images_later", None) if enc.device.type == "cuda" else None
    pending = None
    t0, n_enc = time.perf_counter(), 0
    while n_enc < tiles and time.perf_counter() - t0 < 10:
        for s in range(0, len(pixels), bs):
            if later is None:
                enc.encode_images(pixels[s:s + bs])
                continue
            ahead = later(pixels[s:s + bs])
            if pending is not None:
                pending()
            pending = ahead
        n_enc += len(pixels)
    if pending is not None:
        pending()
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    return n_enc / (time.perf_counter() - t0)


def one_job(args, settings, enc, variant: dict, archive: Path, idx: Path, total: int,
            enc_rate: float, bs: int) -> dict:
    """One run of the job over `archive` into a new index `idx` with the variant's
    job.warp_on, job.hash_while_reading, job.thumbnails_on, read.RAMP_ROUNDS,
    runner.FIXED_BATCHES, pipeline.WRITER_DEPTH, and device_warp.WARP_BESIDE
    (the module constants put back after it;
    an older checkout without one runs as it is); prints what it measured and returns the
    numbers for the side-by-side table."""
    from bench.timeline import _replace

    job = settings.job
    if hasattr(job, "warp_on"):  # older checkouts warp in the readers only
        job = dataclasses.replace(job, warp_on=variant["warp_on"])
    if hasattr(job, "hash_while_reading"):  # older checkouts hash before reading
        job = dataclasses.replace(job, hash_while_reading=variant["hash"])
    if hasattr(job, "thumbnails_on"):  # older checkouts make every thumbnail in the readers
        job = dataclasses.replace(job, thumbnails_on="device" if variant["thumbs"] == "yes"
                                  else "readers")
    if hasattr(job, "kmeans_on") and variant["kmeans"] != "config":
        job = dataclasses.replace(job, kmeans_on=variant["kmeans"])
    settings = dataclasses.replace(settings, job=job)
    import indexer.job.device_warp as warp_module
    import indexer.job.pipeline as pipeline_module
    import indexer.job.read as read_module
    import indexer.job.runner as runner_module

    constants = [(read_module, "RAMP_ROUNDS", variant["ramp"], variant["ramp"] >= 0),
                 (runner_module, "FIXED_BATCHES", variant["fixed"] == "yes", True),
                 (pipeline_module, "WRITER_DEPTH", variant["depth"], variant["depth"] > 0),
                 (warp_module, "WARP_BESIDE", variant["stream"] == "beside",
                  variant["stream"] != "config")]
    undo = [_replace(module, name, value) for module, name, value, given in constants
            if given and hasattr(module, name)]
    try:
        return _one_job(args, settings, enc, archive, idx, total, enc_rate, bs)
    finally:
        for put_back in reversed(undo):
            put_back()


def _one_job(args, settings, enc, archive: Path, idx: Path, total: int, enc_rate: float,
             bs: int) -> dict:
    busy = gpu_sampler(enc.device)
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the job's reader processes
    s0 = resource.getrusage(resource.RUSAGE_SELF)  # this one: the job's own threads
    index_job = IndexJob(idx, settings, enc, progress=False)
    where = getattr(index_job.runner, "warp_device", None)
    print(f"the fast warp's plain tiles resampled on: {where or 'the readers'}")
    timeline = None
    if args.timeline:
        from bench.timeline import Timeline, format_summary, summarise

        timeline = Timeline(enc).install()
    profile = None
    if args.profile:
        from bench.timeline import Profile

        profile = Profile(enc, batches=args.profile, trace=args.trace).install()
    report = index_job.run([str(archive)])
    job_s = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1 = resource.getrusage(resource.RUSAGE_SELF)
    gpu_busy = busy()
    job_rate = report.tiles_written / job_s
    assert report.tiles_written + report.tiles_nodata == total, (report, total)
    print(f"\n{'path':<44} {'tiles/s':>9}")
    print(f"{'encoder only (pre-loaded uint8 tiles)':<44} {enc_rate:>9.1f}")
    print(f"{'full job (read, warp, tile, encode, store)':<44} {job_rate:>9.1f}")
    print(f"full job / encoder only = {job_rate / enc_rate:.2f} "
          f"(workers={args.workers}, batch={bs}, {os.cpu_count()} CPUs)")
    done = report.tiles_written + report.tiles_nodata
    own = (s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime) / done * 1e3
    readers = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / done * 1e3
    print(f"the job's process (main, writer, pin, JPEG, training, hashing threads): {own:.2f} "
          "ms of CPU per tile")
    if args.runner == "local" and args.workers:
        print(f"reader processes, all together: user {r1.ru_utime - r0.ru_utime:.2f} s, "
              f"system {r1.ru_stime - r0.ru_stime:.2f} s "
              f"({(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / done * 1e3:.2f} "
              f"ms per tile), {(r1.ru_minflt - r0.ru_minflt) / done:.0f} page faults per tile")
    st = dict(getattr(report, "stages", {}))
    if args.runner == "ray":
        ray_vs_local(args, settings, enc, archive, idx.parent, total, job_rate)
    row = {"tiles/s": job_rate, "full / encoder": job_rate / enc_rate, "wall s": job_s,
           "readers CPU ms": readers if args.runner == "local" else None,
           "job process CPU ms": own}
    if not st:  # the code before per-stage times (--baseline runs)
        return row
    print("\nwhere the time went (s): " + ", ".join(f"{k} {v:.2f}" for k, v in st.items()))
    print(f"job wall time {job_s:.2f} s; the encoder was busy {st.get('encode', 0) / job_s:.0%} "
          "of it (on CUDA: the GPU's busy share, encode_images waits for its results)")
    if enc.device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}; utilisation during the job (nvml, every "
              f"0.2 s): {gpu_busy}")
    if profile is not None:
        profile.uninstall()
        print(profile.table())
    if timeline is not None:
        timeline.uninstall()
        s = summarise(timeline.host, timeline.device_spans(), (t0, t0 + job_s))
        print(format_summary(s, timeline.clock.cuda))
        if s["batches"]:
            # The tiles over the time from the GPU's first work to its last, against the
            # encoder alone: the job without its fixed start (plan, readers, first chunk)
            # and end (last batches written, last commit), which a longer job spreads.
            stream = report.tiles_written / s["span"] / enc_rate
            print(f"between its first and last work: {report.tiles_written / s['span']:,.0f} "
                  f"tiles/s = {stream:.2f} of the encoder alone")
            row.update(idle=s["idle"], before=s["before"], after=s["after"])
            row["stream / encoder"] = stream
    # What one process of each kind costs per tile, and the ceiling with more cores: W
    # reader processes at the measured per-process rate, one main thread and one writer
    # thread at their measured costs per tile (each a limit of its own).
    tiles_done = report.tiles_written + report.tiles_nodata
    worker_per_tile = st.get("read (worker seconds)", 0.0) / tiles_done
    writer_per_tile = st.get("write + commit (writer thread)", 0.0) / tiles_done
    writer_cpu = st.get("writer thread's CPU (in write + commit)", 0.0) / tiles_done
    plan_s = st.get("plan (main thread)", 0.0)  # once per run (older checkouts: in main)
    main_busy = (job_s - plan_s - st.get("wait for tiles", 0.0)
                 - st.get("wait for the writer", 0.0))
    main_per_tile = main_busy / tiles_done
    print(f"per tile: reader process {worker_per_tile * 1e3:.2f} ms, main thread (encode, "
          f"setup{'' if plan_s else ', plan'}) {main_per_tile * 1e3:.3f} ms, writer thread "
          f"{writer_per_tile * 1e3:.3f} ms (its CPU {writer_cpu * 1e3:.3f})"
          + (f"; once per run: plan {plan_s:.2f} s (discovery, hashing)" if plan_s else ""))
    for cores in (16,):
        w = cores - 1
        ceiling = min(w / worker_per_tile, 1 / main_per_tile, 1 / writer_per_tile)
        print(f"extrapolated ceiling on {cores} cores ({w} readers): {ceiling:,.0f} tiles/s "
              f"(readers {w / worker_per_tile:,.0f}, main {1 / main_per_tile:,.0f}, writer "
              f"{1 / writer_per_tile:,.0f})")
    row.update({"plan": plan_s, "first tiles": st.get("first tiles (in wait for tiles)"),
                "start readers": st.get("start the readers (in first tiles)"),
                "wait tiles": st.get("wait for tiles"), "warp": st.get("warp on the device"),
                "encode": st.get("encode"), "last commit": st.get("last commit")})
    return row


if __name__ == "__main__":
    sys.exit(main())
