"""Segmentation losses for MASS pretraining: an adaptive Tversky ("Dice") term plus BCE, each reduced per
(batch, task) channel and then averaged over channels, optionally weighted to drop padding channels.

All per-channel functions take logits and a binary target of shape [B, K, *spatial] and return [B, K]. They
compute in fp32 with autocast disabled: sums over 128^3 voxels lose too much precision in bf16. Every term is a
function of four per-channel sums (channel_statistics.py), computed once per loss call.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mass_nn.training.channel_statistics import channel_statistics

TVERSKY_ALPHA_RANGE = (0.2, 0.8)
DICE_LOSSES = ("adaptive_tversky", "soft_dice")
TVERSKY_EPS, SOFT_DICE_SMOOTH = 1e-6, 1e-5


def _as_fp32_pair(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Both tensors as fp32 with shape checked; targets may be bool or uint8."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    if logits.dim() < 3:
        raise ValueError(f"expected [B, K, *spatial] tensors, got shape {tuple(logits.shape)}")
    return logits.float(), target.to(dtype=torch.float32)


def _statistics(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Soft TP, FP, FN and mean BCE per channel, each [B, K], in fp32."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return channel_statistics(*_as_fp32_pair(logits, target))


def _tversky(tp: Tensor, fp: Tensor, fn: Tensor, eps: float) -> Tensor:
    errors = fp + fn
    # where() on both the denominator and the result keeps 0/0 from producing NaN values or gradients
    safe_errors = torch.where(errors > 0, errors, torch.ones_like(errors))
    alpha = torch.where(errors > 0, fp / safe_errors, torch.full_like(errors, 0.5))
    alpha = alpha.clamp(*TVERSKY_ALPHA_RANGE)
    return 1.0 - tp / (tp + alpha * fp + (1.0 - alpha) * fn + eps)


def _soft_dice(tp: Tensor, fp: Tensor, fn: Tensor, smooth: float) -> Tensor:
    # sum p + sum t = 2 TP + FP + FN
    return 1.0 - (2.0 * tp + smooth) / (2.0 * tp + fp + fn + smooth)


def adaptive_tversky_loss(logits: Tensor, target: Tensor, eps: float = TVERSKY_EPS) -> Tensor:
    """Per-channel adaptive Tversky loss 1 - TP / (TP + a*FP + (1-a)*FN + eps), shape [B, K].

    a = FP / (FP + FN) clamped to [0.2, 0.8], with gradients flowing through a (as in MASS): the term leans
    on whichever error kind dominates. When FP + FN is 0 (a perfect prediction) a is 0.5. An empty target
    channel has TP = FN = 0, so its loss is exactly 1 with zero gradient; only BCE trains such channels.
    """
    tp, fp, fn, _ = _statistics(logits, target)
    return _tversky(tp, fp, fn, eps)


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = SOFT_DICE_SMOOTH) -> Tensor:
    """Per-channel soft Dice loss 1 - (2 TP + smooth) / (sum p + sum t + smooth), shape [B, K]."""
    tp, fp, fn, _ = _statistics(logits, target)
    return _soft_dice(tp, fp, fn, smooth)


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-channel mean binary cross-entropy with logits, shape [B, K]."""
    return _statistics(logits, target)[3]


def weighted_channel_mean(per_channel: Tensor, weights: Tensor) -> Tensor:
    """sum(w * loss) / sum(w) over all (b, k). A channel with weight 0 leaves the value unchanged (even when its
    loss is NaN or inf) and gets zero gradient (when its logits are finite).

    Negative weights count as 0. With all weights 0 the result is a 0 that is still attached to the graph, so
    backward() works.
    """
    weights = weights.clamp_min(0.0)
    weighted = torch.where(weights > 0, per_channel * weights, torch.zeros_like(per_channel))
    total_weight = weights.sum()
    return weighted.sum() / torch.where(total_weight > 0, total_weight, torch.ones_like(total_weight))


class SegmentationLoss(nn.Module):
    """dice_weight * Dice-type loss + bce_weight * BCE, each a (weighted) mean over (batch, task) channels."""

    def __init__(self, dice: str = "adaptive_tversky", dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        if dice not in DICE_LOSSES:
            raise ValueError(f"unknown dice loss {dice!r}; options: {', '.join(DICE_LOSSES)}")
        self.dice = dice
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)

    def forward(self, logits: Tensor, target: Tensor,
                task_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """Return (total loss, {"dice_loss": mean Dice-type term, "bce_loss": mean BCE term}) for logits/target
        [B, K, *spatial]. `task_weights` [B, K] weights each channel; 0 marks a padding channel to ignore.
        """
        tp, fp, fn, bce = _statistics(logits, target)
        dice = (_tversky(tp, fp, fn, TVERSKY_EPS) if self.dice == "adaptive_tversky"
                else _soft_dice(tp, fp, fn, SOFT_DICE_SMOOTH))
        if task_weights is None:
            weights = torch.ones_like(dice)
        else:
            if task_weights.shape != dice.shape:
                raise ValueError(f"task_weights {tuple(task_weights.shape)} must have shape [B, K] = "
                                 f"{tuple(dice.shape)}")
            weights = task_weights.to(device=dice.device, dtype=torch.float32)
        dice_mean = weighted_channel_mean(dice, weights)
        bce_mean = weighted_channel_mean(bce, weights)
        total = self.dice_weight * dice_mean + self.bce_weight * bce_mean
        return total, {"dice_loss": float(dice_mean.detach()), "bce_loss": float(bce_mean.detach())}
