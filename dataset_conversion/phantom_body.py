"""The phantom's body and musculoskeletal frame: trunk outline with fat and muscle layers, back muscles,
psoas muscles, the vertebral column and the ribs (all in the canonical frame, see phantom_grid)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataset_conversion.phantom_grid import CaseGrid
from dataset_conversion.phantom_shapes import Tube, elliptic_cylinder_radius
from dataset_conversion.phantom_tissues import PHANTOM_LABELS, Canvas, Tissue


@dataclass(frozen=True)
class Trunk:
    """An elliptic-cylinder abdominal cavity wrapped in a muscle wall and subcutaneous fat; the outline of
    every layer is bent by the same low angular harmonics. The cavity varies little between cases (the
    organs must fit in it); fat thickness, and with it the body outline, varies a lot."""

    cavity_radii_yx_mm: tuple[float, float]
    muscle_mm: float
    fat_mm: float
    harmonics: np.ndarray  # (k, 2): amplitude and phase of harmonics 2..k+1 of the outline

    def _outline_factor(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        angle = np.arctan2(y, x)
        factor = 1.0
        for order, (amplitude, phase) in enumerate(self.harmonics, start=2):
            factor = factor + amplitude * np.cos(order * angle + phase)
        return factor

    def layer_radius(self, y: np.ndarray, x: np.ndarray, outset_mm: float) -> np.ndarray:
        """Normalised radius (below 1 inside) of the cavity outline moved `outset_mm` outwards."""
        radii = (self.cavity_radii_yx_mm[0] + outset_mm, self.cavity_radii_yx_mm[1] + outset_mm)
        return elliptic_cylinder_radius(y, x, (0.0, 0.0), radii) / self._outline_factor(y, x)

    def cavity_radius(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Normalised radius of the abdominal cavity inside the muscle wall."""
        return self.layer_radius(y, x, 0.0)

    @property
    def skin_outset_mm(self) -> float:
        return self.muscle_mm + self.fat_mm


def render_trunk(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator) -> Trunk:
    """Paint skin-to-cavity layers: subcutaneous fat, muscle wall, visceral fat filling the cavity."""
    trunk = Trunk(cavity_radii_yx_mm=(40.0 * rng.uniform(0.96, 1.04), 52.0 * rng.uniform(0.96, 1.04)),
                  muscle_mm=float(rng.uniform(4.0, 7.0)), fat_mm=float(rng.uniform(4.0, 12.0)),
                  harmonics=np.column_stack([rng.uniform(0.0, 0.03, 2), rng.uniform(0, 2 * np.pi, 2)]))
    box = (slice(None),) * 3
    _, y, x = grid.coords(box)
    canvas.paint(box, trunk.layer_radius(y, x, trunk.skin_outset_mm) < 1, Tissue.FAT_SUBCUTANEOUS)
    canvas.paint(box, trunk.layer_radius(y, x, trunk.muscle_mm) < 1, Tissue.MUSCLE)
    canvas.paint(box, trunk.cavity_radius(y, x) < 1, Tissue.FAT_VISCERAL)
    return trunk


def render_back_muscles(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator, trunk: Trunk) -> None:
    """Paraspinal muscles beside the spine (unlabelled: same tissue as the labelled psoas)."""
    for side in (-1, 1):
        centre = (0.0, 36.0 + rng.normal(0, 1.5), side * (19.0 + rng.normal(0, 1.5)))
        radii_yx = (11.0 * rng.uniform(0.85, 1.15), 13.0 * rng.uniform(0.85, 1.15))
        box = grid.box(centre, (120.0, radii_yx[0], radii_yx[1]))
        _, y, x = grid.coords(box)
        inside_body = trunk.layer_radius(y, x, trunk.skin_outset_mm - 2.0) < 1
        inside = (elliptic_cylinder_radius(y, x, centre[1:], radii_yx) < 1) & inside_body
        canvas.paint(box, inside, Tissue.MUSCLE)


def render_psoas(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator) -> None:
    """Two psoas muscles: tapered tubes that run from beside the upper lumbar spine down and outwards."""
    for side in (-1, 1):
        tube = Tube(start_mm=np.array([22.0, 20.0, side * 19.0]) + rng.normal(0, 2.0, 3),
                    end_mm=np.array([-85.0, 2.0, side * 36.0]) + rng.normal(0, 3.0, 3),
                    start_radius_mm=float(rng.uniform(3.0, 5.0)), end_radius_mm=float(rng.uniform(11.0, 15.0)),
                    wiggle_mm=rng.uniform(-3, 3, 2), wiggle_phase=rng.uniform(0, 2 * np.pi, 2))
        box = grid.box(tube.centre_mm, tube.half_extent_mm)
        canvas.paint(box, tube.normalised_radius(grid.coords(box)) < 1, Tissue.MUSCLE, PHANTOM_LABELS["psoas"])


def _posterior_elements(y: np.ndarray, x: np.ndarray, level: np.ndarray, period: float, body_height: float,
                        body_radii_yx: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(bone, canal) masks behind a vertebral body: neural arch ringing the spinal canal, a spinous process
    sloping downwards and two transverse processes. `y`, `x` are relative to the body centre."""
    canal_y = body_radii_yx[0] + 6.0
    canal = np.hypot(y - canal_y, x) / 5.5
    arch = (canal >= 1) & (canal < 1.75) & (y > body_radii_yx[0] - 1.0)
    slanted_level = np.mod(level - 0.35 * np.maximum(y - canal_y, 0.0), period)
    spinous = (np.abs(x) < 2.5) & (y > canal_y + 8.0) & (y < canal_y + 15.0) \
        & (slanted_level > 2.0) & (slanted_level < body_height - 3.0)
    transverse = (np.abs(x) > 8.0) & (np.abs(x) < body_radii_yx[1] + 13.0) & (np.abs(y - canal_y + 2.0) < 3.0) \
        & (level > 0.3 * body_height) & (level < 0.7 * body_height)
    return (level < body_height) & (arch | spinous | transverse), canal < 1


def render_vertebrae(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator) -> None:
    """Stacked vertebrae (labelled: body with a dense cortical shell around marrow, posterior elements) with
    unlabelled discs and spinal canal between and behind them. The column follows a gentle lordosis and
    scoliosis curve; vertebra height, phase and size vary per case."""
    period = rng.uniform(24.0, 28.0)
    body_height = period * rng.uniform(0.74, 0.8)
    phase = rng.uniform(0.0, period)
    radii_yx = (10.0 * rng.uniform(0.9, 1.1), 13.0 * rng.uniform(0.9, 1.1))
    cortex_mm = rng.uniform(1.5, 2.2)
    curve = rng.uniform(-1, 1, 4) * np.array([3.0, 2.0, np.pi, np.pi])
    box = grid.box((0.0, 27.0, 0.0), (120.0, 32.0, 30.0))
    z, y, x = grid.coords(box)
    y = y - (16.0 + curve[0] * np.sin(2 * np.pi * z / 320.0 + curve[2]))
    x = x - curve[1] * np.sin(2 * np.pi * z / 400.0 + curve[3])
    level = np.mod(z - phase, period)  # height within one vertebra + disc period, 0 = lower endplate
    in_body_level = level < body_height
    body = elliptic_cylinder_radius(y, x, (0.0, 0.0), radii_yx) < 1
    marrow_radii_yx = (radii_yx[0] - cortex_mm, radii_yx[1] - cortex_mm)
    marrow = (elliptic_cylinder_radius(y, x, (0.0, 0.0), marrow_radii_yx) < 1) \
        & (level > cortex_mm) & (level < body_height - cortex_mm)
    posterior_bone, canal = _posterior_elements(y, x, level, period, body_height, radii_yx)
    label = PHANTOM_LABELS["vertebrae"]
    canvas.paint(box, body & ~in_body_level, Tissue.DISC, 0)
    canvas.paint(box, body & in_body_level, Tissue.BONE_CORTEX, label)
    canvas.paint(box, marrow, Tissue.BONE_MARROW, label)
    canvas.paint(box, posterior_bone, Tissue.BONE_CORTEX, label)
    canvas.paint(box, canal, Tissue.CSF, 0)


def render_ribs(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator, trunk: Trunk) -> None:
    """Ribs: thin curved bony tubes inside the muscle wall of the upper trunk that slope down anteriorly,
    each with a cortical shell around marrow. Left and right sides are offset independently."""
    pitch = rng.uniform(21.0, 26.0)
    slope_mm_per_rad = rng.uniform(9.0, 14.0)
    top_z = {side: 90.0 + rng.uniform(-6, 6) for side in (-1, 1)}
    end_angle = {side: rng.uniform(1.9, 2.3) for side in (-1, 1)}
    half_height_mm, half_thickness_mm = rng.uniform(3.5, 4.5), rng.uniform(2.2, 2.8)
    box = grid.box((50.0, 0.0, 0.0), (50.0, 80.0, 80.0))
    z, y, x = grid.coords(box)
    side = np.where(x >= 0, 1, -1)
    angle = np.arctan2(np.abs(x), y)  # 0 at the back, pi at the front
    start_angle = 0.45
    z_top = np.where(side > 0, top_z[1], top_z[-1])
    descent = z_top - slope_mm_per_rad * (angle - start_angle)
    rib_index = np.round((descent - z) / pitch)
    rib_z = descent - rib_index * pitch
    wall_radius = trunk.layer_radius(y, x, trunk.muscle_mm / 2)
    distance_from_centre = np.hypot(y, x)
    radial_mm = distance_from_centre * (1.0 - 1.0 / np.maximum(wall_radius, 1e-3))
    rib_radius = np.hypot(radial_mm / half_thickness_mm, (z - rib_z) / half_height_mm)
    span = (angle > start_angle) & (angle < np.where(side > 0, end_angle[1], end_angle[-1])) \
        & (rib_z > 5.0) & (rib_index >= 0)
    label = PHANTOM_LABELS["ribs"]
    canvas.paint(box, span & (rib_radius < 1), Tissue.BONE_CORTEX, label)
    canvas.paint(box, span & (rib_radius < 0.5), Tissue.BONE_MARROW, label)
