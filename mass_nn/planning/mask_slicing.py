"""Where SAM2 looks: the slice axis and the seed-slice interval (MASS supplement, section 6.1).

Axis: for each axis, the mean spacing of the other two (the in-plane resolution of slices cut along it); the
axis with the finest in-plane resolution wins. When max/min spacing <= ISOTROPY_RATIO the volume counts as
isotropic and the first axis (axis 0, z in numpy order) is used.
Interval: max(1, floor(seed_slice_distance_mm / spacing along the axis)).
"""
from __future__ import annotations

import math

ISOTROPY_RATIO = 1.3
DEFAULT_SEED_SLICE_DISTANCE_MM = 15.0


def mask_generation_axis(spacing_zyx_mm, isotropy_ratio: float = ISOTROPY_RATIO) -> int:
    """Index (numpy order) of the axis along which slices are cut."""
    spacing = [float(s) for s in spacing_zyx_mm]
    if max(spacing) / min(spacing) <= isotropy_ratio:
        return 0
    in_plane = [(sum(spacing) - s) / 2 for s in spacing]
    return min(range(3), key=lambda a: (in_plane[a], a))


def seed_slice_interval(axis_spacing_mm: float,
                        seed_slice_distance_mm: float = DEFAULT_SEED_SLICE_DISTANCE_MM) -> int:
    """Number of slices between two seed slices."""
    return max(1, math.floor(seed_slice_distance_mm / float(axis_spacing_mm) + 1e-9))
