"""Training batches: augmentation keeps photos at their pixels, shared photos are one
column, the sample stream is reproducible, the learning-rate schedule."""

from __future__ import annotations

import numpy as np
import pytest

from training.batches import dihedral, make_batch, micro_batch_indices
from training.optim import lr_factor
from training.pairs import PairSet
from training.samples import Sample


@pytest.mark.parametrize("k", range(8))
def test_dihedral_moves_positions_with_pixels(k):
    patch = np.zeros((3, 64, 64), dtype=np.uint8)
    rows, cols = np.array([5.5, 40.2]), np.array([50.7, 3.1])
    patch[0, 5, 50] = 255
    patch[1, 40, 3] = 255
    out, r, c = dihedral(patch, rows, cols, k)
    assert out[0, int(r[0]), int(c[0])] == 255 and out[1, int(r[1]), int(c[1])] == 255
    assert out[0].sum() == 255 and out[1].sum() == 255


def _pairs():
    # Photo 1 lies in both patches; photos 0 and 2 in one each.
    s0 = Sample(0, 0.0, 0.0, 1.0, 64, (0, 1), (10.0, 60.0), (10.0, 2.0))
    s1 = Sample(2, 0.0, 0.0, 1.0, 64, (1, 2), (3.0, 33.0), (40.0, 17.0))
    patches = np.zeros((2, 3, 64, 64), dtype=np.uint8)
    return PairSet([], [s0, s1], ["r", "r"], np.array([False, False]), patches, {})


def test_shared_photo_is_one_column_positive_for_both():
    b = make_batch(_pairs(), np.array([0, 1]), grid=4, rng=None)
    assert b.photos.tolist() == [0, 1, 2]
    assert b.positives.tolist() == [[True, True, False], [False, True, True]]
    # token = floor(pixel / 16) on a 4 x 4 grid of a 64 px patch
    assert b.pixel_pairs.tolist() == [[0, 0, 0, 0], [0, 3, 0, 1], [1, 0, 2, 1], [1, 2, 1, 2]]


def test_sample_stream_is_reproducible_and_covers_each_epoch():
    idx = np.arange(10, 20)
    a = [micro_batch_indices(idx, 4, seed=3, micro=m) for m in range(5)]
    b = [micro_batch_indices(idx, 4, seed=3, micro=m) for m in range(5)]
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    flat = np.concatenate(a)
    assert sorted(flat[:10]) == list(range(10, 20))  # first epoch: each sample once
    assert sorted(flat[10:20]) == list(range(10, 20))
    assert not (micro_batch_indices(idx, 4, seed=4, micro=0) == a[0]).all()


def test_warmup_then_cosine():
    assert lr_factor(0, 10, 110) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110) == pytest.approx(0.5)
    assert lr_factor(110, 10, 110) == pytest.approx(0.0)


def test_mixed_precision_step_runs_and_updates_only_the_student():
    """The autocast path of a training step (bf16 here, on the CPU; CUDA uses the same code
    with bf16, or fp16 with gradient scaling)."""
    import copy

    import torch

    from encoder.identity import EncoderSpec
    from encoder.model import SatelliteEncoder
    from encoder.tokens import token_grid
    from training.optim import param_groups
    from training.settings import TrainSettings
    from training.trainer import Trainer

    enc = SatelliteEncoder(EncoderSpec(model="satfind-tiny", random_weights=True, device="cpu"))
    rng = np.random.default_rng(0)
    samples = [Sample(i % 6, 0.0, 0.0, 1.0, 64, (i % 6, (i + 1) % 6),
                      tuple(rng.uniform(0, 64, 2)), tuple(rng.uniform(0, 64, 2)))
               for i in range(12)]
    pairs = PairSet([], samples, ["r"] * 12, np.zeros(12, dtype=bool),
                    rng.integers(0, 256, (12, 3, 64, 64), dtype=np.uint8), {})
    ground = torch.nn.functional.normalize(torch.randn(6, enc.dim), dim=-1)
    teacher_before = copy.deepcopy(enc.model.state_dict())
    student = copy.deepcopy(enc.model.visual).requires_grad_(True).train()
    enc.model.requires_grad_(False)
    before = copy.deepcopy(student.state_dict())
    tr = TrainSettings(photos="-", rasters=("-",), batch_size=6, grad_accum=2, lr=1e-3)
    opt = torch.optim.AdamW(param_groups(student, tr.weight_decay), lr=tr.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07)), requires_grad=False)
    m = Trainer(None, tr, progress=False)._step(0, pairs, token_grid(student, 64), student,
                                                ground, scale, opt, sched, scaler, True,
                                                torch.bfloat16, enc)
    assert np.isfinite(m["loss"]) and m["loss"] > 0 and 0 <= m["acc"] <= 1
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert "proj" in changed and "conv1.weight" in changed
    for k, v in enc.model.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


def test_validation_is_held_out_by_map_blocks():
    from training.pairs import spatial_split

    rng = np.random.default_rng(1)
    # 400 patches of 64 px at 10 m scattered over 20 x 20 km.
    corners = rng.uniform(0, 20_000, (400, 2))
    samples = [Sample(i, float(x), float(y), 10.0, 64, (i,), (1.0,), (1.0,))
               for i, (x, y) in enumerate(corners)]
    val = spatial_split(samples, 0.1, seed=0)
    assert 40 <= val.sum() <= 80
    width = 64 * 10.0 * 4
    centre = corners + [320.0, -320.0]
    blocks = [set(map(tuple, np.floor(centre[m] / width).astype(int))) for m in (val, ~val)]
    assert not blocks[0] & blocks[1]  # no block has both validation and training patches
    assert (spatial_split(samples, 0.1, seed=0) == val).all()
    # Everything in one block: single samples instead, never all of them.
    one = spatial_split(samples[:5], 0.5, seed=0)
    assert 1 <= one.sum() <= 4
