"""Geometric building blocks of the phantom: rotations, smooth random fields and implicit shapes.

Shapes are implicit functions of coordinate arrays (z, y, x in mm, all of one shape). Each returns a
*normalised radius* that is below 1 inside the shape and grows outwards, so a shape's core, shell or halo
is a threshold of the same function and never needs a second evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


def rotation_matrix(angles_rad: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation acting on (z, y, x) column vectors: about z, then y, then x by the given angles."""
    az, ay, ax = angles_rad
    cz, sz, cy, sy, cx, sx = np.cos(az), np.sin(az), np.cos(ay), np.sin(ay), np.cos(ax), np.sin(ax)
    about_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    return about_x @ about_y @ about_z


def random_rotation(rng: np.random.Generator, max_angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation with each angle uniform in [-max, max] degrees."""
    angles = [np.deg2rad(rng.uniform(-m, m)) for m in max_angles_deg]
    return rotation_matrix(tuple(angles))


def _gaussian_basis(axis_mm: np.ndarray, spacing_mm: float) -> np.ndarray:
    """(len(axis), K) bumps of width `spacing_mm` centred every `spacing_mm`, covering the axis plus a margin."""
    centres = np.arange(axis_mm.min() - spacing_mm, axis_mm.max() + 2 * spacing_mm, spacing_mm)
    return np.exp(-0.5 * ((axis_mm[:, None] - centres[None, :]) / spacing_mm) ** 2).astype(np.float32)


def smooth_random_field(axes_mm: Coords, rng: np.random.Generator, wavelength_mm: float) -> np.ndarray:
    """Zero-mean, unit-std random field on the grid spanned by the 1D `axes_mm` (z, y, x).

    The field is a tensor product of Gaussian bumps spaced `wavelength_mm / 2` apart with normal weights, so it
    varies on the scale of `wavelength_mm` whatever the voxel spacing, and costs a few multiply-adds per voxel.
    """
    bases = [_gaussian_basis(np.asarray(a, np.float32), wavelength_mm / 2) for a in axes_mm]
    weights = rng.standard_normal(tuple(b.shape[1] for b in bases)).astype(np.float32)
    # Contract one axis at a time with matrix products: O(voxels x basis size), and BLAS-fast.
    field = weights @ bases[2].T
    field = bases[1] @ field
    field = (bases[0] @ field.reshape(len(weights), -1)).reshape(tuple(len(b) for b in bases))
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


@dataclass(frozen=True)
class Ellipsoid:
    """A rotated ellipsoid whose surface is pushed in and out by a smooth function of direction.

    `bumps` (9 values) weigh low-order polynomials of the unit direction that are bounded by 1, so their
    absolute sum bounds the relative surface displacement.
    """

    centre_mm: np.ndarray
    radii_mm: np.ndarray
    rotation: np.ndarray
    bumps: np.ndarray

    @property
    def half_extent_mm(self) -> float:
        """Radius of a sphere around the centre that contains the whole shape."""
        return float(self.radii_mm.max() * (1.0 + np.abs(self.bumps).sum()))

    def local_coords(self, coords: Coords) -> Coords:
        """Coordinates in the ellipsoid's frame, scaled so the unperturbed surface is the unit sphere."""
        offsets = [c - float(m) for c, m in zip(coords, self.centre_mm)]
        rows = self.rotation.T
        return tuple(sum(float(rows[i, j]) * offsets[j] for j in range(3)) / float(self.radii_mm[i])
                     for i in range(3))

    def normalised_radius(self, coords: Coords) -> np.ndarray:
        """Distance from the centre relative to the bumpy surface in the same direction (1 on the surface)."""
        u, v, w = self.local_coords(coords)
        radius = np.sqrt(u * u + v * v + w * w) + 1e-6
        nu, nv, nw = u / radius, v / radius, w / radius
        b = [float(x) for x in self.bumps]
        surface = (1.0 + b[0] * nu + b[1] * nv + b[2] * nw + b[3] * nu * nv + b[4] * nu * nw + b[5] * nv * nw
                   + b[6] * (nu * nu - nv * nv) + b[7] * (nv * nv - nw * nw) + b[8] * nu * nv * nw)
        return radius / surface


def random_ellipsoid(rng: np.random.Generator, centre_mm, radii_mm, centre_jitter_mm: float = 4.0,
                     radius_jitter: float = 0.12, max_angles_deg=(10.0, 10.0, 10.0), bumpiness: float = 0.05,
                     base_rotation: np.ndarray | None = None) -> Ellipsoid:
    """An ellipsoid near the nominal `centre_mm` / `radii_mm`, with random pose, size and surface bumps.

    `bumpiness` bounds each of the 9 bump weights; it must stay below 1/9 so the surface never folds over.
    """
    if not 0 <= bumpiness < 1 / 9:
        raise ValueError(f"bumpiness must lie in [0, 1/9), got {bumpiness}")
    centre = np.asarray(centre_mm, float) + rng.normal(0.0, centre_jitter_mm, 3)
    radii = np.asarray(radii_mm, float) * rng.uniform(1 - radius_jitter, 1 + radius_jitter, 3)
    rotation = random_rotation(rng, max_angles_deg)
    if base_rotation is not None:
        rotation = base_rotation @ rotation
    bumps = rng.uniform(-bumpiness, bumpiness, 9)
    return Ellipsoid(centre, radii, rotation, bumps)


@dataclass(frozen=True)
class Tube:
    """A tube around a gently wiggling centreline from `start_mm` to `end_mm`, radius tapering linearly.

    The centreline is the straight segment plus `wiggle_mm` sine offsets perpendicular to it; distances are
    measured to the wiggled point at the same position along the segment, which is exact enough for wiggles
    that are small compared with the segment length.
    """

    start_mm: np.ndarray
    end_mm: np.ndarray
    start_radius_mm: float
    end_radius_mm: float
    wiggle_mm: np.ndarray  # (2,) amplitudes along the two perpendicular directions
    wiggle_phase: np.ndarray  # (2,) radians

    @property
    def half_extent_mm(self) -> float:
        """Radius of a sphere around `centre_mm` that contains the whole tube."""
        length = float(np.linalg.norm(self.end_mm - self.start_mm))
        return length / 2 + max(self.start_radius_mm, self.end_radius_mm) + float(np.abs(self.wiggle_mm).sum())

    @property
    def centre_mm(self) -> np.ndarray:
        return (self.start_mm + self.end_mm) / 2

    def _frame(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Unit direction, two unit normals completing an orthonormal frame, and the segment length."""
        axis = self.end_mm - self.start_mm
        length = float(np.linalg.norm(axis))
        direction = axis / length
        helper = np.array([1.0, 0.0, 0.0]) if abs(direction[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        normal = np.cross(direction, helper)
        normal /= np.linalg.norm(normal)
        return direction, normal, np.cross(direction, normal), length

    def normalised_radius(self, coords: Coords) -> np.ndarray:
        """Distance to the centreline relative to the local radius (1 on the tube wall)."""
        direction, normal, binormal, length = self._frame()
        offsets = [c - float(s) for c, s in zip(coords, self.start_mm)]
        along = np.clip(sum(float(direction[i]) * offsets[i] for i in range(3)) / length, 0.0, 1.0)
        bend = np.sin(np.pi * along)
        shift_n = self.wiggle_mm[0] * bend * np.sin(2 * np.pi * along + self.wiggle_phase[0])
        shift_b = self.wiggle_mm[1] * bend * np.sin(2 * np.pi * along + self.wiggle_phase[1])
        squared = 0.0
        for i in range(3):
            centre_i = length * along * direction[i] + shift_n * normal[i] + shift_b * binormal[i]
            squared = squared + (offsets[i] - centre_i) ** 2
        radius = self.start_radius_mm + (self.end_radius_mm - self.start_radius_mm) * along
        return np.sqrt(squared) / radius


def elliptic_cylinder_radius(y: np.ndarray, x: np.ndarray, centre_yx_mm, radii_yx_mm) -> np.ndarray:
    """Normalised radius of an elliptic cylinder along z (below 1 inside)."""
    return np.sqrt(((y - centre_yx_mm[0]) / radii_yx_mm[0]) ** 2 + ((x - centre_yx_mm[1]) / radii_yx_mm[1]) ** 2)
