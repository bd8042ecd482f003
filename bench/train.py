"""GRAFT training throughput, measured side by side in one run on the same batches:

- one optimizer step with the image-level loss only vs image + pixel level (what the
  pixel-level loss costs);
- batch assembly from the memory-mapped patches (make_batch, augmentation included) vs the
  step it feeds (whether data feeding can starve the model);
- the teacher embedding photos (a one-off per photo, cached) vs training patches;
- finding the photos inside every patch (pair building): the grid-bucketed search against
  a brute-force scan of all photos, on the same --photos synthetic photos.

    python bench/train.py --model tiny
    python bench/train.py --model vit-b-16 --batch-size 16 --steps 3

Patches and photo positions are synthetic (random pixels, 1-3 photos per patch at random
positions, a share of photos in two patches); teacher embeddings are random unit vectors.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mercantile
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from encoder.identity import EncoderSpec  # noqa: E402
from encoder.model import SatelliteEncoder  # noqa: E402
from encoder.tokens import token_grid  # noqa: E402
from training.batches import make_batch  # noqa: E402
from training.pairs import PairSet  # noqa: E402
from training.photos import Photo  # noqa: E402
from training.samples import Sample, build_samples  # noqa: E402
from training.settings import TrainSettings  # noqa: E402
from training.trainer import Trainer, param_groups  # noqa: E402

MODELS = {"tiny": "satfind-tiny", "vit-b-16": "ViT-B-16"}


def synthetic_pairs(n: int, size: int, n_photos: int, seed: int = 0) -> PairSet:
    rng = np.random.default_rng(seed)
    patches = np.lib.format.open_memmap(Path(tempfile.mkdtemp()) / "patches.npy", mode="w+",
                                        dtype=np.uint8, shape=(n, 3, size, size))
    patches[:] = rng.integers(0, 256, patches.shape, dtype=np.uint8)
    samples = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        photos = tuple(int(j) for j in rng.choice(n_photos, k, replace=False))
        samples.append(Sample(photos[0], 0.0, 0.0, 1.0, size, photos,
                              tuple(rng.uniform(0, size, k)), tuple(rng.uniform(0, size, k))))
    return PairSet([], samples, ["synthetic"] * n, np.zeros(n, dtype=bool), patches, {})


def brute_force_inside(photos: list[Photo], samples: list[Sample]) -> int:
    """The photos inside each patch by scanning every photo (what bucketing avoids)."""
    xy = np.array([mercantile.xy(p.lon, p.lat) for p in photos])
    total = 0
    for s in samples:
        cols, rows = (xy[:, 0] - s.left) / s.res, (s.top - xy[:, 1]) / s.res
        total += int(((cols >= 0) & (cols < s.size) & (rows >= 0) & (rows < s.size)).sum())
    return total


def bench_pairs(n: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.uniform([-120, -50], [120, 60], (max(1, n // 50), 2))
    pick = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.01, (n, 2))
    photos = [Photo(f"{i}.jpg", float(lat), float(lon)) for i, (lon, lat) in enumerate(pick)]
    t = time.perf_counter()
    samples = build_samples(photos, size=224, gsd_m=1.0)
    t_bucket = time.perf_counter() - t
    t = time.perf_counter()
    total = brute_force_inside(photos, samples)
    t_brute = time.perf_counter() - t
    assert total == sum(len(s.photos) for s in samples)
    print(f"pair search, {n} photos: bucketed {t_bucket:.2f} s, brute force {t_brute:.2f} s, "
          f"ratio brute / bucketed {t_brute / t_bucket:.1f}")


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed repeats of each measurement")
    p.add_argument("--photos", type=int, default=20000, help="photos for the pair search")
    args = p.parse_args()
    bench_pairs(args.photos)

    enc = SatelliteEncoder(EncoderSpec(model=MODELS[args.model], random_weights=True))
    print(f"model {enc.identity.architecture}: {enc.image_size} px, device {enc.device}, "
          f"torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    n_photos = 4 * args.batch_size
    pairs = synthetic_pairs(8 * args.batch_size, enc.image_size, n_photos)
    ground = torch.nn.functional.normalize(torch.randn(n_photos, enc.dim), dim=-1).to(enc.device)
    student = enc.model.visual
    student.requires_grad_(True).train()
    grid = token_grid(student, enc.image_size)
    logit_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), device=enc.device),
                                     requires_grad=False)
    use_amp = enc.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    base = TrainSettings(batch_size=args.batch_size, lr=1e-6, photos="-", rasters=("-",))

    def step_fn(pixel_weight: float):
        tr = dataclasses.replace(base, pixel_loss_weight=pixel_weight)
        trainer = Trainer(None, tr, progress=False)
        opt = torch.optim.AdamW(param_groups(student, tr.weight_decay), lr=tr.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        counter = iter(range(10**9))
        return lambda: trainer._step(next(counter), pairs, grid, student, ground, logit_scale,
                                     opt, sched, scaler, use_amp, amp_dtype, enc)

    rng = np.random.default_rng(0)
    idx = np.arange(args.batch_size)
    t_batch = timed(lambda: make_batch(pairs, idx, grid, rng), args.steps)
    t_img = timed(step_fn(0.0), args.steps)
    t_both = timed(step_fn(1.0), args.steps)
    enc.model.eval()
    photos = np.asarray(pairs.patches[:args.batch_size])
    t_teacher = timed(lambda: enc.encode_images(photos), args.steps)

    b = args.batch_size
    print(f"step, image loss only      {t_img * 1e3:9.1f} ms  {b / t_img:8.1f} patches/s")
    print(f"step, image + pixel loss   {t_both * 1e3:9.1f} ms  {b / t_both:8.1f} patches/s")
    print(f"batch assembly (memmap)    {t_batch * 1e3:9.1f} ms")
    print(f"teacher, one batch         {t_teacher * 1e3:9.1f} ms  {b / t_teacher:8.1f} photos/s")
    print(f"ratio pixel-loss step / image-only step: {t_both / t_img:.2f}")
    print(f"ratio batch assembly / training step:    {t_batch / t_both:.3f}")
    print(f"ratio training step / teacher forward:   {t_both / t_teacher:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
