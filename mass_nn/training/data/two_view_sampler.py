"""One pretraining sample: two overlapping crops of one case and the same task masks cut from both.

Geometry (MASS release): pick an anchor voxel, then two crops of `crop_size` (patch plus margin) that both
contain it, whose starts differ by at most (1 - overlap_ratio) * crop size per axis, and that lie inside the
volume where the volume is large enough; along an axis where it is not, each crop covers the whole extent and
is padded with 0 (image and masks).

Tasks: up to `num_tasks` masks of the case's bank, the same ids in both views. With `prefer_masks_in_view`
masks whose bounding box meets the patch window (the crop minus its margin) of one of the two views are taken
first and the rest fills up (deviation: the release draws from the whole volume, which leaves many channels
empty; the margin is left out of the test because what lies only there shows only after a zoom-out). With
`everything_task` one channel, at a random position, is an all-ones "segment everything in view" mask over the
part of the crop inside the volume, set before the spatial augmentation so that what rotates in from outside
is 0. With `distant_query` > 0 that share of samples places the query crop at an anchor of its own, anywhere in
the volume, and prefers masks that meet the reference view only: the structure must then be found by its
appearance, not at the reference's position, as in the sliding windows of whole-volume inference. With
`min_mask_voxels` > 0 only masks of at least that many voxels are drawn (the largest mask alone when a case has
none that large): a bank of mostly small supervoxel parts otherwise fills nearly every channel with a speck. The
everything task takes one of the `num_tasks` slots, so a case with N >= num_tasks masks gives num_tasks - 1 masks
plus it (the release's distribution); a smaller case gives all N masks plus it and empty padding channels with
weight 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mass_nn.boxes import Box
from mass_nn.errors import MassError
from mass_nn.masks.mask_bank import MaskBank
from mass_nn.preprocessing.crop_pad import crop_or_pad

EVERYTHING = -1  # channel code of the all-ones task
PADDING = -2  # channel code of an empty task with weight 0


@dataclass
class TwoViewSample:
    """Un-augmented crops (with margin) of both views; masks share channel order; weights 1 real, 0 padding."""

    reference_image: np.ndarray  # (c, *crop) float32
    reference_masks: np.ndarray  # (k, *crop) uint8
    query_image: np.ndarray
    query_masks: np.ndarray
    task_weights: np.ndarray  # (k,) float32


def plan_view_starts(volume_shape, crop_size, overlap_ratio: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start corners (z, y, x) of two crops of `crop_size` sharing a uniformly drawn anchor voxel.

    Both crops contain the anchor, their starts differ by at most floor((1 - overlap_ratio) * crop) per axis,
    and each lies inside the volume along every axis where the volume is at least the crop; elsewhere each
    covers the whole extent (start in [size - crop, 0]).
    """
    shape, crop = np.asarray(volume_shape, dtype=np.int64), np.asarray(crop_size, dtype=np.int64)
    max_shift = np.floor((1.0 - overlap_ratio) * crop).astype(np.int64)
    anchor = rng.integers(0, shape)
    # the same bounds serve both cases: inside [0, size - crop] when it fits, covering [size - crop, 0] if not
    low = np.maximum(np.minimum(0, shape - crop), anchor - crop + 1)
    high = np.minimum(np.maximum(0, shape - crop), anchor)
    first = rng.integers(low, high + 1)
    second = rng.integers(np.maximum(low, first - max_shift), np.minimum(high, first + max_shift) + 1)
    return first, second


def inside_box(start, size, volume_shape) -> Box:
    """The part of the box [start, start + size) that lies inside the volume (never empty for planned crops)."""
    return tuple((int(max(0, a)), int(min(s, a + n))) for a, n, s in zip(start, size, volume_shape))


def choose_tasks(bank: MaskBank, view_boxes: list[Box], num_tasks: int, everything_task: bool,
                 prefer_in_view: bool, rng: np.random.Generator, min_mask_voxels: int = 0,
                 absent_tasks: int = 0, preferred_views: list[Box] | None = None) -> np.ndarray:
    """Channel codes (num_tasks,) int64: a bank index, EVERYTHING or PADDING (padding channels come last).

    With `prefer_in_view`, masks meeting one of `preferred_views` (default: both view boxes) are drawn first.
    With `absent_tasks` > 0, up to that many channels are first filled with masks that meet the reference view's
    patch (view_boxes[0]) but not the query view's (view_boxes[1]): tasks whose answer is "not here".
    """
    if len(bank) == 0:
        raise MassError(f"{bank.path}: the mask bank holds no masks, so this case cannot be pretrained on; "
                        "run mass_generate_masks for it (or leave the case out)")
    slots = num_tasks - 1 if everything_task else num_tasks
    eligible = bank.indices_at_least(min_mask_voxels) if min_mask_voxels > 0 else np.arange(len(bank))
    absent = np.empty(0, dtype=np.int64)
    if absent_tasks > 0:
        in_reference = np.intersect1d(bank.indices_intersecting(view_boxes[0]), eligible)
        candidates = np.setdiff1d(in_reference, bank.indices_intersecting(view_boxes[1]))
        absent = rng.permutation(candidates)[:min(absent_tasks, slots)]
        eligible = np.setdiff1d(eligible, absent)
    if prefer_in_view:
        boxes = view_boxes if preferred_views is None else preferred_views
        in_view = np.unique(np.concatenate([bank.indices_intersecting(box) for box in boxes]))
        preferred = np.intersect1d(in_view, eligible)
        rest = np.setdiff1d(eligible, preferred)
        order = np.concatenate([rng.permutation(preferred), rng.permutation(rest)])
    else:
        order = eligible[rng.permutation(eligible.size)]
    channels = np.concatenate([absent, order])[:slots].astype(np.int64)
    if everything_task:
        channels = np.append(channels, EVERYTHING)
    channels = rng.permutation(channels)
    return np.concatenate([channels, np.full(num_tasks - channels.size, PADDING, dtype=np.int64)])


def paste_mask(out: np.ndarray, mask_box: Box, mask_crop: np.ndarray, start) -> None:
    """Write the part of a mask (box + boolean crop) that falls inside the view crop starting at `start`."""
    lo = [max(a, s) for (a, _), s in zip(mask_box, start)]
    hi = [min(b, s + n) for (_, b), s, n in zip(mask_box, start, out.shape)]
    if any(a >= b for a, b in zip(lo, hi)):
        return
    target = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
    source = tuple(slice(a - m, b - m) for a, b, (m, _) in zip(lo, hi, mask_box))
    out[target] = mask_crop[source]


def view_masks(channels: np.ndarray, crops: dict[int, tuple[Box, np.ndarray]], start, size,
               volume_shape) -> np.ndarray:
    """Masks (k, *size) uint8 of one view for the channel codes; EVERYTHING is 1 inside the volume."""
    out = np.zeros((channels.size, *size), dtype=np.uint8)
    for k, code in enumerate(channels):
        if code == EVERYTHING:
            box = inside_box(start, size, volume_shape)
            out[k][tuple(slice(a - s, b - s) for (a, b), s in zip(box, start))] = 1
        elif code >= 0:
            paste_mask(out[k], *crops[int(code)], start)
    return out


def sample_two_views(image, bank: MaskBank, crop_size, patch_size, num_tasks: int, overlap_ratio: float,
                     everything_task: bool, prefer_in_view: bool, rng: np.random.Generator,
                     min_mask_voxels: int = 0, absent_tasks: int = 0,
                     distant_query: float = 0.0) -> TwoViewSample:
    """Cut both views of one case: image (c, z, y, x) numpy or blosc2, masks from `bank` on the same grid.

    The crops are `crop_size`; `patch_size` (centred in them) is the part the views show without a spatial
    augmentation, the region masks are preferred in.
    """
    volume_shape = tuple(int(s) for s in image.shape[1:])
    if volume_shape != tuple(bank.shape):
        raise MassError(f"{bank.path}: mask grid {tuple(bank.shape)} differs from the image grid {volume_shape}; "
                        "re-run mass_generate_masks after preprocessing")
    crop_size = tuple(int(c) for c in crop_size)
    starts = plan_view_starts(volume_shape, crop_size, overlap_ratio, rng)
    # only drawn when asked for, so that the random stream (and every earlier run) stays as it was without it
    distant = distant_query > 0.0 and rng.random() < distant_query
    if distant:
        starts = (starts[0], plan_view_starts(volume_shape, crop_size, 1.0, rng)[0])
    margin = (np.asarray(crop_size) - np.asarray(patch_size)) // 2
    visible = [inside_box(start + margin, patch_size, volume_shape) for start in starts]
    # a distant query prefers the reference's masks: a mask only the query shows is a task nobody can answer
    preferred_views = visible[:1] if distant else visible
    channels = choose_tasks(bank, visible, num_tasks, everything_task, prefer_in_view, rng, min_mask_voxels,
                            absent_tasks, preferred_views=preferred_views)
    # each chosen mask is decoded once and pasted into both views
    crops = {int(code): bank.read_crop(int(code)) for code in channels if code >= 0}
    images = [crop_or_pad(image, start, crop_size).astype(np.float32, copy=False) for start in starts]
    masks = [view_masks(channels, crops, start, crop_size, volume_shape) for start in starts]
    return TwoViewSample(reference_image=images[0], reference_masks=masks[0], query_image=images[1],
                         query_masks=masks[1], task_weights=(channels != PADDING).astype(np.float32))
