"""encoder.precision: the weights' number type per device, the guard that bf16 / fp16
vectors agree with float32's (on the shared rasters' tiles), the batch size by device, and
the CUDA paths (bf16 ViT-B-16, torch.compile) where a GPU is visible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from encoder.identity import EncoderSpec
from encoder.model import SatelliteEncoder
from encoder.precision import agreement, weight_dtype
from indexer.config import CPU_BATCH, GPU_BATCH, JobSettings, TilingSettings, load_settings
from indexer.configfile import ConfigError
from tests.helpers import SHARED_GEOTIFF, shared_raster_tiles

CUDA = torch.cuda.is_available()
needs_shared = pytest.mark.skipif(not SHARED_GEOTIFF.is_dir(),
                                  reason="../shared/data/geotiff is absent")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def tiny(precision: str, device: str = "cpu", **kw) -> SatelliteEncoder:
    return SatelliteEncoder(EncoderSpec(model="satfind-tiny", random_weights=True,
                                        device=device, precision=precision, **kw))


def float_dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {t.dtype for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()}


def test_auto_is_float32_on_the_cpu_and_the_identity_ignores_the_type():
    auto, bf16 = tiny("auto"), tiny("bf16")
    assert auto.precision == "fp32" and float_dtypes(auto.model) == {torch.float32}
    assert bf16.precision == "bf16" and float_dtypes(bf16.model) == {torch.bfloat16}
    assert weight_dtype("auto", torch.device("cpu")) == torch.float32
    # Same weights, same embedding space: an index built on a GPU in bf16 serves fp32 queries.
    assert auto.identity == bf16.identity
    # Vectors come back as float32 whatever the weights are.
    x = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    assert bf16.encode_images(x).dtype == np.float32
    assert bf16.encode_text(["a lake"]).dtype == np.float32


def test_a_wrong_precision_is_one_config_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[encoder]\nmodel = "satfind-tiny"\nrandom_weights = true\n'
                   'precision = "half"\n')
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "encoder.precision" in msg and "'half'" in msg


def test_agreement_measures_what_it_says():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 32)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    same = agreement(ref, ref.copy())
    assert same["cos_min"] > 0.99999 and same["top10"] == 1.0
    # A perturbation of known size: cosine about 1 / sqrt(1 + 0.1^2) per vector.
    noisy = ref + 0.1 * rng.normal(size=ref.shape).astype(np.float32) / np.sqrt(32)
    got = agreement(ref, noisy)
    assert 0.99 < got["cos_mean"] < 0.999
    # Vectors of other items: the neighbours no longer agree.
    shuffled = agreement(ref, ref[rng.permutation(len(ref))])
    assert shuffled["top10"] < 0.2 and shuffled["cos_mean"] < 0.5


@needs_shared
def test_bf16_vectors_agree_with_float32_on_the_shared_rasters():
    """The guard of the fast path: mean cosine >= 0.999, min >= 0.995, top-10 neighbours over
    an index of the tiles >= 95 % the same (the small test model, on the CPU)."""
    tiles = shared_raster_tiles(64)
    assert len(tiles) >= 300
    ref, fast = tiny("fp32"), tiny("bf16")
    got = agreement(ref.encode_images(tiles), fast.encode_images(tiles))
    print(f"bf16 vs fp32 on {len(tiles)} tiles: {got}")
    assert got["cos_mean"] >= 0.999 and got["cos_min"] >= 0.995
    assert got["top10"] >= 0.95
    texts = ["a river", "a parking lot next to a highway", "forest"]
    cos = (ref.encode_text(texts) * fast.encode_text(texts)).sum(1)
    assert cos.min() >= 0.995
    # The token map (GRAFT's pixel-level head) goes through the same dtype path.
    q = ref.encode_text(["a river"])[0]
    a, b = ref.similarity_map(tiles[0], q), fast.similarity_map(tiles[0], q)
    assert a.shape == b.shape and np.abs(a - b).max() < 0.02


def test_workers_minus_one_means_by_device(monkeypatch):
    """On CUDA the readers are what feeds the GPU: one per core this process may use, but
    one (a container's share, not the host's count); on the CPU 2; a number is kept."""
    from indexer import config
    from indexer.job.runner import LocalRunner

    job = JobSettings()
    assert job.workers == -1
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _: set(range(16)))
    assert job.for_device("cuda").workers == 15
    assert job.for_device("cpu").workers == config.CPU_READERS == 2
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _: {0})
    assert job.for_device("cuda").workers == 1
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _: set(range(200)))
    assert job.for_device("cuda").workers == 64
    assert dataclasses.replace(job, workers=0).for_device("cuda").workers == 0
    assert dataclasses.replace(job, workers=5).for_device("cpu").workers == 5
    with pytest.raises(ValueError, match="for_device"):
        LocalRunner(TilingSettings(), dataclasses.replace(job, batch_size=8), 64)


def test_batch_size_zero_means_by_device(tmp_path):
    job = JobSettings()
    assert job.batch_size == 0
    assert job.for_device("cuda").batch_size == GPU_BATCH == 512
    assert job.for_device("cpu").batch_size == CPU_BATCH == 64
    assert dataclasses.replace(job, batch_size=96).for_device("cuda").batch_size == 96
    from indexer.job.pipeline import IndexJob

    settings = load_settings()
    settings = dataclasses.replace(settings, encoder=dataclasses.replace(
        settings.encoder, preset="", model="satfind-tiny", random_weights=True))
    enc = tiny("auto")
    assert IndexJob(tmp_path / "idx", settings, enc, progress=False).runner.job.batch_size \
        == CPU_BATCH


@needs_cuda
@needs_shared
def test_cuda_bf16_vit_b_16_agrees_with_float32():
    """ViT-B-16 (random weights) on the GPU: encoder.precision auto (bf16 weights) against
    float32 weights, on the shared rasters' tiles at their zoom and one finer (427 tiles
    from the six rasters; at their zoom alone, 91)."""
    tiles = shared_raster_tiles(224, finer=1)
    assert len(tiles) >= 100, len(tiles)  # top-10 neighbours over a handful mean nothing
    spec = EncoderSpec(model="ViT-B-16", random_weights=True, device="cuda")
    fast = SatelliteEncoder(spec)
    assert fast.precision in ("bf16", "fp16")
    ref = SatelliteEncoder(dataclasses.replace(spec, precision="fp32"))
    got = agreement(ref.encode_images(tiles), fast.encode_images(tiles))
    print(f"{torch.cuda.get_device_name()}: {fast.precision} vs fp32: {got}")
    assert got["cos_mean"] >= 0.999 and got["cos_min"] >= 0.995 and got["top10"] >= 0.95


@needs_cuda
def test_cuda_compiled_tower_gives_the_same_vectors():
    x = np.random.default_rng(0).integers(0, 256, (16, 3, 64, 64), dtype=np.uint8)
    plain, compiled = tiny("auto", "cuda"), tiny("auto", "cuda", compile=True)
    cos = (plain.encode_images(x) * compiled.encode_images(x)).sum(1)
    assert cos.min() >= 0.999


def test_cuda_graphs_are_off_on_the_cpu():
    enc = tiny("auto", cuda_graphs=True)
    assert enc.graphs is None  # a CPU encoder: nothing to capture
    x = np.random.default_rng(1).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8)
    np.testing.assert_array_equal(enc.encode_images(x), tiny("auto").encode_images(x))


@needs_cuda
def test_cuda_graphs_give_the_plain_paths_vectors_and_keep_queued_batches_apart():
    """A shape is captured at its second call; replays give the plain path's vectors, also
    for two batches queued before either is waited for (one graph, one output buffer); new
    weights (set_precision) get new graphs."""
    rng = np.random.default_rng(2)
    xs = [rng.integers(0, 256, (16, 3, 64, 64), dtype=np.uint8) for _ in range(4)]
    plain, graphed = tiny("auto", "cuda"), tiny("auto", "cuda", cuda_graphs=True)
    want = [plain.encode_images(x) for x in xs]
    assert graphed.graphs.shapes == 0
    first = graphed.encode_images(xs[0])  # seen once: the plain path
    assert graphed.graphs.shapes == 0
    queued = [graphed.encode_images_later(x) for x in xs]  # captured, then replayed
    assert graphed.graphs.shapes == 1 and not graphed.graphs.failed
    for got, w in zip([first, *(q() for q in queued)], [want[0], *want], strict=True):
        assert (got * w).sum(1).min() >= 0.9999
    odd = rng.integers(0, 256, (5, 3, 64, 64), dtype=np.uint8)  # once: never captured
    assert (graphed.encode_images(odd) * plain.encode_images(odd)).sum(1).min() >= 0.9999
    assert graphed.graphs.shapes == 1
    graphed.set_precision("fp32")
    assert graphed.graphs.shapes == 0
