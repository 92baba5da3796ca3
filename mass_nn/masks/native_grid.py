"""Masks made on the raw image in its own geometry, then carried to the preprocessed grid.

The MASS supplement (6.1) runs SAM2 on the original slices "without any resampling" and resamples the finished
3D masks. Generators with `native_resolution` get the raw image of their channel, cropped like preprocessing
crops it (the case's `crop_box_zyx`), windowed by the plan's windows, with the raw spacing: the seed interval is
the plan's seed distance in millimetres of the raw slices, and along a thick axis every frame the tracker sees
is a real slice (on the preprocessed grid, a 5 mm axis at 3 mm repeats frames).

Carrying a mask to the preprocessed grid: trilinear interpolation of the 0/1 mask with the preprocessing's own
grid convention (voxel centres of both grids span the same extent, `align_corners=False`), kept where >= 0.5.
Linear + 0.5 places the boundary half-way between a voxel inside and one outside, so a mask keeps its volume
when the grid coarsens and gets a smooth boundary when a thick axis is refined; nearest neighbour would shift
boundaries by up to half a voxel and alias thin parts.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from mass_nn.boxes import tight_box
from mass_nn.errors import MassError
from mass_nn.io.image_io import read_image
from mass_nn.masks.proposal import CaseInput, MaskProposal
from mass_nn.masks.windowing import windowed_channels
from mass_nn.planning.plans import Plans
from mass_nn.preprocessing.case_properties import CaseProperties

MASK_THRESHOLD = 0.5


def load_native_case_input(props: CaseProperties, plans: Plans, channel: int) -> CaseInput:
    """The raw image of `channel` cropped like preprocessing, windowed, with the raw spacing and a seed interval
    in raw slices."""
    source = Path(props.source_images[channel])
    if not source.exists():
        raise MassError(f"{source}: the raw image of case {props.case_id} is gone; native-resolution masks (sam2) "
                        f"read it, so restore MASS_raw as it was when mass_plan_and_preprocess ran")
    raw, _ = read_image(source)
    if list(raw.shape) != list(props.shape_before_crop_zyx):
        raise MassError(f"{source}: shape {list(raw.shape)} differs from the {props.shape_before_crop_zyx} it had "
                        f"when preprocessed; re-run mass_plan_and_preprocess --clean")
    cropped = raw[tuple(slice(a, b) for a, b in props.crop_box_zyx)]
    spacing = tuple(float(s) for s in props.original_spacing_zyx_mm)
    slicing = plans.mask_generation.slicing(spacing, spacing)  # the preprocessor's axis, in raw slices
    return CaseInput(case_id=props.case_id, windowed=windowed_channels(cropped, plans.channels[channel]),
                     spacing_zyx_mm=spacing, mask_axis=slicing.axis, seed_slice_interval=slicing.interval)


def _axis_weights(start: int, stop: int, in_size: int, out_size: int) -> tuple[int, np.ndarray]:
    """(first target index, weights [targets, stop - start]): linear interpolation from source indices
    start..stop-1 onto the target voxels they reach, as torch's align_corners=False resampling maps them."""
    scale = out_size / in_size
    first = max(0, math.floor((start - 1.0 + 0.5) * scale - 0.5))
    last = min(out_size, math.ceil((stop + 0.5) * scale - 0.5) + 1)
    targets = np.arange(first, last)
    source = np.clip((targets + 0.5) / scale - 0.5, 0.0, in_size - 1.0)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    upper_weight = source - lower
    weights = np.zeros((len(targets), stop - start), dtype=np.float32)
    for index, weight in ((lower, 1.0 - upper_weight), (upper, upper_weight)):
        inside = (index >= start) & (index < stop)
        np.add.at(weights, (np.flatnonzero(inside), index[inside] - start), weight[inside])
    return first, weights


def transfer_to_grid(proposal: MaskProposal, native_shape, target_shape) -> MaskProposal | None:
    """`proposal` (on the native crop grid) on the preprocessed grid by linear + 0.5; None when nothing is left."""
    firsts, weights = zip(*(_axis_weights(a, b, n, t) for (a, b), n, t in zip(proposal.box, native_shape,
                                                                             target_shape)))
    values = np.einsum("ai,bj,ck,ijk->abc", *weights, proposal.crop.astype(np.float32), optimize=True)
    mask = values >= MASK_THRESHOLD
    box = tight_box(mask)
    if box is None:
        return None
    offset_box = tuple((first + a, first + b) for first, (a, b) in zip(firsts, box))
    seed = proposal.seed_slice
    if seed is not None and proposal.axis is not None:
        scale = target_shape[proposal.axis] / native_shape[proposal.axis]
        seed = min(target_shape[proposal.axis] - 1, max(0, round((seed + 0.5) * scale - 0.5)))
    return replace(proposal, box=offset_box, crop=mask[tuple(slice(a, b) for a, b in box)], seed_slice=seed,
                   extra={**proposal.extra, "native_box": [list(b) for b in proposal.box]})


def proposals_to_grid(proposals: list[MaskProposal], native_shape, target_shape) -> list[MaskProposal]:
    """Every proposal carried to the preprocessed grid (those that vanish there are dropped)."""
    carried = (transfer_to_grid(p, native_shape, target_shape) for p in proposals)
    return [p for p in carried if p is not None]
