"""The encoder alone: tiles/s of each precision path / batch size / torch.compile setting,
side by side in one run, on the device the run has; with the card, the FLOPs per tile, the
card's measured bf16 matmul rate and the share of it each path reaches, which attention
kernels ran, and (--agree) how closely each path's vectors agree with float32's.

    python bench/encoder.py --model vit-b-16                       # CUDA: the paths below
    python bench/encoder.py --model vit-b-16 --paths fp32 bf16 --tiles 32 --batch-sizes 16
    python bench/encoder.py --model vit-b-16 --agree tiles.npz     # + agreement on real tiles

Paths: `amp` = float32 weights under bf16 autocast (what SatelliteEncoder did on CUDA before
encoder.precision); `fp32`, `bf16`, `fp16` = the weights in that type (`auto` picks bf16 on
CUDA, fp32 on CPU); `+compile` = the same with encoder.compile (torch.compile of the image
tower; its first call, the compile, is timed apart); `+graphs` = with encoder.cuda_graphs
(each batch shape captured as a CUDA graph at its second call, untimed); `+sdpa` = with
nn.MultiheadAttention's inference fast path off (attention through
F.scaled_dot_product_attention instead).
Tiles are uint8 [3, 224, 224] in page-locked host memory, as the job hands them over
(`host`: each batch waited for before the next; `host, 1 ahead`: the next batch queued
before the last one is waited for, as the job's runner does on CUDA), and already on the
device (`device`), normalised there by SatelliteEncoder.prepare either way.

--agree NPZ: uint8 tile arrays (any names, each [N, 3, H, W]; e.g. made by
`python bench/encoder.py --save-tiles tiles.npz` beside ../shared/data) encoded by each path
and compared with fp32 (encoder.precision.agreement: mean / min cosine, top-10 overlap).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from encoder.identity import EncoderSpec  # noqa: E402
from encoder.model import SatelliteEncoder  # noqa: E402
from encoder.precision import agreement  # noqa: E402

MODELS = {"tiny": "satfind-tiny", "vit-b-16": "ViT-B-16"}


def build(model: str, path: str) -> SatelliteEncoder:
    precision, _, option = path.partition("+")
    # +sdpa: nn.MultiheadAttention's inference fast path off, so attention goes through
    # F.scaled_dot_product_attention (the fast path has its own fused kernel).
    torch.backends.mha.set_fastpath_enabled(option != "sdpa")
    spec = EncoderSpec(model=MODELS[model], random_weights=True, device="auto",
                       precision="fp32" if precision == "amp" else precision,
                       compile=option == "compile", cuda_graphs=option == "graphs")
    enc = SatelliteEncoder(spec)
    if precision == "amp":  # the code before encoder.precision: fp32 weights, bf16 autocast
        plain = enc.model.encode_image

        def amp(x):
            with enc.autocast():
                return plain(x)

        enc._encode_image = amp
    return enc


def sync(enc) -> None:
    if enc.device.type == "cuda":
        torch.cuda.synchronize()


def rate(enc, batch: torch.Tensor, seconds: float, max_batches: int) -> float:
    """tiles/s of encode_images on `batch` (vectors back on the host, as the job gets them)."""
    enc.encode_images(batch)
    sync(enc)
    n, t0 = 0, time.perf_counter()
    for _ in range(max_batches):
        enc.encode_images(batch)
        n += 1
        if time.perf_counter() - t0 > seconds:
            break
    sync(enc)
    return n * len(batch) / (time.perf_counter() - t0)


def rate_in_flight(enc, batch: torch.Tensor, seconds: float, max_batches: int) -> float:
    """tiles/s with one batch always queued ahead (encode_images_later, as the job's runner
    does on CUDA): batch i+1 is started before batch i's vectors are waited for."""
    enc.encode_images(batch)
    sync(enc)
    n, t0 = 0, time.perf_counter()
    pending = enc.encode_images_later(batch)
    for _ in range(max_batches):
        ahead = enc.encode_images_later(batch)
        pending()
        pending, n = ahead, n + 1
        if time.perf_counter() - t0 > seconds:
            break
    pending()
    return (n + 1) * len(batch) / (time.perf_counter() - t0)


def flops_per_tile(enc) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, 3, enc.image_size, enc.image_size), device=enc.device, dtype=enc.dtype)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        enc.model.encode_image(x)
    return float(fc.get_total_flops())


def matmul_peak(device: torch.device) -> float:
    """Measured bf16 matmul FLOP/s (8192^3, mean of 10 after 3 warm-ups); CPU: 2048^3 fp32."""
    n, dt, reps = (8192, torch.bfloat16, 10) if device.type == "cuda" else (1024, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def attention_kernels(enc, batch: torch.Tensor) -> list[str]:
    """Names of the attention / softmax kernels (CUDA) or ops (CPU) one encode runs."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if enc.device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        enc.encode_images(batch[:8])
        sync(enc)
    keys = ("flash", "fmha", "attention", "softmax", "sdp")
    names = {e.name for e in prof.events() if any(k in e.name.lower() for k in keys)}
    return sorted(n[:90] for n in names)


def save_tiles(out: Path, px: int) -> None:
    """The shared rasters' tiles at `px` and the EuroSAT images (64 px), as uint8 arrays."""
    from PIL import Image

    from tests.helpers import SHARED_DATA, shared_raster_tiles

    rasters = shared_raster_tiles(px)
    euro = [np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1)
            for p in sorted((SHARED_DATA / "eurosat").glob("*/*.jpg"))]
    np.savez_compressed(out, rasters=rasters, eurosat=np.stack(euro))
    print(f"{out}: {len(rasters)} raster tiles at {px} px, {len(euro)} EuroSAT images, "
          f"{out.stat().st_size / 2**20:.1f} MiB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="vit-b-16")
    p.add_argument("--paths", nargs="+", default=None,
                   help="default: amp fp32 bf16 fp16 bf16+compile on CUDA, fp32 bf16 on CPU")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="default: 256 512 on CUDA, 16 on CPU")
    p.add_argument("--seconds", type=float, default=4.0, help="timed per setting")
    p.add_argument("--max-batches", type=int, default=200)
    p.add_argument("--agree", type=Path, help="npz of uint8 tile arrays to compare paths on")
    p.add_argument("--save-tiles", type=Path, help="write the --agree file and exit")
    args = p.parse_args()
    if args.save_tiles:
        save_tiles(args.save_tiles, 224 if args.model == "vit-b-16" else 64)
        return 0
    cuda = torch.cuda.is_available()
    paths = args.paths or (["amp", "fp32", "bf16", "fp16", "bf16+compile"] if cuda
                           else ["fp32", "bf16"])
    sizes = args.batch_sizes or ([256, 512] if cuda else [16])
    device = torch.device("cuda" if cuda else "cpu")
    card = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{card}; torch {torch.__version__}; model {args.model} (random weights)")
    peak = matmul_peak(device)
    print(f"measured matmul rate: {peak / 1e12:.2f} TFLOP/s "
          f"({'bf16 8192^3' if cuda else 'fp32 1024^3'})")
    tiles = {}
    if args.agree:
        with np.load(args.agree) as z:
            tiles = {k: z[k] for k in z.files}
    vectors: dict[str, np.ndarray] = {}
    rows = []
    flops = None
    for path in paths:
        t0 = time.perf_counter()
        enc = build(args.model, path)
        built = time.perf_counter() - t0
        if flops is None:
            flops = flops_per_tile(enc)
            print(f"{flops / 1e9:.1f} GFLOP per {enc.image_size} px tile (FlopCounterMode)")
        px = enc.image_size
        big = torch.from_numpy(np.random.default_rng(0).integers(
            0, 256, (max(sizes), 3, px, px), dtype=np.uint8))
        host = big.pin_memory() if cuda else big
        t0 = time.perf_counter()
        enc.encode_images(host[:sizes[0]])  # the first call: compiles under +compile
        sync(enc)
        first = time.perf_counter() - t0
        for bs in sizes:
            r_host = rate(enc, host[:bs], args.seconds, args.max_batches)
            r_ahead = rate_in_flight(enc, host[:bs], args.seconds, args.max_batches)
            r_dev = rate(enc, host[:bs].to(device), args.seconds, args.max_batches) if cuda \
                else float("nan")
            rows.append((path, bs, r_host, r_ahead, r_dev, r_ahead * flops / peak, built,
                         first))
            print(f"  {path:<14} batch {bs:>4}: {r_host:>9.1f} tiles/s from host, "
                  f"{r_ahead:>9.1f} with one batch queued ahead, {r_dev:>9.1f} on device; "
                  f"{r_ahead * flops / peak:.0%} of the matmul rate", flush=True)
        if "compile" not in path:
            print(f"  attention in {path}: {', '.join(attention_kernels(enc, host)) or '-'}")
        if tiles and "compile" not in path:  # compiling each tile-array shape: minutes
            vectors[path] = np.concatenate([
                np.concatenate([enc.encode_images(a[s:s + sizes[0]])
                                for s in range(0, len(a), sizes[0])])
                for a in tiles.values()])
        del enc
        if cuda:
            torch.cuda.empty_cache()
    print(f"\n{'path':<14} {'batch':>5} {'tiles/s host':>13} {'host, 1 ahead':>14} "
          f"{'tiles/s device':>15} {'of matmul':>9} {'build s':>8} {'1st call s':>10}")
    for path, bs, rh, ra, rd, frac, built, first in rows:
        print(f"{path:<14} {bs:>5} {rh:>13.1f} {ra:>14.1f} {rd:>15.1f} {frac:>9.0%} "
              f"{built:>8.1f} {first:>10.2f}")
    base = {(r[0], r[1]): r[2] for r in rows}
    ref = "amp" if "amp" in paths else paths[0]
    for path, bs, rh, ra, *_ in rows:
        print(f"{path} at batch {bs}: one batch ahead / waiting for each = {ra / rh:.2f}x")
        if path != ref and (ref, bs) in base:
            print(f"{path} / {ref} at batch {bs}: {rh / base[(ref, bs)]:.2f}x")
    if tiles and "fp32" in vectors:
        n = {k: len(v) for k, v in tiles.items()}
        print(f"\nagreement with fp32 on {n} tiles (encoder.precision.agreement):")
        for path, v in vectors.items():
            if path != "fp32":
                a = agreement(vectors["fp32"], v)
                print(f"  {path:<14} " + ", ".join(f"{k} {x:.5f}" for k, x in a.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
