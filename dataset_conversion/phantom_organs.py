"""The phantom's abdominal organs and vessels, placed in the canonical frame (see phantom_grid).

Nominal centres and radii (z, y, x in mm; +x is the patient's left) fix the layout shared by all cases; each
case draws its own pose, size and surface bumps around them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dataset_conversion.phantom_body import Trunk
from dataset_conversion.phantom_grid import CaseGrid
from dataset_conversion.phantom_shapes import Ellipsoid, Tube, random_ellipsoid, rotation_matrix, smooth_random_field
from dataset_conversion.phantom_tissues import MAX_LESIONS, PHANTOM_LABELS, Canvas, Tissue

LIVER, SPLEEN, STOMACH, BLADDER = (PHANTOM_LABELS[n] for n in ("liver", "spleen", "stomach", "bladder"))
HEPATIC_VESSELS, LESION, AORTA = (PHANTOM_LABELS[n] for n in ("hepatic_vessels", "liver_lesion", "aorta"))


@dataclass(frozen=True)
class Liver:
    """Two lobes minus a large ellipsoid below and medial to them, which carves the concave lower surface
    and leaves the right lobe's tip hanging down laterally."""

    right_lobe: Ellipsoid
    left_lobe: Ellipsoid
    lower_cut: Ellipsoid

    def inside(self, coords) -> np.ndarray:
        lobes = (self.right_lobe.normalised_radius(coords) < 1) | (self.left_lobe.normalised_radius(coords) < 1)
        return lobes & (self.lower_cut.normalised_radius(coords) >= 1)


def _shell(normalised_radius: np.ndarray, shape: Ellipsoid, thickness_mm: float) -> np.ndarray:
    """Voxels within roughly `thickness_mm` inside the surface of `shape`."""
    return (normalised_radius < 1) & (normalised_radius >= 1 - thickness_mm / float(shape.radii_mm.min()))


def _tube(rng: np.random.Generator, start, end, radii_mm, wiggle_mm: float) -> Tube:
    return Tube(np.asarray(start, float), np.asarray(end, float), float(radii_mm[0]), float(radii_mm[1]),
                rng.uniform(-wiggle_mm, wiggle_mm, 2), rng.uniform(0, 2 * np.pi, 2))


def _paint_tube(grid: CaseGrid, canvas: Canvas, tube: Tube, tissue: Tissue, label: int | None,
                within_labels: tuple[int, ...] | None = None) -> None:
    box = grid.box(tube.centre_mm, tube.half_extent_mm)
    canvas.paint(box, tube.normalised_radius(grid.coords(box)) < 1, tissue, label, within_labels)


def render_bowel(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator, trunk: Trunk) -> None:
    """Unlabelled bowel loops (wall, content, gas pockets) filling the lower anterior cavity: thresholds of
    smooth random fields, so their shape differs completely between cases."""
    box = grid.box((-25.0, -20.0, 0.0), (65.0, 45.0, 70.0))
    loops = smooth_random_field(grid.axes_in(box), rng, 24.0)
    gas = smooth_random_field(grid.axes_in(box), rng, 14.0)
    z, y, x = grid.coords(box)
    # Fade the loops out above z = 20 mm and behind y = 5 mm instead of cutting them along flat planes; the
    # fade reaches 4 field standard deviations before the box ends, so the box never cuts a loop.
    loops -= 0.2 * (np.maximum(z - 20.0, 0.0) + np.maximum(y - 5.0, 0.0))
    region = (trunk.cavity_radius(y, x) < 0.97) & (canvas.tissue[box] == Tissue.FAT_VISCERAL)
    canvas.paint(box, region & (loops > 0.2), Tissue.BOWEL_WALL)
    canvas.paint(box, region & (loops > 0.75), Tissue.BOWEL_CONTENT)
    canvas.paint(box, region & (loops > 0.75) & (gas > 1.3), Tissue.BOWEL_GAS)


def render_liver(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator, trunk: Trunk) -> Liver:
    """Liver: a large right lobe and a flatter left lobe reaching across the midline, clipped by the cavity."""
    right_lobe = random_ellipsoid(rng, (40.0, -2.0, -27.0), (38.0, 35.0, 34.0), bumpiness=0.08)
    left_lobe = random_ellipsoid(rng, (52.0, -24.0, 2.0), (12.0, 13.0, 27.0), bumpiness=0.1)
    lower_cut = random_ellipsoid(rng, right_lobe.centre_mm + np.array([-48.0, 0.0, 30.0]), (42.0, 60.0, 40.0),
                                 centre_jitter_mm=5.0, bumpiness=0.04)
    liver = Liver(right_lobe, left_lobe, lower_cut)
    box = grid.box_around(right_lobe, left_lobe)
    coords = grid.coords(box)
    inside = liver.inside(coords) & (trunk.cavity_radius(coords[1], coords[2]) < 1)
    canvas.paint(box, inside, Tissue.LIVER, LIVER)
    return liver


def render_gallbladder_and_cava(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator) -> None:
    """Unlabelled look-alikes that cut into the liver: the fluid-filled gallbladder (absent in some cases,
    as after cholecystectomy) and the inferior vena cava, a vein that runs through the liver's back."""
    if rng.uniform() < 0.8:
        gallbladder = random_ellipsoid(rng, (14.0, -22.0, -24.0), (15.0, 8.0, 8.0), max_angles_deg=(20, 20, 20))
        box = grid.box(gallbladder.centre_mm, gallbladder.half_extent_mm)
        canvas.paint(box, gallbladder.normalised_radius(grid.coords(box)) < 1, Tissue.GALLBLADDER, 0)
    cava = _tube(rng, np.array([-40.0, -1.0, -15.0]) + rng.normal(0, 2, 3),
                 np.array([70.0, 6.0, -12.0]) + rng.normal(0, 2, 3), rng.uniform(7.0, 9.5, 2), 3.0)
    _paint_tube(grid, canvas, cava, Tissue.VEIN, 0)


def render_spleen(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator, trunk: Trunk) -> None:
    """Spleen: a crescent-like flattened ellipsoid against the left posterolateral wall, with a hilum notch."""
    base = rotation_matrix((np.deg2rad(-35.0), 0.0, 0.0))
    spleen = random_ellipsoid(rng, (38.0, 18.0, 38.0), (24.0, 20.0, 9.0), base_rotation=base, bumpiness=0.08)
    # Keep the centre well inside the cavity, which clips the spleen: otherwise jitter can push most of it out.
    depth = float(trunk.cavity_radius(np.array(spleen.centre_mm[1]), np.array(spleen.centre_mm[2])))
    if depth > 0.8:
        spleen = replace(spleen, centre_mm=spleen.centre_mm * np.array([1.0, 0.8 / depth, 0.8 / depth]))
    notch_centre = spleen.centre_mm + spleen.rotation @ np.array([0.0, 0.0, -1.2 * spleen.radii_mm[2]])
    notch = Ellipsoid(notch_centre, spleen.radii_mm * np.array([0.45, 0.5, 0.6]), spleen.rotation, np.zeros(9))
    box = grid.box(spleen.centre_mm, spleen.half_extent_mm)
    coords = grid.coords(box)
    inside = (spleen.normalised_radius(coords) < 1) & (notch.normalised_radius(coords) >= 1) \
        & (trunk.cavity_radius(coords[1], coords[2]) < 1)
    canvas.paint(box, inside, Tissue.SPLEEN, SPLEEN)


def render_stomach(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator) -> None:
    """Stomach: enhancing wall around fluid content with an air pocket above a horizontal air-fluid level."""
    stomach = random_ellipsoid(rng, (34.0, -10.0, 26.0), (20.0, 14.0, 16.0), max_angles_deg=(25, 15, 15),
                               bumpiness=0.1)
    box = grid.box(stomach.centre_mm, stomach.half_extent_mm)
    radius = stomach.normalised_radius(grid.coords(box))
    wall_mm = rng.uniform(2.5, 4.0)
    canvas.paint(box, radius < 1, Tissue.STOMACH_CONTENT, STOMACH)
    canvas.paint(box, _shell(radius, stomach, wall_mm), Tissue.STOMACH_WALL, STOMACH)
    # Gas rises against gravity: towards -y in the scanner frame of a supine patient.
    _, grid_y, _ = grid.grid_coords(box)
    level_y = grid.to_grid_mm(stomach.centre_mm)[1] - rng.uniform(0.0, 0.7) * stomach.radii_mm[1]
    gas = (radius < 1 - wall_mm / float(stomach.radii_mm.min())) & (grid_y < level_y)
    canvas.paint(box, gas, Tissue.STOMACH_GAS, STOMACH)


def render_kidneys(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator) -> None:
    """Kidneys: bean shapes (ellipsoid minus a medial hilum notch) with cortex, medulla and sinus fat;
    the right kidney sits lower (pushed down by the liver)."""
    for side, name, nominal_z in ((1, "kidney_left", 6.0), (-1, "kidney_right", -4.0)):
        base = rotation_matrix((np.deg2rad(side * 25.0), np.deg2rad(side * 12.0), 0.0))
        kidney = random_ellipsoid(rng, (nominal_z, 18.0, side * 36.0), (23.0, 12.0, 10.0), base_rotation=base)
        medial = kidney.rotation @ np.array([0.0, 0.0, -side * 1.0])
        notch = Ellipsoid(kidney.centre_mm + medial * kidney.radii_mm[2] * 1.05,
                          kidney.radii_mm * np.array([0.35, 0.45, 0.5]), kidney.rotation, np.zeros(9))
        sinus = Ellipsoid(kidney.centre_mm + medial * kidney.radii_mm[2] * 0.35,
                          kidney.radii_mm * np.array([0.5, 0.4, 0.4]), kidney.rotation, kidney.bumps)
        box = grid.box(kidney.centre_mm, kidney.half_extent_mm)
        coords = grid.coords(box)
        radius = kidney.normalised_radius(coords)
        inside = (radius < 1) & (notch.normalised_radius(coords) >= 1)
        label = PHANTOM_LABELS[name]
        canvas.paint(box, inside, Tissue.KIDNEY_CORTEX, label)
        canvas.paint(box, inside & (radius < rng.uniform(0.65, 0.78)), Tissue.KIDNEY_MEDULLA, label)
        canvas.paint(box, inside & (sinus.normalised_radius(coords) < 1), Tissue.KIDNEY_SINUS, label)


def render_bladder(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator) -> None:
    """Bladder: urine inside a thin wall; its filling (size) varies a lot between cases."""
    filling = rng.uniform(0.7, 1.2)
    bladder = random_ellipsoid(rng, (-60.0, -14.0, 0.0), np.array([15.0, 17.0, 22.0]) * filling, bumpiness=0.08)
    box = grid.box(bladder.centre_mm, bladder.half_extent_mm)
    radius = bladder.normalised_radius(grid.coords(box))
    canvas.paint(box, radius < 1, Tissue.URINE, BLADDER)
    canvas.paint(box, _shell(radius, bladder, rng.uniform(2.0, 3.5)), Tissue.BLADDER_WALL, BLADDER)


def render_aorta(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator) -> None:
    """Aorta along the front of the spine, splitting into the two common iliac arteries in the pelvis."""
    top = np.array([90.0, -3.0, 5.0]) + rng.normal(0, 2, 3)
    bifurcation = np.array([-32.0, -6.0, 3.0]) + rng.normal(0, 3, 3)
    aorta_radius = rng.uniform(6.0, 8.5)
    _paint_tube(grid, canvas, _tube(rng, top, bifurcation, (aorta_radius, aorta_radius * 0.85), 4.0),
                Tissue.ARTERY, AORTA)
    for side in (-1, 1):
        end = np.array([-90.0, 8.0, side * 32.0]) + rng.normal(0, 3, 3)
        radii = (aorta_radius * 0.7, aorta_radius * rng.uniform(0.5, 0.6))
        _paint_tube(grid, canvas, _tube(rng, bifurcation, end, radii, 4.0), Tissue.ARTERY, AORTA)


def _point_in(shape: Ellipsoid, rng: np.random.Generator, min_fraction: float, max_fraction: float) -> np.ndarray:
    """A random point of `shape` at a normalised radius between the two fractions."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    local = direction * rng.uniform(min_fraction, max_fraction) * shape.radii_mm
    return shape.centre_mm + shape.rotation @ local


def render_hepatic_vessels(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator, liver: Liver) -> None:
    """A portal-like vessel tree inside the liver: a trunk from the hilum, primary branches towards the lobes,
    two thinner secondary branches each; painted only over liver voxels."""
    hilum = liver.right_lobe.centre_mm + np.array([-14.0, 6.0, 14.0]) + rng.normal(0, 2, 3)
    trunk_end = hilum + np.array([6.0, -2.0, -8.0]) + rng.normal(0, 2, 3)
    radius = rng.uniform(4.0, 5.5)
    tubes = [_tube(rng, hilum, trunk_end, (radius, radius * 0.9), 1.5)]
    branch_targets = [(liver.right_lobe, _point_in(liver.right_lobe, rng, 0.4, 0.6)),
                      (liver.right_lobe, _point_in(liver.right_lobe, rng, 0.4, 0.6)),
                      (liver.left_lobe, _point_in(liver.left_lobe, rng, 0.0, 0.3))]
    for lobe, target in branch_targets:
        tubes.append(_tube(rng, trunk_end, target, (radius * 0.7, radius * 0.5), 3.0))
        for _ in range(2):
            tubes.append(_tube(rng, target, _point_in(lobe, rng, 0.7, 0.95), (radius * 0.45, radius * 0.3), 3.0))
    for tube in tubes:
        _paint_tube(grid, canvas, tube, Tissue.PORTAL_VESSEL, HEPATIC_VESSELS,
                    within_labels=(LIVER, HEPATIC_VESSELS))


def _point_in_liver(liver: Liver, rng: np.random.Generator, max_fraction: float, tries: int = 20) -> np.ndarray:
    """A random point well inside a lobe (75 % right lobe) that the lower cut has not removed."""
    for _ in range(tries):
        lobe = liver.right_lobe if rng.uniform() < 0.75 else liver.left_lobe
        point = _point_in(lobe, rng, 0.0, max_fraction)
        if liver.inside(tuple(np.array([c]) for c in point))[0]:
            return point
    return liver.right_lobe.centre_mm


def render_lesions(grid: CaseGrid, canvas: Canvas, rng: np.random.Generator, liver: Liver) -> None:
    """0-3 small round lesions inside the liver, each with its own tissue (LESION_0, ...) so that it gets
    its own contrast; painted only over liver and vessel voxels."""
    for index in range(int(rng.integers(0, MAX_LESIONS + 1))):
        centre = _point_in_liver(liver, rng, 0.6)
        radius_mm = rng.uniform(3.5, 9.0)
        lesion = random_ellipsoid(rng, centre, (radius_mm,) * 3, centre_jitter_mm=0.0, radius_jitter=0.2,
                                  max_angles_deg=(90, 90, 90), bumpiness=0.1)
        box = grid.box(lesion.centre_mm, lesion.half_extent_mm)
        canvas.paint(box, lesion.normalised_radius(grid.coords(box)) < 1, Tissue(Tissue.LESION_0 + index), LESION,
                     within_labels=(LIVER, HEPATIC_VESSELS, LESION))
