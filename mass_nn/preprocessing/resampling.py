"""Resampling between grids with torch (vectorised, multi-threaded).

Images: trilinear (align_corners=False: voxel centres of both grids span the same physical extent). Labels:
nearest-exact. The same functions map a prediction back, so forward and backward use one convention.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def shape_at_spacing(shape_zyx, spacing_zyx_mm, target_spacing_zyx_mm) -> list[int]:
    """Voxel count per axis that keeps the physical extent at the target spacing (at least 1)."""
    return [max(1, int(round(n * s / t))) for n, s, t in zip(shape_zyx, spacing_zyx_mm, target_spacing_zyx_mm)]


def resample_images(channels: np.ndarray, new_shape_zyx) -> np.ndarray:
    """Trilinear resampling of a (c, z, y, x) float array to (c, *new_shape_zyx), float32."""
    if tuple(channels.shape[1:]) == tuple(new_shape_zyx):
        return channels.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))[None]
    out = F.interpolate(tensor, size=tuple(int(s) for s in new_shape_zyx), mode="trilinear", align_corners=False)
    return out[0].numpy()


def resample_label(label: np.ndarray, new_shape_zyx) -> np.ndarray:
    """Nearest-neighbour resampling of a (z, y, x) integer label map; dtype is kept."""
    if tuple(label.shape) == tuple(new_shape_zyx):
        return label
    dtype = label.dtype
    # float32 holds every integer label value below 2**24 exactly
    tensor = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None]
    out = F.interpolate(tensor, size=tuple(int(s) for s in new_shape_zyx), mode="nearest-exact")
    return out[0, 0].numpy().astype(dtype)
