"""The fused per-channel loss sums against the plain formulas they replace: values, gradients, blocks, extremes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mass_nn.training import channel_statistics as statistics_module
from mass_nn.training import losses
from mass_nn.training.channel_statistics import channel_statistics


def _plain_statistics(logits: torch.Tensor, target: torch.Tensor):
    """tp, fp, fn, mean BCE per channel with autograd over the textbook formulas (the code before the fusion)."""
    p, t = torch.sigmoid(logits).flatten(2), target.flatten(2)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(-1)
    return (p * t).sum(-1), (p * (1 - t)).sum(-1), ((1 - p) * t).sum(-1), bce


def _plain_segmentation_loss(logits, target, weights):
    """Adaptive Tversky + BCE as they were computed before channel_statistics: FP and FN as their own sums."""
    p, t = torch.sigmoid(logits).flatten(2), target.flatten(2)
    tp, fp, fn = (p * t).sum(-1), (p * (1 - t)).sum(-1), ((1 - p) * t).sum(-1)
    errors = fp + fn
    alpha = torch.where(errors > 0, fp / torch.where(errors > 0, errors, torch.ones_like(errors)),
                        torch.full_like(errors, 0.5)).clamp(0.2, 0.8)
    tversky = 1 - tp / (tp + alpha * fp + (1 - alpha) * fn + 1e-6)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(-1)
    return ((tversky * weights).sum() + (bce * weights).sum()) / weights.sum()


def _inputs(shape, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(shape, generator=generator, dtype=dtype)).requires_grad_()
    target = (torch.rand(shape, generator=generator) > 0.7).to(dtype)
    return logits, target


def test_values_and_gradients_equal_the_plain_formulas_in_float64():
    logits, target = _inputs((2, 3, 5, 6, 7))
    upstream = [torch.randn(2, 3, dtype=torch.float64) for _ in range(4)]
    fused = channel_statistics(logits, target)
    plain = _plain_statistics(logits, target)
    for a, e in zip(fused, plain):
        assert torch.allclose(a, e, rtol=1e-12, atol=1e-12)
    (fused_grad,) = torch.autograd.grad(sum((f * u).sum() for f, u in zip(fused, upstream)), logits)
    (plain_grad,) = torch.autograd.grad(sum((e * u).sum() for e, u in zip(plain, upstream)), logits)
    assert torch.allclose(fused_grad, plain_grad, rtol=1e-12, atol=1e-14)


def test_gradcheck():
    logits, target = _inputs((1, 2, 3, 4, 2))
    assert torch.autograd.gradcheck(lambda x: channel_statistics(x, target), (logits,))


def test_blocks_with_a_remainder_give_the_same_sums(monkeypatch):
    logits, target = _inputs((3, 5, 4, 4, 4))
    whole = channel_statistics(logits, target)
    (whole_grad,) = torch.autograd.grad(sum(s.sum() for s in whole), logits)
    # 64 voxels x 8 bytes per row: 2 rows per block, so 15 rows make 7 full blocks and one of a single row
    monkeypatch.setattr(statistics_module, "BLOCK_BYTES", 2 * 64 * 8)
    assert len(statistics_module._row_blocks(logits.detach().reshape(15, -1))) == 8
    blocked = channel_statistics(logits, target)
    (blocked_grad,) = torch.autograd.grad(sum(s.sum() for s in blocked), logits)
    for a, e in zip(blocked, whole):
        assert torch.allclose(a, e, rtol=1e-13)
    assert torch.allclose(blocked_grad, whole_grad, rtol=1e-13)


def test_extreme_logits_keep_the_cross_entropy_finite_and_exact_in_float32():
    logits = torch.tensor([-200.0, -40.0, -17.0, -1e-3, 0.0, 1e-3, 17.0, 40.0, 200.0]).view(1, 1, 9).repeat(1, 2, 1)
    target = torch.tensor([[0.0] * 9, [1.0] * 9]).view(1, 2, 9)
    logits.requires_grad_()
    fused = channel_statistics(logits, target)[3]
    expected = F.binary_cross_entropy_with_logits(logits.double(), target.double(), reduction="none").mean(-1)
    assert torch.isfinite(fused).all()
    assert torch.allclose(fused.double(), expected, rtol=1e-6)
    (grad,) = torch.autograd.grad(fused.sum(), logits)
    assert torch.isfinite(grad).all()


def _loss_inputs(dtype):
    logits, target = _inputs((2, 4, 8, 8, 8), dtype=dtype, seed=3)
    target[0, 2] = 0  # an empty channel: loss 1, gradient only from BCE
    weights = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]], dtype=dtype)
    return logits, target, weights


def test_tversky_from_the_fused_sums_equals_the_plain_loss_in_float64():
    logits, target, weights = _loss_inputs(torch.float64)
    expected = _plain_segmentation_loss(logits, target, weights)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    tp, fp, fn, bce = channel_statistics(logits, target)
    tversky = losses._tversky(tp, fp, fn, losses.TVERSKY_EPS)
    actual = ((tversky * weights).sum() + (bce * weights).sum()) / weights.sum()
    (actual_grad,) = torch.autograd.grad(actual, logits)
    assert actual.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.allclose(actual_grad, expected_grad, rtol=1e-10, atol=1e-15)


def test_segmentation_loss_in_float32_equals_the_loss_before_the_fusion():
    logits, target, weights = _loss_inputs(torch.float32)
    expected = _plain_segmentation_loss(logits.double(), target.double(), weights.double())
    (expected_grad,) = torch.autograd.grad(expected, logits)
    actual, _ = losses.SegmentationLoss()(logits, target, weights)
    (actual_grad,) = torch.autograd.grad(actual, logits)
    assert actual.item() == pytest.approx(expected.item(), rel=1e-5)
    scale = float(expected_grad.abs().max())
    assert float((actual_grad.double() - expected_grad).abs().max()) <= 1e-4 * scale


def test_a_nearly_perfect_prediction_keeps_the_loss_accurate_in_float32():
    # logits of +-8 around the target: FP and FN are about 1e-3 of TP, where sum p - TP would cancel (3e-3 error)
    generator = torch.Generator().manual_seed(5)
    target = (torch.rand(2, 3, 40, 40, 40, generator=generator) < 0.3).float()
    logits = ((2 * target - 1) * 8 + 0.5 * torch.randn(target.shape, generator=generator)).requires_grad_()
    weights = torch.ones(2, 3)
    expected_logits = logits.detach().double().requires_grad_()
    expected = _plain_segmentation_loss(expected_logits, target.double(), weights.double())
    (expected_grad,) = torch.autograd.grad(expected, expected_logits)
    actual, _ = losses.SegmentationLoss()(logits, target, weights)
    (actual_grad,) = torch.autograd.grad(actual, logits)
    assert actual.item() == pytest.approx(expected.item(), rel=2e-5)
    assert float((actual_grad.double() - expected_grad).norm() / expected_grad.norm()) < 2e-4
