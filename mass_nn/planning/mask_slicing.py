"""Where SAM2 looks: the slice axis and the seed-slice interval (MASS supplement, section 6.1).

Axis: for each axis, the mean spacing of the other two (the in-plane resolution of slices cut along it); the
axis with the finest in-plane resolution wins. When max/min spacing <= ISOTROPY_RATIO the volume counts as
isotropic and the first axis (axis 0, z in numpy order) is used.
Interval: max(1, floor(seed_slice_distance_mm / spacing along the axis)).

Every stage asks `plan_slicing` (or `MaskGenerationPlan.slicing`, which fills in the plans' distance and
ratio): the planner for the dataset and each configuration, the preprocessor for each case on its grid, the
native-resolution SAM2 input for the raw slices, and `on_every_axis` for multi-axis SAM2 runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SliceSchedule:
    """Where SAM2 cuts one volume: slices along `axis` (numpy order), a seed slice every `interval` of them."""

    axis: int
    interval: int


def plan_slicing(original_spacing_zyx_mm, grid_spacing_zyx_mm, seed_slice_distance_mm: float,
                 isotropy_ratio: float = ISOTROPY_RATIO) -> SliceSchedule:
    """The axis from the volume's original spacing (the slices it was acquired in), the interval in slices of
    the grid SAM2 runs on (the original one, or a configuration's target spacing)."""
    axis = mask_generation_axis(original_spacing_zyx_mm, isotropy_ratio)
    return SliceSchedule(axis, seed_slice_interval(float(grid_spacing_zyx_mm[axis]), seed_slice_distance_mm))


def on_every_axis(schedule: SliceSchedule, grid_spacing_zyx_mm) -> list[SliceSchedule]:
    """One schedule per axis, in axis order: the given one, and on the two other axes seeds the same physical
    distance apart."""
    distance_mm = schedule.interval * float(grid_spacing_zyx_mm[schedule.axis])
    return [schedule if axis == schedule.axis
            else SliceSchedule(axis, seed_slice_interval(float(grid_spacing_zyx_mm[axis]), distance_mm))
            for axis in range(3)]
