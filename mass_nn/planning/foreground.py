"""The foreground region of an unlabelled volume and the crop box around it.

Definition (also recorded in the fingerprint): for a CT channel, the body = voxels above -500 HU, holes filled
slice by slice (so the lungs and bowel gas count as body), largest 3D connected component (drops the table);
for any other channel, the nonzero voxels. A multi-channel case takes the union over channels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mass_nn.boxes import tight_box
from mass_nn.planning.modality import CT

BODY_THRESHOLD_HU = -500.0
FOREGROUND_DEFINITIONS = {
    CT: f"body: CT > {BODY_THRESHOLD_HU:g} HU, holes filled per axial slice, largest connected component",
    "default": "nonzero voxels",
}


def foreground_definition(modality: str) -> str:
    return FOREGROUND_DEFINITIONS.get(modality, FOREGROUND_DEFINITIONS["default"])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of every axis-0 slice of a 3D mask in one pass: background regions (in-plane
    connectivity only) that do not touch a slice's in-plane border are holes."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    background, _ = ndimage.label(~mask, structure=in_plane)
    border = np.concatenate([background[:, 0, :].ravel(), background[:, -1, :].ravel(),
                             background[:, :, 0].ravel(), background[:, :, -1].ravel()])
    outside = np.zeros(background.max() + 1, dtype=bool)
    outside[border] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[background]


def ct_body_mask(volume_hu: np.ndarray) -> np.ndarray:
    """Body mask of a (z, y, x) CT volume in HU; falls back to all voxels when nothing exceeds the threshold."""
    mask = volume_hu > BODY_THRESHOLD_HU
    if not mask.any():
        return np.ones_like(mask)
    return fill_holes_per_slice(_largest_component(mask))


def foreground_mask(channels: np.ndarray, modalities: list[str]) -> np.ndarray:
    """Union over channels of each channel's foreground; `channels` is (c, z, y, x)."""
    mask = np.zeros(channels.shape[1:], dtype=bool)
    for volume, modality in zip(channels, modalities):
        mask |= ct_body_mask(volume) if modality == CT else (volume != 0)
    if not mask.any():
        mask[:] = True
    return mask


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """[[start, stop], ...] per axis of the True voxels of a 3D mask (the whole array when none)."""
    box = tight_box(mask)
    return [list(b) for b in box] if box is not None else [[0, n] for n in mask.shape]


def crop_to_box(array: np.ndarray, box: list[list[int]]) -> np.ndarray:
    """Crop the last len(box) axes of `array` to `box`."""
    lead = (slice(None),) * (array.ndim - len(box))
    return array[lead + tuple(slice(a, b) for a, b in box)]
