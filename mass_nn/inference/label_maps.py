"""From per-label probabilities to a label map: threshold, resolve the voxels that several labels claim, and
optionally keep only the largest connected component of each label.

Two ways to resolve a voxel claimed by several labels (every label is its own sigmoid channel, so claims
overlap):
- `most_probable`: the label with the highest probability (the release's rule).
- `smallest_volume`: the label whose claim over the whole case is smallest. In context, a label the network does
  not understand from its reference tends to be claimed across the whole body at high probability; under
  `most_probable` that one channel erases every other label it covers, under `smallest_volume` it keeps only the
  voxels no other label claims. Nested anatomy (a lesion or vessels inside the liver) also resolves to the inner
  structure, as the ground truth does.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

LABEL_FUSIONS = ("smallest_volume", "most_probable")


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (the mask itself when it has at most one)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def _most_probable(probabilities: torch.Tensor, claims: torch.Tensor, values: np.ndarray) -> np.ndarray:
    # labels under their own threshold drop out of the max (-1 is below every probability)
    best = torch.where(claims, probabilities, torch.full_like(probabilities, -1.0)).max(dim=0)
    return np.where(best.values.numpy() >= 0, values[best.indices.numpy()], 0).astype(np.int16)


def _smallest_volume(claims: torch.Tensor, values: np.ndarray) -> np.ndarray:
    volumes = claims.flatten(1).sum(1).tolist()
    # paint the largest claim first and the smallest last, so the smallest wins; equal volumes: the first label
    order = sorted(range(len(values)), key=lambda k: (-volumes[k], -k))
    label_map = np.zeros(tuple(claims.shape[1:]), dtype=np.int16)
    for k in order:
        label_map[claims[k].numpy()] = values[k]
    return label_map


def label_claims(probabilities: torch.Tensor, threshold: float | Sequence[float] = 0.5) -> torch.Tensor:
    """[K, z, y, x] bool: where each label's probability reaches its threshold (one, or one per label), before
    any fusion, so claims may overlap."""
    cut = torch.as_tensor(threshold, dtype=probabilities.dtype).reshape(-1, *([1] * (probabilities.ndim - 1)))
    if cut.shape[0] not in (1, probabilities.shape[0]):
        raise ValueError(f"{cut.shape[0]} thresholds for {probabilities.shape[0]} labels")
    return probabilities >= cut


def probabilities_to_label_map(probabilities, label_values: list[int], threshold: float | Sequence[float] = 0.5,
                               keep_largest_component: bool = False, fusion: str = "most_probable") -> np.ndarray:
    """Label map (z, y, x) of probabilities [K, z, y, x]: a label claims the voxels where its probability reaches
    its threshold (one threshold, or one per label); a voxel claimed by several labels is resolved by `fusion`
    (see the module docstring); unclaimed voxels are 0. With keep_largest_component each label keeps only its
    largest connected component (the rest becomes 0)."""
    if fusion not in LABEL_FUSIONS:
        raise ValueError(f"label fusion {fusion!r}: choose one of {', '.join(LABEL_FUSIONS)}")
    probabilities = torch.as_tensor(probabilities)
    if probabilities.shape[0] != len(label_values):
        raise ValueError(f"{probabilities.shape[0]} probability channels for {len(label_values)} labels")
    values = np.asarray(label_values, dtype=np.int16)
    claims = label_claims(probabilities, threshold)
    if fusion == "most_probable":
        label_map = _most_probable(probabilities, claims, values)
    else:
        label_map = _smallest_volume(claims, values)
    if keep_largest_component:
        for value in label_values:
            mask = label_map == value
            if mask.any():
                label_map[mask & ~largest_component(mask)] = 0
    return label_map
