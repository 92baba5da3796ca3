"""The `supervoxel` generator: weight-free, class-agnostic 3D mask proposals at several granularities from the
three intensity windows SAM2 would see; the default when no SAM2 checkpoint is given.

Two complementary sources (documentation/mask_generators_weight_free.md):
- merge: watershed supervoxels merged into a hierarchy along their weakest borders; the nodes with the
  strongest outer borders (weighted towards larger nodes) give parts up to organ-scale regions
  (supervoxel_merging.py);
- band: connected components of intensity bands of each window that keep their size when the band widens,
  i.e. structures separated by an intensity gap, such as ribs, vessels and lesions (supervoxel_bands.py).
Each source selects by greedy non-maximum suppression at IoU `nms_iou`; the merge source fills its share of
`max_masks` first and the band source the rest. Output is deterministic (no randomness is involved).

Runtime follows the volume: supervoxels are seeded every `seed_spacing_mm` (their number follows the volume in
mm³), and a grid of more than `max_working_voxels` voxels is analysed on a coarser working grid (integer
block averages along the finest axes) whose masks are repeated back onto the case grid.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from mass_nn.boxes import Box
from mass_nn.errors import MassError
from mass_nn.masks.generators.base import MaskGenerator
from mass_nn.masks.generators.supervoxel_bands import BandSettings, band_components, select_components
from mass_nn.masks.generators.supervoxel_merging import build_hierarchy, gradient_magnitude, node_masks, \
    select_nodes, supervoxels
from mass_nn.masks.proposal import CaseInput, MaskProposal

logger = logging.getLogger(__name__)

OPENINGS = {"none": (False,), "opened": (True,), "both": (False, True)}
GRANULARITY_MM3 = (("small", 5_000.0), ("part", 50_000.0), ("region", math.inf))  # upper volume bounds
BAND_CANDIDATES_PER_MASK = 8  # band components kept (with their crops) per band mask still to select


class SupervoxelGenerator(MaskGenerator):
    """Merge-hierarchy nodes plus stable intensity-band components; see the module docstring."""

    name = "supervoxel"

    def __init__(self, max_masks: int = 1000, band_fraction: float = 0.3, nms_iou: float = 0.7,
                 min_volume_mm3: float = 1000.0, max_volume_fraction: float = 0.5,
                 seed_spacing_mm: float = 12.0, gradient_sigma_mm: float = 1.5, max_merge_rounds: int | None = None,
                 min_border_gradient: float = 2.0,
                 band_levels: int = 8, band_smoothing_mm: float = 1.0, band_min_smoothing_voxels: float = 0.5,
                 band_opening: str = "both", max_working_voxels: int = 3_000_000):
        if band_opening not in OPENINGS:
            raise MassError(f"supervoxel: band_opening must be one of {sorted(OPENINGS)}, got {band_opening!r}")
        if not 0.0 <= band_fraction <= 1.0 or not 0.0 < nms_iou <= 1.0:
            raise MassError(f"supervoxel: band_fraction must be in [0, 1] and nms_iou in (0, 1], got "
                            f"{band_fraction} and {nms_iou}")
        if min(max_masks, max_working_voxels) < 1 or band_levels < 2 or \
                (max_merge_rounds is not None and max_merge_rounds < 1):
            raise MassError("supervoxel: max_masks, max_merge_rounds (or null: until one region is left) and "
                            "max_working_voxels must be >= 1 and band_levels >= 2")
        if min(band_smoothing_mm, band_min_smoothing_voxels) < 0:
            raise MassError(f"supervoxel: band_smoothing_mm and band_min_smoothing_voxels must be >= 0, got "
                            f"{band_smoothing_mm} and {band_min_smoothing_voxels}")
        self.max_masks = int(max_masks)
        self.band_fraction = float(band_fraction)
        self.nms_iou = float(nms_iou)
        self.min_volume_mm3 = float(min_volume_mm3)
        self.max_volume_fraction = float(max_volume_fraction)
        self.seed_spacing_mm = float(seed_spacing_mm)
        self.gradient_sigma_mm = float(gradient_sigma_mm)
        self.max_merge_rounds = None if max_merge_rounds is None else int(max_merge_rounds)
        self.min_border_gradient = float(min_border_gradient)
        self.band_levels = int(band_levels)
        self.band_smoothing_mm = float(band_smoothing_mm)
        self.band_min_smoothing_voxels = float(band_min_smoothing_voxels)
        self.band_opening = band_opening
        self.max_working_voxels = int(max_working_voxels)

    def parameters(self) -> dict:
        return {"max_masks": self.max_masks, "band_fraction": self.band_fraction, "nms_iou": self.nms_iou,
                "min_volume_mm3": self.min_volume_mm3, "max_volume_fraction": self.max_volume_fraction,
                "seed_spacing_mm": self.seed_spacing_mm, "gradient_sigma_mm": self.gradient_sigma_mm,
                "max_merge_rounds": self.max_merge_rounds, "min_border_gradient": self.min_border_gradient,
                "band_levels": self.band_levels,
                "band_smoothing_mm": self.band_smoothing_mm,
                "band_min_smoothing_voxels": self.band_min_smoothing_voxels, "band_opening": self.band_opening,
                "max_working_voxels": self.max_working_voxels}

    def generate(self, case: CaseInput) -> list[MaskProposal]:
        start = time.perf_counter()
        factors = working_factors(case.shape, case.spacing_zyx_mm, self.max_working_voxels)
        windowed = block_mean(case.windowed, factors)
        spacing = tuple(s * f for s, f in zip(case.spacing_zyx_mm, factors))
        voxel_mm3 = float(np.prod(spacing))
        min_voxels = max(1, math.ceil(self.min_volume_mm3 / voxel_mm3))
        max_voxels = int(self.max_volume_fraction * np.prod(windowed.shape[1:]))
        merged = self._merge_masks(windowed, spacing, min_voxels, max_voxels)
        banded = self._band_masks(windowed, spacing, min_voxels, max_voxels, self.max_masks - len(merged))
        proposals = [self._proposal(box, crop, 1.0 - rank / len(source), extra, factors, case)
                     for source in (merged, banded) for rank, (box, crop, extra) in enumerate(source)]
        logger.debug("%s: %d merge + %d band masks in %.1f s (working grid factors %s)", case.case_id,
                     len(merged), len(banded), time.perf_counter() - start, factors)
        return proposals

    def _merge_masks(self, windowed, spacing, min_voxels: int, max_voxels: int) -> list[tuple]:
        budget = round(self.max_masks * (1.0 - self.band_fraction))
        if budget == 0:
            return []
        gradient = gradient_magnitude(windowed, spacing, self.gradient_sigma_mm)
        hierarchy = build_hierarchy(supervoxels(gradient, spacing, self.seed_spacing_mm), gradient,
                                    self.max_merge_rounds)
        size, border = hierarchy.size, hierarchy.mean_border_gradient()
        # no border contrast, no object: watershed borders inside flat regions (air) are arbitrary
        visible = (border > 0) & (border >= self.min_border_gradient)
        candidates = np.flatnonzero((size >= min_voxels) & (size <= max_voxels) & visible)
        # a strong outer border marks an object; the log-size weight keeps whole organs ahead of their parts
        nodes = select_nodes(hierarchy, border * np.log(size), candidates, self.nms_iou, budget)
        return [(box, crop, {"source": "merge", "merge_round": int(hierarchy.merge_round[node]),
                             "border_gradient": round(float(border[node]), 3)})
                for node, (box, crop) in zip(nodes, node_masks(hierarchy, nodes))]

    def _band_masks(self, windowed, spacing, min_voxels: int, max_voxels: int, budget: int) -> list[tuple]:
        if budget <= 0:
            return []
        settings = BandSettings(levels=self.band_levels, smoothing_mm=self.band_smoothing_mm,
                                min_smoothing_voxels=self.band_min_smoothing_voxels,
                                openings=OPENINGS[self.band_opening], min_voxels=min_voxels, max_voxels=max_voxels,
                                keep=BAND_CANDIDATES_PER_MASK * budget)
        components = select_components(band_components(windowed, spacing, settings), self.nms_iou, budget)
        return [(c.box, c.crop, {"source": "band", "window": c.window, "band": list(c.band), "opened": c.opened,
                                 "stability": round(c.stability, 4)}) for c in components]

    def _proposal(self, box: Box, crop: np.ndarray, score: float, extra: dict, factors,
                  case: CaseInput) -> MaskProposal:
        """A mask on the case grid; `score` is its rank within its source (1 = selected first)."""
        box, crop = upsample_mask(box, crop, factors, case.shape)
        volume_mm3 = float(np.count_nonzero(crop)) * float(np.prod(case.spacing_zyx_mm))
        return MaskProposal(box=box, crop=crop, generator=self.name, score=round(score, 4),
                            extra={**extra, "granularity": granularity(volume_mm3)})


def granularity(volume_mm3: float) -> str:
    """Coarse size class of a mask: small (< 5 cm³), part (< 50 cm³) or region."""
    return next(name for name, upper in GRANULARITY_MM3 if volume_mm3 < upper)


def working_factors(shape, spacing_zyx_mm, max_voxels: int) -> tuple[int, int, int]:
    """Integer downsampling factor per axis: the finest axis (then the longest) is coarsened one step at a time
    until the working grid has at most `max_voxels` voxels."""
    factors = [1, 1, 1]

    def working_voxels():
        return math.prod(math.ceil(n / f) for n, f in zip(shape, factors))

    while working_voxels() > max_voxels and any(math.ceil(n / f) > 1 for n, f in zip(shape, factors)):
        axes = [a for a in range(3) if math.ceil(shape[a] / factors[a]) > 1]
        axis = min(axes, key=lambda a: (spacing_zyx_mm[a] * factors[a], -shape[a] / factors[a], a))
        factors[axis] += 1
    return tuple(factors)


def block_mean(windowed: np.ndarray, factors) -> np.ndarray:
    """(3, z, y, x) uint8 averaged over blocks of `factors` voxels (edge blocks padded by replication)."""
    if tuple(factors) == (1, 1, 1):
        return windowed
    pad = [(0, -n % f) for n, f in zip(windowed.shape[1:], factors)]
    out = []
    for channel in windowed:  # one at a time: the float copy of a large volume is the memory peak
        padded = np.pad(channel, pad, mode="edge").astype(np.float32)
        (z, y, x), (fz, fy, fx) = padded.shape, factors
        out.append(np.rint(padded.reshape(z // fz, fz, y // fy, fy, x // fx, fx).mean(axis=(1, 3, 5))))
    return np.stack(out).astype(np.uint8)


def upsample_mask(box: Box, crop: np.ndarray, factors, shape) -> tuple[Box, np.ndarray]:
    """A working-grid mask on the case grid: each voxel repeated `factors` times, clipped to `shape`."""
    if tuple(factors) == (1, 1, 1):
        return box, crop
    for axis, f in enumerate(factors):
        crop = np.repeat(crop, f, axis=axis)
    full_box = tuple((lo * f, min(hi * f, n)) for (lo, hi), f, n in zip(box, factors, shape))
    crop = crop[tuple(slice(0, hi - lo) for lo, hi in full_box)]
    return full_box, np.ascontiguousarray(crop)
