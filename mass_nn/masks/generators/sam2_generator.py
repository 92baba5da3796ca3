"""The `sam2` generator: the MASS paper's mask generation (supplement 6.1).

Per case: cut the three-window uint8 volume into RGB slices along the case's mask axis (all three axes in
multi-axis mode); pick seed slices `seed_slice_interval` apart; run SAM2's automatic mask generator on each seed
slice; keep up to `max_masks_per_slice` masks chosen for diversity of size and position; track every kept mask
with SAM2's video predictor forward from the seed to the last slice, then backward from the seed to the first;
stack each object's slices into a 3D mask and keep its largest connected component touching the seed-slice mask.

The orchestration here is plain numpy; every sam2 call goes through an engine (`Sam2Engine`: `automatic_masks`,
`open_frames` -> tracker with `propagate`), which is `sam2_backend.Sam2Backend` unless a test passes another.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import numpy as np

from mass_nn.errors import MassError
from mass_nn.masks.generators.base import MaskGenerator
from mass_nn.masks.generators.sam2_backend import Sam2Backend, Sam2Settings, SeedMask
from mass_nn.masks.postprocess import crop_to_content, keep_component_touching_seed
from mass_nn.masks.proposal import CaseInput, MaskProposal
from mass_nn.planning.mask_slicing import SliceSchedule, on_every_axis

logger = logging.getLogger(__name__)


class FrameTracker(Protocol):
    def propagate(self, seed_frame: int, masks: Sequence[np.ndarray], reverse: bool
                  ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (frame index, bool (len(masks), H, W)) from the seed frame towards the end (or the start)."""


class Sam2Engine(Protocol):
    def automatic_masks(self, image: np.ndarray) -> list[SeedMask]: ...

    def open_frames(self, frames: np.ndarray) -> AbstractContextManager[FrameTracker]: ...

    def close(self) -> None: ...


# ---- slices and seeds ---------------------------------------------------------------------------------------

def slice_frames(windowed: np.ndarray, axis: int) -> np.ndarray:
    """(3, z, y, x) uint8 -> (N, H, W, 3) RGB frames cut along volume axis `axis` (a view); a frame's rows and
    columns are the two other axes in volume order."""
    return np.moveaxis(windowed, (axis + 1, 0), (0, 3))


def seed_slices(length: int, interval: int) -> list[int]:
    """Seed slice indices exactly `interval` apart: round(length / interval) of them (at least one), centred so
    the margins before the first and after the last differ by at most one slice."""
    interval = max(1, int(interval))
    count = max(1, round(length / interval))
    start = (length - 1 - (count - 1) * interval) // 2
    return [start + k * interval for k in range(count)]


def axes_and_intervals(case: CaseInput, multi_axis: bool) -> list[tuple[int, int]]:
    """(axis, seed interval) pairs: the case's mask axis, or all three axes with the same physical distance."""
    schedule = SliceSchedule(case.mask_axis, case.seed_slice_interval)
    schedules = on_every_axis(schedule, case.spacing_zyx_mm) if multi_axis else [schedule]
    return [(s.axis, s.interval) for s in schedules]


# ---- choosing seed masks ------------------------------------------------------------------------------------

def drop_small_masks(masks: Iterable[SeedMask], min_area_px: int) -> list[SeedMask]:
    return [m for m in masks if m.area >= min_area_px]


def _diversity_bin(mask: SeedMask, grid: int) -> tuple[int, int, int]:
    """(log2 area, centroid row cell, centroid column cell) on a grid x grid partition of the slice."""
    rows, cols = np.nonzero(mask.segmentation)
    height, width = mask.segmentation.shape
    row_cell = min(grid - 1, int(rows.mean() / height * grid))
    col_cell = min(grid - 1, int(cols.mean() / width * grid))
    return int(math.log2(max(1, rows.size))), row_cell, col_cell


def select_diverse(masks: Sequence[SeedMask], max_masks: int, grid: int = 3) -> list[SeedMask]:
    """Up to `max_masks` masks spread over sizes and positions: masks are binned by log2 area and by centroid
    cell, then taken round-robin over the bins (each round: the best remaining mask of every bin, by predicted
    IoU), so a crowd of similar masks cannot crowd out the rare large or off-centre ones."""
    if len(masks) <= max_masks:
        return list(masks)
    bins: dict[tuple, list[SeedMask]] = {}
    for mask in sorted(masks, key=lambda m: -m.predicted_iou):
        bins.setdefault(_diversity_bin(mask, grid), []).append(mask)
    queues = list(bins.values())
    chosen: list[SeedMask] = []
    depth = 0
    while len(chosen) < max_masks:
        this_round = sorted((q[depth] for q in queues if depth < len(q)), key=lambda m: -m.predicted_iou)
        chosen += this_round[: max_masks - len(chosen)]
        depth += 1
    return chosen


# ---- one tracked object -------------------------------------------------------------------------------------

class SliceStack:
    """The 2D masks of one tracked object, stored per frame as the crop of their bounding box."""

    def __init__(self):
        self._slices: dict[int, tuple[int, int, np.ndarray]] = {}  # frame -> (row0, col0, crop)

    def __len__(self) -> int:
        return len(self._slices)

    def put(self, frame: int, mask: np.ndarray) -> None:
        """Record the object's mask on `frame` (an empty mask records nothing)."""
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            self._slices.pop(frame, None)
            return
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        self._slices[frame] = (int(r0), int(c0), mask[r0:r1, c0:c1].copy())

    def to_box_and_crop(self) -> tuple[list[tuple[int, int]], np.ndarray] | None:
        """Box ((frame0, frame1), (row0, row1), (col0, col1)) and bool crop in frame order; None when empty."""
        if not self._slices:
            return None
        frames = sorted(self._slices)
        r0 = min(r for r, _, _ in self._slices.values())
        c0 = min(c for _, c, _ in self._slices.values())
        r1 = max(r + crop.shape[0] for r, _, crop in self._slices.values())
        c1 = max(c + crop.shape[1] for _, c, crop in self._slices.values())
        volume = np.zeros((frames[-1] + 1 - frames[0], r1 - r0, c1 - c0), dtype=bool)
        for frame, (r, c, crop) in self._slices.items():
            volume[frame - frames[0], r - r0: r - r0 + crop.shape[0], c - c0: c - c0 + crop.shape[1]] = crop
        return [(frames[0], frames[-1] + 1), (r0, r1), (c0, c1)], volume


def object_proposal(stack: SliceStack, seed: SeedMask, seed_frame: int, axis: int,
                    extra: dict | None = None) -> MaskProposal | None:
    """The tracked object as a MaskProposal on the volume grid: the seed frame holds the seed mask itself (it is
    put into `stack`), and only the largest 26-connected component touching it is kept. None when empty."""
    stack.put(seed_frame, seed.segmentation)
    assembled = stack.to_box_and_crop()
    if assembled is None:
        return None
    box, crop = assembled
    seed_mask = np.zeros_like(crop)
    seed_mask[seed_frame - box[0][0]] = crop[seed_frame - box[0][0]]
    crop = keep_component_touching_seed(crop, seed_mask)
    volume_box = list(box[1:])
    volume_box.insert(axis, box[0])
    proposal = MaskProposal(box=tuple(volume_box), crop=np.moveaxis(crop, 0, axis), generator="sam2",
                            score=seed.predicted_iou, axis=axis, seed_slice=seed_frame, extra=dict(extra or {}))
    return crop_to_content(proposal)


def track_both_ways(tracker: FrameTracker, seed_frame: int, seeds: Sequence[SeedMask],
                    stacks: Sequence[SliceStack], stop_after_empty: int = 0) -> None:
    """Forward from the seed to the last frame, then backward from the seed to the first, filling `stacks`
    (one per seed mask; the seed frame itself is left to the caller). With `stop_after_empty` > 0 a direction
    ends once every object has been empty for that many consecutive frames."""
    masks = [s.segmentation for s in seeds]
    for reverse in (False, True):
        empty_run = np.zeros(len(seeds), dtype=int)
        for frame, frame_masks in tracker.propagate(seed_frame, masks, reverse=reverse):
            if frame == seed_frame:
                continue
            for stack, mask in zip(stacks, frame_masks):
                stack.put(frame, mask)
            empty_run = np.where(frame_masks.reshape(len(seeds), -1).any(axis=1), 0, empty_run + 1)
            if stop_after_empty and empty_run.min() >= stop_after_empty:
                break


def batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[i: i + size] for i in range(0, len(items), max(1, size))]


# ---- the generator ------------------------------------------------------------------------------------------

class Sam2Generator(MaskGenerator):
    """SAM2 automatic masks on seed slices, propagated through the volume in both directions (MASS 6.1)."""

    name = "sam2"
    native_resolution = True  # the supplement: SAM2 on the original slices, masks resampled afterwards

    def __init__(self, checkpoint: str | Path | None = None, model: str | None = None, image_size: int = 1024,
                 device: str = "auto", points_per_side: int = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.35, stability_score_thresh: float = 0.6, box_nms_thresh: float = 0.7,
                 min_area_fraction: float = 0.0002, min_area_px: int | None = None, max_masks_per_slice: int = 70,
                 objects_per_batch: int = 32, multi_axis: bool = False, min_voxels: int = 1,
                 stop_after_empty: int = 0, allow_random_weights: bool = False, engine: Sam2Engine | None = None):
        if max_masks_per_slice < 1 or objects_per_batch < 1:
            raise MassError("max_masks_per_slice and objects_per_batch must be at least 1")
        self.settings = Sam2Settings(
            checkpoint=checkpoint, model=model, image_size=int(image_size), device=device,
            allow_random_weights=allow_random_weights, points_per_side=int(points_per_side),
            points_per_batch=int(points_per_batch), pred_iou_thresh=float(pred_iou_thresh),
            stability_score_thresh=float(stability_score_thresh), box_nms_thresh=float(box_nms_thresh))
        self.min_area_fraction = float(min_area_fraction)
        self.min_area_px = None if min_area_px is None else int(min_area_px)
        self.max_masks_per_slice = int(max_masks_per_slice)
        self.objects_per_batch = int(objects_per_batch)
        self.multi_axis = bool(multi_axis)
        self.min_voxels = int(min_voxels)
        self.stop_after_empty = int(stop_after_empty)
        # a real backend checks the checkpoint now (before any case is read) and builds the model on first use
        self.engine: Sam2Engine = engine if engine is not None else Sam2Backend(self.settings)

    def parameters(self) -> dict:
        s = self.settings
        resolved = getattr(self.engine, "resolved", None)
        checkpoint = Path(s.checkpoint) if s.checkpoint else None
        return {
            "checkpoint": checkpoint.name if checkpoint else None,
            "checkpoint_bytes": checkpoint.stat().st_size if checkpoint and checkpoint.is_file() else None,
            "model": resolved.model if resolved else s.model, "image_size": s.image_size,
            "random_weights": checkpoint is None, "points_per_side": s.points_per_side,
            "pred_iou_thresh": s.pred_iou_thresh, "stability_score_thresh": s.stability_score_thresh,
            "box_nms_thresh": s.box_nms_thresh, "min_area_fraction": self.min_area_fraction,
            "min_area_px": self.min_area_px, "max_masks_per_slice": self.max_masks_per_slice,
            "multi_axis": self.multi_axis, "min_voxels": self.min_voxels, "stop_after_empty": self.stop_after_empty,
        }

    def min_area_for(self, frame_shape: tuple[int, int]) -> int:
        """Smallest seed mask area in pixels: `min_area_px` when set, else `min_area_fraction` of the slice."""
        if self.min_area_px is not None:
            return self.min_area_px
        return max(1, math.ceil(self.min_area_fraction * frame_shape[0] * frame_shape[1]))

    def generate(self, case: CaseInput) -> list[MaskProposal]:
        proposals: list[MaskProposal] = []
        for axis, interval in axes_and_intervals(case, self.multi_axis):
            frames = slice_frames(case.windowed, axis)
            seeds = seed_slices(frames.shape[0], interval)
            with self.engine.open_frames(frames) as tracker:
                for number, seed_frame in enumerate(seeds, start=1):
                    start = time.time()
                    seed_masks, amg_count = self._seed_masks(frames[seed_frame])
                    found = self._track_seed_masks(tracker, axis, seed_frame, seed_masks)
                    proposals += found
                    logger.info("%s axis %d seed slice %d (%d/%d): %d automatic masks, %d tracked, %d kept, %.1f s",
                                case.case_id, axis, seed_frame, number, len(seeds), amg_count, len(seed_masks),
                                len(found), time.time() - start)
        return proposals

    def _seed_masks(self, image: np.ndarray) -> tuple[list[SeedMask], int]:
        """The masks of one seed slice to track (area filter, then diversity cap) and how many the AMG found."""
        found = self.engine.automatic_masks(image)
        large_enough = drop_small_masks(found, self.min_area_for(image.shape[:2]))
        return select_diverse(large_enough, self.max_masks_per_slice), len(found)

    def _track_seed_masks(self, tracker: FrameTracker, axis: int, seed_frame: int, seeds: Sequence[SeedMask]
                          ) -> list[MaskProposal]:
        """Track the seed masks in batches of `objects_per_batch`; one proposal per object that survives."""
        proposals = []
        for group in batches(seeds, self.objects_per_batch):
            stacks = [SliceStack() for _ in group]
            track_both_ways(tracker, seed_frame, group, stacks, self.stop_after_empty)
            for seed, stack in zip(group, stacks):
                extra = {"stability_score": round(seed.stability_score, 4), "seed_area_px": seed.area}
                proposal = object_proposal(stack, seed, seed_frame, axis, extra)
                if proposal is not None and proposal.voxels >= self.min_voxels:
                    proposals.append(proposal)
        return proposals

    def close(self) -> None:
        self.engine.close()
