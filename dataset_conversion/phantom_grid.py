"""The voxel grid of one phantom case and the map from its voxels to the phantom's canonical anatomy frame.

Canonical frame: millimetres, origin at the body centre, axes (z, y, x) as in the image with identity
direction in LPS, so +z is superior, +y posterior and +x the patient's left. Each case places the anatomy in
its grid with a random similarity transform (small rotation, scale, shift) plus a smooth random displacement,
so the same canonical layout lands differently, and slightly deformed, in every case.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataset_conversion.phantom_shapes import Coords, random_rotation, smooth_random_field

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class CaseGrid:
    """A case's voxel grid and the canonical coordinates of each of its voxels."""

    spacing_zyx_mm: tuple[float, float, float]
    axes_mm: Coords  # 1D voxel-centre positions along z, y, x relative to the grid centre
    canonical: Coords  # canonical (z, y, x) of every voxel, float32 arrays of the grid's shape
    rotation: np.ndarray  # canonical -> grid axes
    scale: float
    shift_mm: np.ndarray
    max_displacement_mm: float

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(len(a) for a in self.axes_mm)

    def box(self, centre_mm, half_extent_mm) -> Box:
        """Index box that holds every voxel whose canonical point lies within `half_extent_mm` (scalar or per
        axis) of `centre_mm`; the margin covers the displacement field, so shapes inside are never cut."""
        reach = np.broadcast_to(np.asarray(half_extent_mm, float), (3,)) + self.max_displacement_mm + 1.0
        corners = np.array(np.meshgrid(*[[c - r, c + r] for c, r in zip(centre_mm, reach)],
                                       indexing="ij")).reshape(3, -1)
        grid_points = self.scale * (self.rotation @ corners) + self.shift_mm[:, None]
        box = []
        for axis, spacing, low, high in zip(self.axes_mm, self.spacing_zyx_mm, grid_points.min(1),
                                            grid_points.max(1)):
            start = int(np.clip(np.floor((low - axis[0]) / spacing), 0, len(axis)))
            stop = int(np.clip(np.ceil((high - axis[0]) / spacing) + 1, 0, len(axis)))
            box.append(slice(start, stop))
        return tuple(box)

    def box_around(self, *shapes) -> Box:
        """The smallest box holding the boxes of all `shapes` (anything with centre_mm and half_extent_mm)."""
        boxes = [self.box(shape.centre_mm, shape.half_extent_mm) for shape in shapes]
        return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(3))

    def axes_in(self, box: Box) -> Coords:
        """The 1D grid axes (mm) restricted to `box`."""
        return tuple(axis[s] for axis, s in zip(self.axes_mm, box))

    def to_grid_mm(self, canonical_point_mm) -> np.ndarray:
        """Grid position of a canonical point, ignoring the small displacement field."""
        return self.scale * (self.rotation @ np.asarray(canonical_point_mm, float)) + self.shift_mm

    def coords(self, box: Box) -> Coords:
        """Canonical coordinates of the voxels in `box` (views, no copy)."""
        return tuple(c[box] for c in self.canonical)

    def grid_coords(self, box: Box) -> Coords:
        """Grid (scanner) coordinates of the voxels in `box`, broadcastable arrays; gravity acts along +y."""
        z, y, x = self.axes_in(box)
        return z[:, None, None], y[None, :, None], x[None, None, :]


def make_case_grid(spacing_zyx_mm, field_of_view_zyx_mm, rng: np.random.Generator,
                   max_displacement_mm: float = 4.0) -> CaseGrid:
    """A grid covering `field_of_view_zyx_mm` at `spacing_zyx_mm` with a random anatomy pose and deformation."""
    axes = []
    for spacing, fov in zip(spacing_zyx_mm, field_of_view_zyx_mm):
        count = int(round(fov / spacing))
        axes.append(((np.arange(count) - (count - 1) / 2) * spacing).astype(np.float32))
    rotation = random_rotation(rng, (6.0, 3.0, 3.0))
    scale = float(rng.uniform(0.93, 1.05))
    shift = rng.uniform(-1, 1, 3) * np.array([8.0, 4.0, 4.0])
    # The displacement amplitude is capped so that `box` margins stay valid.
    displacement_mm = [np.clip(smooth_random_field(axes, rng, 70.0) * (max_displacement_mm / 2.5),
                               -max_displacement_mm, max_displacement_mm) for _ in range(3)]
    inverse = rotation.T / scale
    canonical = []
    for i in range(3):
        terms = [(inverse[i, j] * (axes[j] - shift[j])).astype(np.float32) for j in range(3)]
        canonical.append(terms[0][:, None, None] + terms[1][None, :, None] + terms[2][None, None, :]
                         + displacement_mm[i])
    return CaseGrid(tuple(float(s) for s in spacing_zyx_mm), tuple(axes), tuple(canonical), rotation, scale,
                    shift, max_displacement_mm)
