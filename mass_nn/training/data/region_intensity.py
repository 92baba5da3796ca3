"""Region-wise intensity shifts of the reference view: the same structure at another relative brightness.

Between patients of one MR sequence an organ's intensity relative to its neighbours varies (an iron-loaded liver
is darker than the kidneys on T2, a normal one brighter). The two views of a pretraining sample come from one
volume, so a task's region always has the same relative intensity in both, and the network learns to find "the
tissue as bright as the reference's". This transform makes some task regions of the reference view brighter or
darker than the query shows them, so that matching by intensity alone no longer answers those tasks.

Only the reference is changed: its masks are an input, so the artificial edge a shift leaves at a mask's border
tells the network nothing it was not given. The query, whose masks are the answer, keeps its intensities.
"""
from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy.ndimage import gaussian_filter

from mass_nn.boxes import padded_box

# regions covering more than this share of the view are left alone: the "everything" task and masks that fill the
# view would shift the whole image, which the global brightness augmentation already does
MAX_REGION_FRACTION = 0.5
EDGE_SIGMA_VOXELS = 1.0  # the shift fades over about a voxel, as a partial-volume organ border does
EDGE_PAD_VOXELS = 4  # the fade is computed in the mask's box grown by the Gaussian's reach (4 sigma)


class ReferenceRegionShift(AbstractTransform):
    """With probability `probability` per task channel, add U(-magnitude, magnitude) × the view's intensity std
    (per image channel) inside that channel's mask of the reference view, faded at the border (Gaussian, σ 1
    voxel). Masks are untouched. Randomness from the global np.random, which the loader seeds per batch."""

    def __init__(self, probability: float, magnitude: float = 1.0, image_key: str = "reference_image",
                 masks_key: str = "reference_masks"):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must lie in [0, 1], got {probability}")
        if magnitude < 0.0:
            raise ValueError(f"magnitude must be non-negative, got {magnitude}")
        self.probability, self.magnitude = float(probability), float(magnitude)
        self.image_key, self.masks_key = image_key, masks_key

    def __call__(self, **data_dict):
        if self.probability <= 0.0 or self.magnitude <= 0.0:
            return data_dict
        images, masks = data_dict[self.image_key], data_dict[self.masks_key]
        images = images.astype(np.float32, copy=True)
        view_voxels = float(np.prod(masks.shape[2:]))
        for b in range(images.shape[0]):
            std = images[b].reshape(images.shape[1], -1).std(axis=1)
            for k in range(masks.shape[1]):
                if np.random.uniform() >= self.probability:
                    continue
                region = masks[b, k] > 0
                size = int(region.sum())
                if size == 0 or size > MAX_REGION_FRACTION * view_voxels:
                    continue
                shift = np.random.uniform(-self.magnitude, self.magnitude) * std
                box = padded_box(region, EDGE_PAD_VOXELS)
                weight = gaussian_filter(region[box].astype(np.float32), EDGE_SIGMA_VOXELS, mode="constant")
                images[b][(slice(None), *box)] += shift[:, None, None, None].astype(np.float32) * weight[None]
        data_dict[self.image_key] = images
        return data_dict
