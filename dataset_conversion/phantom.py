"""Synthetic abdominal phantom: a seeded, deterministic CT or MR demo dataset in nnU-Net v2 raw format.

Each case is a small torso (about 160 mm field of view) with 12 labelled structures in a fixed anatomical
layout whose shape, pose, size, contrast, texture, noise and voxel spacing vary from case to case; see
documentation/phantom_dataset.md. Case `i` with seed `s` depends only on (s, i): adding cases never changes
earlier ones, and the CT and MR versions of a case share its anatomy and grid.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dataset_conversion.phantom_appearance import render_ct, render_mr
from dataset_conversion.phantom_body import render_back_muscles, render_psoas, render_ribs, render_trunk, \
    render_vertebrae
from dataset_conversion.phantom_grid import CaseGrid, make_case_grid
from dataset_conversion.phantom_organs import render_aorta, render_bladder, render_bowel, \
    render_gallbladder_and_cava, render_hepatic_vessels, render_kidneys, render_lesions, render_liver, \
    render_spleen, render_stomach
from dataset_conversion.phantom_tissues import PHANTOM_LABELS, Canvas
from mass_nn.io.dataset_json import DatasetJson, dataset_folder_name, save_dataset_json
from mass_nn.io.image_io import ImageGeometry, write_image

__all__ = ["PHANTOM_LABELS", "generate_phantom_case", "write_phantom_dataset", "case_spacing_zyx_mm"]

logger = logging.getLogger(__name__)

MODALITIES = ("CT", "MR")
FILE_ENDING = ".nii.gz"
FIELD_OF_VIEW_ZYX_MM = (160.0, 150.0, 170.0)
# Slice thickness x in-plane spacing; every block of six consecutive cases uses each once (order by seed).
SPACING_CHOICES_ZYX_MM = ((1.5, 1.5, 1.5), (3.0, 1.6, 1.6), (2.0, 2.0, 2.0), (3.5, 1.8, 1.8),
                          (2.5, 2.5, 2.5), (2.5, 1.5, 1.5))
# Independent random streams of a case: np.random.default_rng([seed, case_index, stream]).
_ANATOMY_STREAM, _CT_STREAM, _MR_STREAM, _PLACEMENT_STREAM, _SPACING_STREAM, _GRID_STREAM = 0, 1, 2, 3, 4, 5


def _check_arguments(case_index: int, seed: int, modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if case_index < 0 or seed < 0:
        raise ValueError(f"case_index and seed must be non-negative, got {case_index} and {seed}")


def case_spacing_zyx_mm(case_index: int, seed: int = 0) -> tuple[float, float, float]:
    """Voxel spacing of a case: one of SPACING_CHOICES_ZYX_MM, in-plane spacing jittered by up to 4 %."""
    order = np.random.default_rng([seed, _SPACING_STREAM]).permutation(len(SPACING_CHOICES_ZYX_MM))
    choice = SPACING_CHOICES_ZYX_MM[int(order[case_index % len(order)])]
    in_plane = choice[1] * np.random.default_rng([seed, case_index, _SPACING_STREAM]).uniform(0.96, 1.04)
    return float(choice[0]), round(float(in_plane), 4), round(float(in_plane), 4)


def _render_anatomy(grid: CaseGrid, seed_sequence: np.random.SeedSequence) -> Canvas:
    """Paint every structure in a fixed order; later ones overwrite earlier ones (vessels over organs,
    lesions over liver and vessels).

    Each structure draws from its own child generator, so changing how one structure uses randomness leaves
    all others unchanged (new structures must take children after the existing ones).
    """
    streams = iter([np.random.default_rng(child) for child in seed_sequence.spawn(15)])
    canvas = Canvas(grid.shape_zyx)
    trunk = render_trunk(grid, canvas, next(streams))
    render_back_muscles(grid, canvas, next(streams), trunk)
    render_bowel(grid, canvas, next(streams), trunk)
    render_psoas(grid, canvas, next(streams))
    liver = render_liver(grid, canvas, next(streams), trunk)
    render_gallbladder_and_cava(grid, canvas, next(streams))
    render_spleen(grid, canvas, next(streams), trunk)
    render_stomach(grid, canvas, next(streams))
    render_kidneys(grid, canvas, next(streams))
    render_bladder(grid, canvas, next(streams))
    render_aorta(grid, canvas, next(streams))
    render_vertebrae(grid, canvas, next(streams))
    render_ribs(grid, canvas, next(streams), trunk)
    render_hepatic_vessels(grid, canvas, next(streams), liver)
    render_lesions(grid, canvas, next(streams), liver)
    return canvas


def generate_phantom_case(case_index: int, seed: int = 0, modality: str = "CT"
                          ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Return (image zyx float32, label zyx uint8, spacing_zyx in mm) for one case.

    CT images hold whole Hounsfield units in [-1024, 3071]; MR images non-negative arbitrary units. Labels
    follow PHANTOM_LABELS. The same (case_index, seed, modality) always gives byte-identical arrays.
    """
    _check_arguments(case_index, seed, modality)
    spacing_zyx_mm = case_spacing_zyx_mm(case_index, seed)
    grid = make_case_grid(spacing_zyx_mm, FIELD_OF_VIEW_ZYX_MM,
                          np.random.default_rng([seed, case_index, _GRID_STREAM]))
    canvas = _render_anatomy(grid, np.random.SeedSequence([seed, case_index, _ANATOMY_STREAM]))
    if modality == "CT":
        image = render_ct(canvas.tissue, grid.axes_mm, spacing_zyx_mm,
                          np.random.default_rng([seed, case_index, _CT_STREAM]))
    else:
        image = render_mr(canvas.tissue, grid.axes_mm, spacing_zyx_mm,
                          np.random.default_rng([seed, case_index, _MR_STREAM]))
    return image, canvas.label, spacing_zyx_mm


def _case_geometry(case_index: int, seed: int, shape_zyx, spacing_zyx_mm) -> ImageGeometry:
    """Identity direction; the origin puts the grid centre at a random table position, as scanners do."""
    rng = np.random.default_rng([seed, case_index, _PLACEMENT_STREAM])
    centre_xyz = (rng.uniform(-15.0, 15.0), rng.uniform(-15.0, 15.0), rng.uniform(-700.0, -300.0))
    size_xyz = tuple(int(n) for n in shape_zyx[::-1])
    spacing_xyz = tuple(float(s) for s in spacing_zyx_mm[::-1])
    origin_xyz = tuple(round(float(c - (n - 1) / 2 * s), 3) for c, n, s in zip(centre_xyz, size_xyz, spacing_xyz))
    return ImageGeometry(spacing_xyz, origin_xyz, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size_xyz)


def _write_case(dataset_dir: Path, split: str, case_index: int, seed: int, modality: str) -> None:
    image, label, spacing_zyx_mm = generate_phantom_case(case_index, seed, modality)
    geometry = _case_geometry(case_index, seed, image.shape, spacing_zyx_mm)
    case_id = f"phantom_{case_index:03d}"
    # CT values are whole HU in the int16 range, so int16 storage is lossless (and what scanners write).
    stored = image.astype(np.int16) if modality == "CT" else image
    write_image(stored, geometry, dataset_dir / f"images{split}" / f"{case_id}_0000{FILE_ENDING}")
    write_image(label, geometry, dataset_dir / f"labels{split}" / f"{case_id}{FILE_ENDING}")


def write_phantom_dataset(raw_root: Path, dataset_id: int = 990, num_cases: int = 10, seed: int = 0,
                          modality: str = "CT", num_test_cases: int = 0, name: str | None = None) -> Path:
    """Write Dataset{id:03d}_{name or 'PhantomCT'/'PhantomMR'} under raw_root; return the dataset folder.

    Training cases are phantom_000 .. phantom_{num_cases-1} in imagesTr/labelsTr; test cases continue the
    numbering in imagesTs/labelsTs. Existing files of the same names are replaced (each write is atomic).
    """
    _check_arguments(0, seed, modality)
    if num_cases < 1 or num_test_cases < 0:
        raise ValueError(f"need num_cases >= 1 and num_test_cases >= 0, got {num_cases} and {num_test_cases}")
    dataset_name = name or f"Phantom{modality}"
    dataset_dir = Path(raw_root) / dataset_folder_name(dataset_id, dataset_name)
    for case_index in range(num_cases + num_test_cases):
        _write_case(dataset_dir, "Tr" if case_index < num_cases else "Ts", case_index, seed, modality)
        logger.debug("phantom case %d of %d written", case_index + 1, num_cases + num_test_cases)
    description = (f"Synthetic abdominal {modality} phantom generated by mass_nn (seed {seed}); "
                   f"see documentation/phantom_dataset.md")
    # `phantom_seed` lets callers (e.g. mass_demo) tell whether an existing phantom matches their request.
    save_dataset_json(DatasetJson(channel_names={"0": modality}, num_training=num_cases, file_ending=FILE_ENDING,
                                  labels=dict(PHANTOM_LABELS), name=dataset_name, description=description,
                                  extra={"phantom_seed": seed}),
                      dataset_dir)
    logger.info("wrote %d %s phantom case(s) to %s", num_cases + num_test_cases, modality, dataset_dir)
    return dataset_dir
