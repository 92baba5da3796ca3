"""From per-label probabilities to a label map: threshold, argmax among the labels above it, and optionally
only the largest connected component of each label."""
from __future__ import annotations

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


def probabilities_to_label_map(probabilities, label_values: list[int], threshold: float = 0.5,
                               keep_largest_component: bool = False) -> np.ndarray:
    """Label map (z, y, x) of probabilities [K, z, y, x]: voxel -> the label of the most probable channel
    among those with p >= threshold, else 0. With keep_largest_component each label keeps only its largest
    connected component (the rest becomes 0)."""
    probabilities = torch.as_tensor(probabilities)
    if probabilities.shape[0] != len(label_values):
        raise ValueError(f"{probabilities.shape[0]} probability channels for {len(label_values)} labels")
    values = np.asarray(label_values, dtype=np.int16)
    best = probabilities.max(dim=0)
    label_map = np.where(best.values.numpy() >= threshold, values[best.indices.numpy()], 0).astype(np.int16)
    if keep_largest_component:
        for value in label_values:
            mask = label_map == value
            if mask.any():
                label_map[mask & ~largest_component(mask)] = 0
    return label_map
