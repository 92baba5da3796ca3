"""Axis-aligned boxes of 3D boolean masks: the (start, stop) range per axis that holds every True voxel.

Shared by the foreground crop (planning, preprocessing), the mask proposals and the two-view sampler, so it lives
below all of them.
"""
from __future__ import annotations

import numpy as np

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # ((z0, z1), (y0, y1), (x0, x1)), stop exclusive


def tight_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the True voxels of a 3D mask, or None when it has none."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def padded_box(mask: np.ndarray, pad: int) -> tuple[slice, slice, slice] | None:
    """`tight_box` of a 3D mask widened by `pad` voxels per side and clipped to the array, as slices; None when the
    mask has no True voxel."""
    box = tight_box(mask)
    if box is None:
        return None
    return tuple(slice(max(start - pad, 0), min(stop + pad, size)) for (start, stop), size in zip(box, mask.shape))
