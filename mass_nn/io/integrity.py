"""Dataset integrity check: run before planning, reports every problem at once (file name + fix)."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from mass_nn.errors import DatasetIntegrityError, MassError
from mass_nn.io.dataset_json import CHANNEL_SUFFIX, CaseFiles, DatasetJson, list_cases, load_dataset_json
from mass_nn.io.image_io import ImageGeometry, read_image
from mass_nn.parallel import run_per_item

logger = logging.getLogger(__name__)


def _check_image(path: Path) -> tuple[list[str], ImageGeometry | None, np.ndarray | None]:
    """Problems of one image file, its geometry and voxels (None if it cannot be used). The reader itself refuses
    unreadable, truncated, non-3D and NaN/inf files and unphysical geometry (image_file_checks.py)."""
    try:
        array, geometry = read_image(path)
    except MassError as err:
        return [f"{err}"], None, None
    return [], geometry, array


def _check_label(path: Path, allowed_values: set[int] | None) -> tuple[list[str], object, list[str]]:
    problems, geometry, array = _check_image(path)
    if geometry is None or problems:
        return problems, geometry, []
    values = np.unique(array)
    warnings = [f"{path}: the label map is all background; the case counts as labelled with no structure "
                f"(fine for a healthy case; otherwise fix the file)"] if values.size == 1 and values[0] == 0 else []
    if not np.all(values == np.round(values)):
        problems.append(f"{path}: label values are not integers; labels must be an integer map (0 = background)")
    elif allowed_values is not None:
        unknown = sorted(int(v) for v in values if int(v) not in allowed_values)
        if unknown:
            problems.append(f"{path}: label value(s) {unknown} are not in dataset.json 'labels' "
                            f"{sorted(allowed_values)}; add them to 'labels' or fix the label map")
    return problems, geometry, warnings


def check_case(case: CaseFiles, num_channels: int, allowed_values: set[int] | None
               ) -> tuple[list[str], list[str]]:
    """(problems, warnings) of one case. Problems: channel geometry agreement, label geometry and values, voxel
    values. Warnings (legal but suspicious): an all-background label map; no label in a labelled dataset."""
    problems, geometries, warnings = [], [], []
    for image in case.images:
        image_problems, geometry, _ = _check_image(image)
        problems += image_problems
        geometries.append((image, geometry))
    readable = [(p, g) for p, g in geometries if g is not None]
    if readable:
        first_path, first = readable[0]
        for path, geometry in readable[1:]:
            diff = first.differences(geometry)
            if diff:
                problems.append(f"{path}: geometry differs from {first_path.name} ({'; '.join(diff)}); all channels "
                                f"of a case must be co-registered on one grid (resample them onto channel 0)")
    if case.label is None and allowed_values is not None:
        warnings.append(f"{case.images[0]}: no label map in labelsTr; the case is used for pretraining only, never "
                        f"for finetuning or evaluation (add labelsTr/{case.case_id}<ending> if it has one)")
    if case.label is not None:
        label_problems, label_geometry, label_warnings = _check_label(case.label, allowed_values)
        problems += label_problems
        warnings += label_warnings
        if label_geometry is not None and readable:
            diff = readable[0][1].differences(label_geometry)
            if diff:
                problems.append(f"{case.label}: label geometry differs from its image {readable[0][0].name} "
                                f"({'; '.join(diff)}); resample the label onto the image grid (nearest neighbour)")
    return problems, warnings


def _folder_level_problems(dataset_dir: Path, dataset_json: DatasetJson, cases: list[CaseFiles]) -> list[str]:
    problems = []
    images_dir = dataset_dir / "imagesTr"
    if not images_dir.is_dir():
        return [f"{images_dir}: folder missing; put the training images there as <case>_0000{dataset_json.file_ending}"]
    if not cases:
        return [f"{images_dir}: empty dataset, no <case>_XXXX{dataset_json.file_ending} image found; add images "
                f"or fix 'file_ending' in dataset.json"]
    for entry in sorted(images_dir.iterdir()):
        stem = entry.name if entry.is_dir() else (entry.name[: -len(dataset_json.file_ending)]
                                                   if entry.name.endswith(dataset_json.file_ending) else None)
        if not entry.name.startswith(".") and (stem is None or not CHANNEL_SUFFIX.match(stem)):
            problems.append(f"{entry}: not named <case>_XXXX{dataset_json.file_ending}; rename it or remove it")
    if dataset_json.num_training != len(cases):
        problems.append(f"{dataset_dir / 'dataset.json'}: numTraining is {dataset_json.num_training} but imagesTr "
                        f"holds {len(cases)} case(s); set numTraining to {len(cases)}")
    for case in cases:
        if len(case.images) != dataset_json.num_channels:
            present = {int(CHANNEL_SUFFIX.match(p.name.split(".")[0])["channel"]) for p in case.images}
            missing = [c for c in range(dataset_json.num_channels) if c not in present]
            problems += [f"{images_dir / f'{case.case_id}_{c:04d}{dataset_json.file_ending}'}: missing channel file "
                         f"(dataset.json lists {dataset_json.num_channels} channel(s)); add it or remove the case"
                         for c in missing]
    labels_dir = dataset_dir / "labelsTr"
    if labels_dir.is_dir():
        case_ids = {c.case_id for c in cases}
        for label in sorted(labels_dir.glob(f"*{dataset_json.file_ending}")):
            if label.name[: -len(dataset_json.file_ending)] not in case_ids:
                problems.append(f"{label}: label without a matching image in imagesTr; add the image or remove it")
        if dataset_json.labels is None and any(c.label for c in cases):
            problems.append(f"{dataset_dir / 'dataset.json'}: labelsTr holds labels but dataset.json has no "
                            f"'labels'; add e.g. {{\"background\": 0, \"tumour\": 1}}")
    return problems


def inspect_dataset(dataset_dir: Path, num_processes: int = 1, pool=None) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the raw dataset at `dataset_dir`; both empty when it is fine."""
    dataset_dir = Path(dataset_dir)
    try:
        dataset_json = load_dataset_json(dataset_dir)
    except MassError as err:
        return [str(err)], []
    cases = list_cases(dataset_dir, dataset_json)
    problems = _folder_level_problems(dataset_dir, dataset_json, cases)
    allowed = set(dataset_json.labels.values()) if dataset_json.labels is not None else None
    work = functools.partial(check_case, num_channels=dataset_json.num_channels, allowed_values=allowed)
    per_case = [([], []) for _ in cases]
    for index, result in run_per_item(work, cases, num_processes, "integrity check", progress=False,
                                      pool=pool):
        per_case[index] = ([f"{cases[index].case_id}: check failed ({result})"], []) \
            if isinstance(result, Exception) else result
    return (problems + [p for case_problems, _ in per_case for p in case_problems],
            [w for _, case_warnings in per_case for w in case_warnings])


def find_dataset_problems(dataset_dir: Path, num_processes: int = 1, pool=None) -> list[str]:
    """Every problem of the raw dataset at `dataset_dir` (empty list when it is fine)."""
    return inspect_dataset(dataset_dir, num_processes, pool)[0]


def verify_dataset_integrity(dataset_dir: Path, num_processes: int = 1, pool=None) -> list[str]:
    """Raise DatasetIntegrityError listing every problem; otherwise log and return the warnings."""
    problems, warnings = inspect_dataset(dataset_dir, num_processes, pool)
    if problems:
        raise DatasetIntegrityError(dataset_dir, problems)
    for warning in warnings:
        logger.warning("warning: %s", warning)
    logger.info("integrity check passed: %s%s", dataset_dir, f" ({len(warnings)} warning(s))" if warnings else "")
    return warnings
