"""From per-label probabilities to a label map: threshold, argmax among the labels above it, and optionally
only the largest connected component of each label."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (the mask itself when it has at most one)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def probabilities_to_label_map(probabilities, label_values: list[int], threshold: float | Sequence[float] = 0.5,
                               keep_largest_component: bool = False) -> np.ndarray:
    """Label map (z, y, x) of probabilities [K, z, y, x]: voxel -> the label of the most probable channel
    among those with p >= threshold (one threshold, or one per label), else 0. With keep_largest_component each
    label keeps only its largest connected component (the rest becomes 0)."""
    probabilities = torch.as_tensor(probabilities)
    if probabilities.shape[0] != len(label_values):
        raise ValueError(f"{probabilities.shape[0]} probability channels for {len(label_values)} labels")
    cut = torch.as_tensor(threshold, dtype=probabilities.dtype).reshape(-1, *([1] * (probabilities.ndim - 1)))
    if cut.shape[0] not in (1, len(label_values)):
        raise ValueError(f"{cut.shape[0]} thresholds for {len(label_values)} labels")
    values = np.asarray(label_values, dtype=np.int16)
    # channels under their own threshold drop out of the argmax (-1 is below every probability)
    best = torch.where(probabilities >= cut, probabilities, torch.full_like(probabilities, -1.0)).max(dim=0)
    label_map = np.where(best.values.numpy() >= 0, values[best.indices.numpy()], 0).astype(np.int16)
    if keep_largest_component:
        for value in label_values:
            mask = label_map == value
            if mask.any():
                label_map[mask & ~largest_component(mask)] = 0
    return label_map
