"""Post-processing of mask proposals (MASS supplement 6.1): keep the connected component that touches the seed
mask, drop masks below a minimum volume, and of every pair with IoU above a threshold drop one at random."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mass_nn.boxes import tight_box
from mass_nn.masks.proposal import MaskProposal


def keep_component_touching_seed(mask: np.ndarray, seed_mask: np.ndarray) -> np.ndarray:
    """Of the 26-connected components of `mask`, the largest one sharing a voxel with `seed_mask` (same shape);
    an empty mask when none touches it."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    touching = np.unique(components[seed_mask & (components > 0)])
    if touching.size == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    keep = touching[np.argmax(sizes[touching])]
    return components == keep


def drop_small(proposals: list[MaskProposal], min_voxels: int) -> list[MaskProposal]:
    return [p for p in proposals if p.voxels >= min_voxels]


def _overlap(box_a, box_b):
    lo = [max(a[0], b[0]) for a, b in zip(box_a, box_b)]
    hi = [min(a[1], b[1]) for a, b in zip(box_a, box_b)]
    return None if any(h <= l for l, h in zip(lo, hi)) else tuple(zip(lo, hi))


def _intersection(a: MaskProposal, b: MaskProposal) -> int:
    region = _overlap(a.box, b.box)
    if region is None:
        return 0
    crop_a = a.crop[tuple(slice(l - o[0], h - o[0]) for (l, h), o in zip(region, a.box))]
    crop_b = b.crop[tuple(slice(l - o[0], h - o[0]) for (l, h), o in zip(region, b.box))]
    return int(np.count_nonzero(crop_a & crop_b))


def deduplicate(proposals: list[MaskProposal], iou_threshold: float = 0.9, seed: int = 0) -> list[MaskProposal]:
    """Visit masks in a seeded random order and keep each one unless its IoU with a kept mask exceeds the
    threshold, so of every near-duplicate pair one survives, chosen at random. Only masks whose sizes and
    bounding boxes allow an IoU above the threshold are compared."""
    order = np.random.default_rng(seed).permutation(len(proposals))
    kept: list[MaskProposal] = []
    kept_sizes: list[int] = []
    for index in order:
        candidate = proposals[index]
        size = candidate.voxels
        duplicate = False
        for other, other_size in zip(kept, kept_sizes):
            if min(size, other_size) <= iou_threshold * max(size, other_size):
                continue  # IoU <= small/large <= threshold
            inter = _intersection(candidate, other)
            if inter > iou_threshold * (size + other_size - inter):
                duplicate = True
                break
        if not duplicate:
            kept.append(candidate)
            kept_sizes.append(size)
    return kept


def crop_to_content(proposal: MaskProposal) -> MaskProposal | None:
    """The same mask with its box shrunk to its voxels (None when empty)."""
    box = tight_box(proposal.crop)
    if box is None:
        return None
    offset = [b[0] for b in proposal.box]
    proposal.crop = proposal.crop[tuple(slice(a, b) for a, b in box)]
    proposal.box = tuple((a + o, b + o) for (a, b), o in zip(box, offset))
    return proposal
