"""Mask quality against a label map, with the metrics of the MASS paper's Table 4a.

- Best: for each reference class, the highest Dice of any mask; averaged over the classes present.
- Avg: mean Dice over all (mask, class) pairs that overlap (at least one shared voxel).
- %>40: share of those overlapping pairs with Dice above 0.4.
Dice values are reported in percent, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from mass_nn.masks.proposal import MaskProposal


@dataclass
class QualityReport:
    best: float
    avg: float
    percent_above_40: float
    num_masks: int
    num_classes: int
    best_per_class: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"best": self.best, "avg": self.avg, "percent_above_40": self.percent_above_40,
                "num_masks": self.num_masks, "num_classes": self.num_classes, "best_per_class": self.best_per_class}


def mask_quality(proposals: Iterable[MaskProposal], label: np.ndarray) -> QualityReport:
    """Table 4a metrics of `proposals` against the integer label map `label` (same grid)."""
    label = np.asarray(label).astype(np.int64)
    class_sizes = np.bincount(label.ravel())
    classes = [c for c in range(1, class_sizes.size) if class_sizes[c] > 0]
    best = np.zeros(class_sizes.size)
    pair_dice = []
    count = 0
    for proposal in proposals:
        count += 1
        inside = label[tuple(slice(a, b) for a, b in proposal.box)][proposal.crop]
        intersections = np.bincount(inside, minlength=class_sizes.size)
        size = inside.size
        for c in np.flatnonzero(intersections[1:]) + 1:
            dice = 2.0 * intersections[c] / (size + class_sizes[c])
            pair_dice.append(dice)
            best[c] = max(best[c], dice)
    pair_dice = np.asarray(pair_dice)
    return QualityReport(
        best=100.0 * float(np.mean(best[classes])) if classes else 0.0,
        avg=100.0 * float(pair_dice.mean()) if pair_dice.size else 0.0,
        percent_above_40=100.0 * float(np.mean(pair_dice > 0.4)) if pair_dice.size else 0.0,
        num_masks=count, num_classes=len(classes),
        best_per_class={str(c): round(100.0 * float(best[c]), 2) for c in classes})
