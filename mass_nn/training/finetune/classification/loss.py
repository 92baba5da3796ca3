"""Class-weighted losses for case-level classification, and the probabilities and accuracy that go with them.

Medical classification sets are usually imbalanced (few positives); weighting keeps the rare class from being
ignored. Multi-class: cross-entropy with weight N / (K * n_c) for class c (K classes present in training, so a
balanced set gets weight 1 everywhere). Multi-label: binary cross-entropy per column with pos_weight = n_neg / n_pos.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def class_weights(targets: np.ndarray, num_classes: int) -> Tensor:
    """Cross-entropy weights [num_classes] from training class indices; classes without a case get 0 (they never
    occur as a training target, so their weight never enters the loss)."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = max(int((counts > 0).sum()), 1)
    weights = np.where(counts > 0, counts.sum() / (present * np.maximum(counts, 1)), 0.0)
    return torch.as_tensor(weights, dtype=torch.float32)


def positive_weights(targets: np.ndarray) -> Tensor:
    """BCE pos_weight [C] = negatives / positives per column (1 where a column has no positive or no negative)."""
    targets = np.asarray(targets, dtype=np.float64)
    positives, negatives = targets.sum(axis=0), (1.0 - targets).sum(axis=0)
    weights = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    return torch.as_tensor(weights, dtype=torch.float32)


class ClassificationLoss(nn.Module):
    """Weighted cross-entropy (kind "multiclass", targets [B] int64) or weighted BCE ("multilabel", targets [B, C]
    of 0/1), with the weights fixed from the training targets. Computed in float32."""

    def __init__(self, kind: str, training_targets: np.ndarray, num_classes: int):
        super().__init__()
        if kind not in ("multiclass", "multilabel"):
            raise ValueError(f"kind {kind!r}: expected 'multiclass' or 'multilabel'")
        self.kind = kind
        weights = (class_weights(training_targets, num_classes) if kind == "multiclass"
                   else positive_weights(training_targets))
        self.register_buffer("weights", weights)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        weights = self.weights.to(logits.device)
        if self.kind == "multiclass":
            return F.cross_entropy(logits.float(), targets.long(), weight=weights)
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weights)


def probabilities(logits: Tensor, kind: str) -> Tensor:
    """Softmax over classes (multi-class) or a sigmoid per column (multi-label)."""
    logits = logits.float()
    return logits.softmax(dim=1) if kind == "multiclass" else logits.sigmoid()


def accuracy(probs: np.ndarray, targets: np.ndarray, kind: str) -> float:
    """Share of correct argmax classes (multi-class) or of correct 0.5-thresholded entries (multi-label)."""
    probs, targets = np.asarray(probs), np.asarray(targets)
    if len(probs) == 0:
        return float("nan")
    if kind == "multiclass":
        return float((probs.argmax(axis=1) == targets.reshape(-1)).mean())
    return float(((probs >= 0.5) == (targets > 0.5)).mean())
