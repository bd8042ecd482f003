"""GRAFT losses against values computed by hand on tiny tensors; gradients reach only the
student."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import image_level_loss, multi_positive_contrastive, pixel_level_loss


def _unit(*rows):
    t = torch.tensor(rows, dtype=torch.float64)
    return t / t.norm(dim=1, keepdim=True)


def test_image_level_by_hand_with_several_and_shared_positives():
    # 2 satellite patches, 3 photos; photo 1 lies inside both patches (shared).
    sat = _unit([1.0, 0.0], [0.0, 1.0])
    ground = _unit([1.0, 0.0], [1.0, 1.0], [0.0, 1.0])
    pos = torch.tensor([[True, True, False], [False, True, True]])
    t = 0.5
    got = image_level_loss(sat, ground, pos, temperature=t).item()
    # by hand: cosines of patch 0 with the photos = 1, 1/sqrt2, 0; patch 1: 0, 1/sqrt2, 1
    c = 1 / math.sqrt(2)
    z = math.exp(1 / t) + math.exp(c / t) + math.exp(0)
    lp = [1 / t - math.log(z), c / t - math.log(z), 0 - math.log(z)]
    # patch 0: positives photos 0 and 1 (averaged). Patch 1 is the mirror image: its cosines
    # are 0, 1/sqrt2, 1, so its positives (photos 2 and 1) have log-probs lp[0] and lp[1].
    loss0 = -(lp[0] + lp[1]) / 2
    z1 = math.exp(0) + math.exp(c / t) + math.exp(1 / t)
    loss1 = -((1 / t - math.log(z1)) + (c / t - math.log(z1))) / 2
    assert got == pytest.approx((loss0 + loss1) / 2, rel=1e-12)
    assert loss0 == pytest.approx(loss1)


def test_single_positive_is_clip_style_cross_entropy():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    g = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    pos = torch.eye(4, dtype=torch.bool)
    expect = torch.nn.functional.cross_entropy(q @ g.T / 0.1, torch.arange(4))
    assert multi_positive_contrastive(q, g, pos, 0.1).item() == pytest.approx(expect.item())


def test_pixel_level_by_hand():
    # one patch with a 2x2 token grid; photo 0 at token (0, 1), photo 1 at token (1, 0)
    tokens = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    tokens[0, 0, 1] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    tokens[0, 1, 0] = torch.tensor([0.6, 0.8], dtype=torch.float64)
    ground = _unit([1.0, 0.0], [0.0, 1.0])
    pairs = torch.tensor([[0, 0, 1, 0], [0, 1, 0, 1]])
    t = 1.0
    got = pixel_level_loss(tokens, ground, pairs, temperature=t).item()
    l0 = -(1.0 - math.log(math.exp(1.0) + math.exp(0.0)))
    l1 = -(0.8 - math.log(math.exp(0.6) + math.exp(0.8)))
    assert got == pytest.approx((l0 + l1) / 2, rel=1e-12)


def test_gradients_reach_only_the_student():
    torch.manual_seed(0)
    student = torch.nn.Linear(6, 4)
    teacher = torch.nn.Linear(6, 4)
    for p in teacher.parameters():
        p.requires_grad_(False)
    before = [p.clone() for p in teacher.parameters()]
    x_sat, x_ground = torch.randn(3, 6), torch.randn(5, 6)
    with torch.no_grad():
        ground = teacher(x_ground)
    pos = torch.zeros(3, 5, dtype=torch.bool)
    pos[0, 0] = pos[0, 1] = pos[1, 2] = pos[2, 3] = pos[2, 1] = True
    loss = image_level_loss(student(x_sat), ground, pos)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    # even a ground tensor that requires grad is detached inside the loss
    g = ground.clone().requires_grad_(True)
    image_level_loss(student(x_sat), g, pos).backward()
    assert g.grad is None


def test_rows_without_positives_are_refused():
    with pytest.raises(ValueError, match="at least one positive"):
        multi_positive_contrastive(torch.eye(2), torch.eye(2),
                                   torch.tensor([[True, False], [False, False]]), 0.1)
