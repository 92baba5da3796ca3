"""Reference-calibrated thresholds: read each label's threshold off its own references instead of fixing 0.5.

Early in pretraining an in-context network ranks voxels well (the structure's voxels get several times the
probability of the rest) long before its probabilities cross 0.5, so a fixed threshold reports nothing it knows.
The references are labelled anyway: segmenting each reference crop under the task embedding and taking the
threshold that gives the best Dice against the reference's own mask uses no label of the query. The threshold is
the one with the highest Dice averaged over a label's references (ties: the higher threshold).
"""
from __future__ import annotations

import numpy as np
import torch

from mass_nn.inference.reference_encoding import reference_crop

THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95


def dice_per_threshold(probabilities: torch.Tensor, mask: torch.Tensor,
                       grid: tuple[float, ...] = THRESHOLD_GRID) -> np.ndarray:
    """Hard Dice of (probabilities >= t) against the boolean `mask`, for every t of `grid` (len(grid),)."""
    flat_p, flat_m = probabilities.reshape(-1).float(), mask.reshape(-1).bool()
    thresholds = torch.tensor(grid, dtype=flat_p.dtype)[:, None]
    predicted = flat_p[None] >= thresholds
    intersection = (predicted & flat_m[None]).sum(1).double()
    total = predicted.sum(1).double() + flat_m.sum().double()
    return torch.where(total > 0, 2 * intersection / total.clamp(min=1), torch.zeros_like(total)).numpy()


def best_threshold(dice_curves: list[np.ndarray], grid: tuple[float, ...] = THRESHOLD_GRID) -> float:
    """The grid threshold with the highest mean Dice over the curves (one per reference); ties -> the higher one."""
    mean = np.mean(np.stack(dice_curves), axis=0)
    return float(grid[len(grid) - 1 - int(np.argmax(mean[::-1]))])


@torch.no_grad()
def calibrate_thresholds(network, embedding, reference_crops: list[list[tuple[np.ndarray, np.ndarray]]],
                         device: torch.device | str = "cpu") -> list[float]:
    """Per task k of `embedding`, the best threshold over its reference crops `reference_crops[k]` (each an image
    crop (c, *patch) and its binary mask crop (*patch)), segmented for all tasks at once as the queries will be."""
    thresholds = []
    for k, crops in enumerate(reference_crops):
        curves = []
        for image, mask in crops:
            logits = network.segment(torch.as_tensor(image, dtype=torch.float32)[None].to(device), embedding)
            curves.append(dice_per_threshold(torch.sigmoid(logits[0, k].float()).cpu(), torch.as_tensor(mask) > 0.5))
        thresholds.append(best_threshold(curves) if curves else 0.5)
    return thresholds


def calibrate_reference_thresholds(network, embedding, references: list[tuple[np.ndarray, np.ndarray]],
                                   label_values: list[int], patch_zyx, device: torch.device | str = "cpu"
                                   ) -> list[float]:
    """One threshold per label of `label_values` (the tasks of `embedding`, in order), from the crops around that
    label of every reference (image (c, z, y, x), label map (z, y, x), preprocessed) that contains it."""
    crops = [[reference_crop(image, seg, value, patch_zyx) for image, seg in references if (seg == value).any()]
             for value in label_values]
    return calibrate_thresholds(network, embedding, crops, device)
