"""What a mask generator receives for one case and what it returns.

Masks travel as a bounding box plus the boolean crop inside it, so a case with a thousand masks never holds a
thousand full-size volumes in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mass_nn.boxes import Box, tight_box



@dataclass
class CaseInput:
    """One preprocessed case as generators see it (all arrays on the preprocessed grid, numpy order)."""

    case_id: str
    windowed: np.ndarray  # uint8 (3, z, y, x): the plan's three windows of the chosen channel
    spacing_zyx_mm: tuple[float, float, float]
    mask_axis: int  # SAM2 slice axis (from the case's original spacing)
    seed_slice_interval: int  # along mask_axis, on this grid
    label: np.ndarray | None = None  # int (z, y, x), only for the `labels` generator and quality reports

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.windowed.shape[1:])


@dataclass
class MaskProposal:
    """One binary 3D mask: `crop` is the boolean content of `box` on the case grid."""

    box: Box
    crop: np.ndarray
    generator: str
    score: float = 1.0
    axis: int | None = None  # slice axis it was seeded on (SAM2), else None
    seed_slice: int | None = None  # index along `axis` of the seed slice, else None
    extra: dict = field(default_factory=dict)  # generator-specific, JSON-serialisable (e.g. granularity level)

    @property
    def voxels(self) -> int:
        return int(self.crop.sum())

    def full(self, shape) -> np.ndarray:
        """The mask as a full-size boolean volume of `shape`."""
        out = np.zeros(shape, dtype=bool)
        out[tuple(slice(a, b) for a, b in self.box)] = self.crop
        return out

    @classmethod
    def from_full(cls, mask: np.ndarray, generator: str, **kwargs) -> "MaskProposal | None":
        """Crop a full-size mask to its bounding box; None when the mask is empty."""
        box = tight_box(mask)
        if box is None:
            return None
        return cls(box=box, crop=mask[tuple(slice(a, b) for a, b in box)].copy(), generator=generator, **kwargs)
