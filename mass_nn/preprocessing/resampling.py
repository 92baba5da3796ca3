"""Resampling between grids with torch (vectorised, multi-threaded).

Images: trilinear (align_corners=False: voxel centres of both grids span the same physical extent), except along
the thick-slice axis of strongly anisotropic images (max/min spacing > 3), which is resampled nearest-neighbour:
interpolating across 3-5 mm slices invents tissue that was never imaged (nnU-Net makes the same choice), and
repeated slices compress well. Labels: nearest-exact. The same functions, with the same axis, map a prediction
back, so forward and backward use one convention. torch is imported on first use only.
"""
from __future__ import annotations

import numpy as np

NEAREST_AXIS_ANISOTROPY = 3.0


def shape_at_spacing(shape_zyx, spacing_zyx_mm, target_spacing_zyx_mm) -> list[int]:
    """Voxel count per axis that keeps the physical extent at the target spacing (at least 1)."""
    return [max(1, int(round(n * s / t))) for n, s, t in zip(shape_zyx, spacing_zyx_mm, target_spacing_zyx_mm)]


def nearest_resampling_axis(spacing_zyx_mm) -> int | None:
    """The thick-slice axis resampled nearest-neighbour, or None (isotropic enough, or no unique thickest axis)."""
    spacing = [float(s) for s in spacing_zyx_mm]
    thickest = max(spacing)
    if thickest / min(spacing) <= NEAREST_AXIS_ANISOTROPY or spacing.count(thickest) > 1:
        return None
    return spacing.index(thickest)


def resample_images(channels: np.ndarray, new_shape_zyx, nearest_axis: int | None = None) -> np.ndarray:
    """Resample a (c, z, y, x) float array to (c, *new_shape_zyx), float32: trilinear, or trilinear in the other
    two axes and nearest along `nearest_axis`."""
    import torch
    import torch.nn.functional as F
    new_shape = tuple(int(s) for s in new_shape_zyx)
    if tuple(channels.shape[1:]) == new_shape:
        return channels.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))[None]
    if nearest_axis is None:
        return F.interpolate(tensor, size=new_shape, mode="trilinear", align_corners=False)[0].numpy()
    # trilinear with an unchanged size along an axis is the identity along it, so this is exactly 2D-linear
    in_plane = list(new_shape)
    in_plane[nearest_axis] = channels.shape[1 + nearest_axis]
    tensor = F.interpolate(tensor, size=tuple(in_plane), mode="trilinear", align_corners=False)
    return F.interpolate(tensor, size=new_shape, mode="nearest-exact")[0].numpy()


def resample_label(label: np.ndarray, new_shape_zyx) -> np.ndarray:
    """Nearest-neighbour resampling of a (z, y, x) integer label map; dtype is kept."""
    import torch
    import torch.nn.functional as F
    if tuple(label.shape) == tuple(new_shape_zyx):
        return label
    dtype = label.dtype
    # float32 holds every integer label value below 2**24 exactly
    tensor = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None]
    out = F.interpolate(tensor, size=tuple(int(s) for s in new_shape_zyx), mode="nearest-exact")
    return out[0, 0].numpy().astype(dtype)
