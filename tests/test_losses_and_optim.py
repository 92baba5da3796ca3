"""Pretraining losses (adaptive Tversky, soft Dice, BCE, channel weighting) and optimisation (LAMB, lr schedules,
EMA): values against hand computations and exact resumption from state dicts."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from mass_nn.training.losses import SegmentationLoss, adaptive_tversky_loss, bce_loss, soft_dice_loss
from mass_nn.training.optim.ema import ModelEMA
from mass_nn.training.optim.lamb import Lamb
from mass_nn.training.optim.schedules import build_lr_scheduler


def _weights_only_round_trip(state: dict) -> dict:
    """What a checkpoint gives back: torch.save then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _logits_for(probs: torch.Tensor) -> torch.Tensor:
    return torch.logit(probs.double()).float()


# ---------------------------------------------------------------- losses

def test_perfect_prediction_gives_near_zero_dice_losses():
    target = (torch.rand(2, 3, 6, 6, 6, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8)
    target[:, :, 0, 0, 0] = 1  # no empty channel
    logits = (target.float() * 2 - 1) * 30.0
    assert adaptive_tversky_loss(logits, target).abs().max() < 1e-5
    assert soft_dice_loss(logits, target).abs().max() < 1e-5
    assert bce_loss(logits, target).abs().max() < 1e-6


def test_tversky_matches_hand_computation_with_alpha_clamping():
    # 4 voxels, target [1, 1, 0, 0]
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 4)
    # TP = 0.9 + 0.5 = 1.4, FN = 0.1 + 0.5 = 0.6, FP = 0.2 + 0.2 = 0.4: alpha = 0.4, inside [0.2, 0.8]
    loss = adaptive_tversky_loss(_logits_for(torch.tensor([0.9, 0.5, 0.2, 0.2]).view(1, 1, 4)), target)
    assert loss.item() == pytest.approx(1 - 1.4 / (1.4 + 0.4 * 0.4 + 0.6 * 0.6 + 1e-6), abs=1e-5)
    # FP = 0.02, FN = 0.6: alpha = 0.032 -> clamped to 0.2
    loss = adaptive_tversky_loss(_logits_for(torch.tensor([0.9, 0.5, 0.01, 0.01]).view(1, 1, 4)), target)
    assert loss.item() == pytest.approx(1 - 1.4 / (1.4 + 0.2 * 0.02 + 0.8 * 0.6 + 1e-6), abs=1e-5)
    # TP = 1.98, FN = 0.02, FP = 1.8: alpha = 0.989 -> clamped to 0.8
    loss = adaptive_tversky_loss(_logits_for(torch.tensor([0.99, 0.99, 0.9, 0.9]).view(1, 1, 4)), target)
    assert loss.item() == pytest.approx(1 - 1.98 / (1.98 + 0.8 * 1.8 + 0.2 * 0.02 + 1e-6), abs=1e-5)


def test_soft_dice_matches_hand_computation():
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 4)
    loss = soft_dice_loss(_logits_for(torch.tensor([0.9, 0.5, 0.2, 0.2]).view(1, 1, 4)), target, smooth=0.0)
    assert loss.item() == pytest.approx(1 - 2 * 1.4 / (1.8 + 2.0), abs=1e-6)


def test_empty_target_gives_tversky_one_with_zero_gradient_but_bce_trains():
    logits = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    target = torch.zeros(1, 2, 5, 5, dtype=torch.bool)
    tversky = adaptive_tversky_loss(logits, target)
    assert torch.allclose(tversky, torch.ones(1, 2))
    (grad,) = torch.autograd.grad(tversky.sum(), logits)
    assert torch.count_nonzero(grad) == 0
    (grad,) = torch.autograd.grad(bce_loss(logits, target).sum(), logits)
    assert torch.all(grad > 0)  # pushes every logit down, towards the empty target


def test_tversky_has_no_nan_gradient_at_zero_errors():
    logits = torch.tensor([[[-200.0, 200.0]]], requires_grad=True)  # sigmoid exactly 0 and 1 in fp32
    loss = adaptive_tversky_loss(logits, torch.tensor([[[0.0, 1.0]]]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()


def test_segmentation_loss_is_dice_plus_bce_and_rejects_unknown_dice():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, 4, generator=generator)
    target = torch.rand(2, 3, 4, 4, 4, generator=generator) > 0.6
    total, parts = SegmentationLoss()(logits, target)
    assert parts["dice_loss"] == pytest.approx(adaptive_tversky_loss(logits, target).mean().item(), abs=1e-6)
    assert parts["bce_loss"] == pytest.approx(bce_loss(logits, target).mean().item(), abs=1e-6)
    assert total.item() == pytest.approx(parts["dice_loss"] + parts["bce_loss"], abs=1e-6)
    total, parts = SegmentationLoss(dice="soft_dice", dice_weight=2.0, bce_weight=0.5)(logits, target)
    assert total.item() == pytest.approx(2.0 * parts["dice_loss"] + 0.5 * parts["bce_loss"], abs=1e-6)
    with pytest.raises(ValueError, match="adaptive_tversky"):
        SegmentationLoss(dice="focal")


def test_zero_weight_channels_are_excluded():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, 4, generator=generator)
    target = (torch.rand(2, 3, 4, 4, 4, generator=generator) > 0.5).to(torch.uint8)
    weights = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss_fn = SegmentationLoss()
    total, _ = loss_fn(logits, target, weights)
    expected = sum(loss_fn(logits[b:b + 1, k:k + 1], target[b:b + 1, k:k + 1])[0]
                   for b, k in ((0, 0), (0, 1), (1, 0))) / 3
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)

    changed = logits.clone()
    changed[0, 2] = 1e4
    changed[1, 1:] = -50.0
    changed.requires_grad_(True)
    total_changed, _ = loss_fn(changed, target, weights)
    assert total_changed.item() == total.item()
    total_changed.backward()
    assert torch.count_nonzero(changed.grad[0, 2]) == 0 and torch.count_nonzero(changed.grad[1, 1:]) == 0

    changed = logits.clone()
    changed[0, 2] = float("nan")  # even a non-finite padding channel leaves the loss value alone
    assert loss_fn(changed, target, weights)[0].item() == total.item()


def test_all_zero_weights_give_zero_loss_that_backpropagates():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    total, parts = SegmentationLoss()(logits, torch.ones(1, 2, 4, 4), torch.zeros(1, 2))
    assert total.item() == 0.0 and parts == {"dice_loss": 0.0, "bce_loss": 0.0}
    total.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_losses_compute_in_fp32_under_autocast():
    logits = torch.randn(1, 2, 8, 8, 8).bfloat16()
    target = torch.rand(1, 2, 8, 8, 8) > 0.5
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        total, _ = SegmentationLoss()(logits, target)
    assert total.dtype == torch.float32


# ---------------------------------------------------------------- LAMB

def _reference_lamb_step(w, g, m, v, lr, beta1, beta2, eps, weight_decay, max_weight_norm):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    update = m / (v.sqrt() + eps) + weight_decay * w
    w_norm = min(w.norm().item(), max_weight_norm)
    u_norm = update.norm().item()
    trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
    return w - lr * trust * update, m, v


def test_lamb_matches_hand_written_reference_for_two_steps():
    generator = torch.Generator().manual_seed(4)
    w0 = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    grads = [torch.randn(5, 3, generator=generator, dtype=torch.float64) for _ in range(2)]
    param = nn.Parameter(w0.clone())
    optimizer = Lamb([param], lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, max_weight_norm=10.0)
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
        w, m, v = _reference_lamb_step(w, g, m, v, 0.01, 0.8, 0.9, 1e-6, 0.1, 10.0)
        assert torch.allclose(param.detach(), w, atol=1e-12, rtol=0)


def test_lamb_trust_ratio_clamps_weight_norm_and_handles_zero_weights():
    big = nn.Parameter(torch.full((4,), 100.0))  # norm 200 -> clamped to max_weight_norm 2
    zero = nn.Parameter(torch.zeros(4))  # zero weight norm -> trust ratio 1
    optimizer = Lamb([big, zero], lr=0.1, weight_decay=0.0, max_weight_norm=2.0)
    big.grad, zero.grad = torch.ones(4), torch.ones(4)
    optimizer.step()
    # first step: m = 0.1 g, v = 0.001 g^2 -> update ~= g * 0.1 / sqrt(0.001) = 3.1623 per entry, norm 6.3246
    update = 0.1 / (math.sqrt(0.001) + 1e-6)
    assert torch.allclose(big.detach(), torch.full((4,), 100.0 - 0.1 * (2.0 / (2 * update)) * update))
    assert torch.allclose(zero.detach(), torch.full((4,), -0.1 * update))


def test_lamb_minimises_a_quadratic():
    torch.manual_seed(5)
    target = torch.randn(10)
    param = nn.Parameter(torch.randn(10))
    optimizer = Lamb([param], lr=0.05, weight_decay=0.0)
    start = ((param - target) ** 2).sum().item()
    for _ in range(300):
        optimizer.zero_grad()
        loss = ((param - target) ** 2).sum()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-2 * start


def test_lamb_rejects_bad_hyperparameters():
    with pytest.raises(ValueError):
        Lamb([nn.Parameter(torch.zeros(1))], betas=(0.9, 1.0))
    with pytest.raises(ValueError):
        Lamb([nn.Parameter(torch.zeros(1))], max_weight_norm=0.0)


# ---------------------------------------------------------------- schedules

def _optimizer(lr: float = 1.0) -> Lamb:
    return Lamb([nn.Parameter(torch.ones(3))], lr=lr)


def _run(optimizer, scheduler, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_poly_schedule_values():
    optimizer = _optimizer(lr=2.0)
    scheduler = build_lr_scheduler(optimizer, "poly", total_steps=110, warmup_steps=10, power=0.9)
    lrs = _run(optimizer, scheduler, 110)
    assert lrs[0] == pytest.approx(2.0 / 11)  # warm-up starts near 0
    assert lrs[9] == pytest.approx(2.0 * 10 / 11)
    assert lrs[10] == pytest.approx(2.0)  # end of warm-up: the base lr
    assert lrs[60] == pytest.approx(2.0 * 0.5 ** 0.9)  # half-way through the decay
    assert lrs[109] == pytest.approx(2.0 * 0.01 ** 0.9)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # at total_steps
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_wsd_schedule_warms_up_holds_then_decays_linearly_over_the_last_fifth():
    optimizer = _optimizer(lr=2.0)
    scheduler = build_lr_scheduler(optimizer, "wsd", total_steps=100, warmup_steps=5)
    lrs = _run(optimizer, scheduler, 100)
    assert lrs[0] == pytest.approx(2.0 / 6) and lrs[4] == pytest.approx(2.0 * 5 / 6)
    assert lrs[5:80] == pytest.approx([2.0] * 75)  # held at the base lr until the last 20 steps
    assert lrs[90] == pytest.approx(2.0 * 10 / 20)
    assert lrs[99] == pytest.approx(2.0 / 20)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    short_run = _optimizer(lr=1.0)
    short = _run(short_run, build_lr_scheduler(short_run, "wsd", total_steps=4, warmup_steps=3), 4)
    assert short == pytest.approx([0.25, 0.5, 0.75, 1.0])  # the decay never eats into the warm-up


def test_onecycle_peaks_at_base_lr_and_leaves_betas_alone():
    optimizer = _optimizer(lr=2e-3)
    scheduler = build_lr_scheduler(optimizer, "onecycle", total_steps=200, warmup_steps=10)
    lrs = _run(optimizer, scheduler, 200)
    assert lrs[0] == pytest.approx(2e-3 / 25)
    assert max(lrs) == pytest.approx(2e-3)
    assert lrs[-1] == pytest.approx(2e-3 / 25 / 1000)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)


def test_unknown_schedule_and_bad_step_counts_are_rejected():
    with pytest.raises(ValueError, match="poly, onecycle, wsd"):
        build_lr_scheduler(_optimizer(), "cosine", total_steps=10, warmup_steps=1)
    with pytest.raises(ValueError, match="warmup_steps"):
        build_lr_scheduler(_optimizer(), "poly", total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="1 step"):  # would divide by zero inside OneCycleLR
        build_lr_scheduler(_optimizer(), "onecycle", total_steps=10, warmup_steps=1)


@pytest.mark.parametrize("kind", ["poly", "onecycle", "wsd"])
def test_optimizer_and_scheduler_resume_exactly(kind):
    def build():
        torch.manual_seed(6)
        model = nn.Linear(4, 2)
        optimizer = Lamb(model.parameters(), lr=1e-2)
        return model, optimizer, build_lr_scheduler(optimizer, kind, total_steps=40, warmup_steps=5)

    def train(model, optimizer, scheduler, steps, start):
        lrs = []
        for step in range(start, start + steps):
            batch = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            model(batch).pow(2).mean().backward()
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        return lrs

    model, optimizer, scheduler = build()
    train(model, optimizer, scheduler, 12, start=0)
    saved = _weights_only_round_trip({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "scheduler": scheduler.state_dict()})
    lrs_straight = train(model, optimizer, scheduler, 20, start=12)

    resumed_model, resumed_optimizer, resumed_scheduler = build()
    resumed_model.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    lrs_resumed = train(resumed_model, resumed_optimizer, resumed_scheduler, 20, start=12)
    assert lrs_resumed == lrs_straight
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- EMA

class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 1)
        self.norm = nn.BatchNorm1d(2)


class _DDPLike:
    def __init__(self, module: nn.Module) -> None:
        self.module = module


def test_ema_arithmetic_after_two_updates():
    model = _TinyNet()
    ema = ModelEMA(model, decay=0.9)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    w0 = model.conv.weight.detach().clone()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.norm.running_mean.fill_(2.0)
        model.norm.num_batches_tracked.fill_(7)
    ema.update(model)
    with torch.no_grad():
        model.conv.weight.fill_(3.0)
    ema.update(model)
    expected = 0.9 * (0.9 * w0 + 0.1 * 1.0) + 0.1 * 3.0
    assert torch.allclose(ema.module.conv.weight, expected)
    assert torch.allclose(ema.module.norm.running_mean, torch.full((2,), 0.9 * 0.1 * 2.0 + 0.1 * 2.0))
    assert ema.module.norm.num_batches_tracked.item() == 7  # integer buffers are copied, not averaged
    assert ema.num_updates == 2
    assert model.conv.weight.requires_grad  # the live model is untouched


def test_ema_unwraps_ddp_like_wrappers():
    model = _TinyNet()
    ema = ModelEMA(_DDPLike(model), decay=0.5)
    assert isinstance(ema.module, _TinyNet)
    assert set(ema.module.state_dict()) == set(model.state_dict())  # no "module." prefix
    with torch.no_grad():
        model.conv.bias.fill_(4.0)
    before = ema.module.conv.bias.clone()
    ema.update(_DDPLike(model))
    assert torch.allclose(ema.module.conv.bias, 0.5 * before + 2.0)


def test_ema_state_dict_round_trip_resumes_identically():
    torch.manual_seed(7)
    model = _TinyNet()
    ema = ModelEMA(model)
    for _ in range(3):
        with torch.no_grad():
            model.conv.weight.add_(torch.randn_like(model.conv.weight))
        ema.update(model)
    saved = _weights_only_round_trip(ema.state_dict())
    resumed = ModelEMA(_TinyNet())
    resumed.load_state_dict(saved)
    assert resumed.num_updates == 3
    ema.update(model)
    resumed.update(model)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[key])
