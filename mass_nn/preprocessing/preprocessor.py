"""Preprocessing of one configuration: raw case -> crop -> normalise -> resample -> blosc2 + properties JSON.

Output per case in `<preprocessed>/<Dataset>/<data_identifier>/`: `<case>.b2nd` (float32, c×z×y×x),
`<case>_seg.b2nd` (int16, 1×z×y×x, only with a label), `<case>.json` (CaseProperties). The properties file is
written last, so its presence with a matching preprocessing hash marks a finished case; re-runs skip those.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from mass_nn.errors import MassError
from mass_nn.io.artifact_layout import CaseOutput
from mass_nn.io.dataset_json import CaseFiles
from mass_nn.io.image_io import ImageGeometry, read_geometry, read_image
from mass_nn.parallel import run_per_item
from mass_nn.planning.foreground import bounding_box, crop_to_box, foreground_mask
from mass_nn.planning.plans import Plans
from mass_nn.preprocessing.blosc2_storage import open_array, save_array
from mass_nn.preprocessing.case_properties import CaseProperties, load_properties, save_properties
from mass_nn.preprocessing.normalization import normalize_channel
from mass_nn.preprocessing.resampling import (nearest_resampling_axis, resample_images, resample_label,
                                               shape_at_spacing)

logger = logging.getLogger(__name__)


def _label_summary(seg: np.ndarray) -> tuple[dict[str, int], dict[str, list[list[int]]]]:
    counts = np.bincount(seg.ravel().astype(np.int64))
    boxes = ndimage.find_objects(seg.astype(np.int32))
    voxel_counts, bboxes = {}, {}
    for value in range(1, len(counts)):
        if counts[value] and boxes[value - 1] is not None:
            voxel_counts[str(value)] = int(counts[value])
            bboxes[str(value)] = [[s.start, s.stop] for s in boxes[value - 1]]
    return voxel_counts, bboxes


@dataclass
class _CroppedCase:
    """A case after reading, cropping and normalising: shared by every configuration."""

    geometry: ImageGeometry
    box: list[list[int]]
    data: np.ndarray  # (c, z, y, x) normalised, cropped
    label: np.ndarray | None  # (z, y, x) int16, cropped
    normalization: list
    foreground_fraction: float


def _read_crop_normalize(case: CaseFiles, plans: Plans) -> _CroppedCase:
    arrays, geometries = zip(*(read_image(p) for p in case.images))
    channels = np.stack(arrays)
    foreground = foreground_mask(channels, [c.modality for c in plans.channels])
    box = bounding_box(foreground)
    channels, foreground = crop_to_box(channels, box), crop_to_box(foreground, box)
    normalized, applied = zip(*(normalize_channel(v, foreground, c) for v, c in zip(channels, plans.channels)))
    label = None
    if case.label is not None:
        label = crop_to_box(read_image(case.label)[0], box).astype(np.int16)
    return _CroppedCase(geometries[0], box, np.stack(normalized), label, list(applied), float(foreground.mean()))


@dataclass
class PreprocessedCase:
    """One case on a configuration's grid, in memory: what the .b2nd files and the properties JSON hold."""

    data: np.ndarray  # (c, z, y, x) float32
    seg: np.ndarray | None  # (z, y, x) int16
    properties: CaseProperties


def _resample_configuration(case: CaseFiles, cropped: _CroppedCase, plans: Plans,
                            configuration: str) -> PreprocessedCase:
    config = plans.configuration(configuration)
    spacing = cropped.geometry.spacing_zyx
    new_shape = shape_at_spacing(cropped.data.shape[1:], spacing, config.target_spacing_zyx_mm)
    nearest_axis = nearest_resampling_axis(spacing)
    data = resample_images(cropped.data, new_shape, nearest_axis)
    seg, counts, bboxes = None, {}, {}
    if cropped.label is not None:
        seg = resample_label(cropped.label, new_shape)
        counts, bboxes = _label_summary(seg)
    slicing = plans.mask_generation.slicing(spacing, config.target_spacing_zyx_mm)
    props = CaseProperties(
        case_id=case.case_id, configuration=configuration, preprocessing_hash=plans.preprocessing_hash(configuration),
        source_images=[str(p) for p in case.images], source_label=str(case.label) if case.label else None,
        original_geometry=cropped.geometry.to_dict(), shape_before_crop_zyx=list(cropped.geometry.shape_zyx),
        crop_box_zyx=cropped.box, shape_after_crop_zyx=list(cropped.data.shape[1:]),
        original_spacing_zyx_mm=list(spacing), target_spacing_zyx_mm=list(config.target_spacing_zyx_mm),
        shape_after_resampling_zyx=list(new_shape), nearest_resampling_axis=nearest_axis,
        normalization=cropped.normalization,
        foreground_fraction=cropped.foreground_fraction, mask_axis=slicing.axis,
        seed_slice_interval=slicing.interval,
        label_voxel_counts=counts, label_bboxes_zyx=bboxes)
    return PreprocessedCase(data, seg, props)


def preprocess_in_memory(case: CaseFiles, plans: Plans, configuration: str) -> PreprocessedCase:
    """Preprocess one case exactly as mass_plan_and_preprocess does, without writing anything (inference,
    references given as raw files). Image geometry of the channels and label is not re-checked here."""
    return _resample_configuration(case, _read_crop_normalize(case, plans), plans, configuration)


def _write_configuration(case: CaseFiles, cropped: _CroppedCase, plans: Plans, configuration: str,
                         out_folder: Path) -> CaseProperties:
    patch = plans.configuration(configuration).patch_size_zyx
    result = _resample_configuration(case, cropped, plans, configuration)
    output = CaseOutput(out_folder, case.case_id)
    save_array(result.data, output.data, patch)
    if result.seg is not None:
        save_array(result.seg[None], output.seg, patch)
    save_properties(result.properties, output.properties)
    return result.properties


def preprocess_case(case: CaseFiles, plans: Plans, out_folders: dict[str, Path]) -> list[CaseProperties]:
    """Preprocess one case into each configuration's folder (`out_folders`: configuration -> folder); the raw
    images are read, cropped and normalised once for all configurations."""
    cropped = _read_crop_normalize(case, plans)
    return [_write_configuration(case, cropped, plans, config, folder) for config, folder in out_folders.items()]


def is_case_done(output: CaseOutput, expected_hash: str, has_label: bool) -> bool:
    """Done = the properties (written last) carry the expected hash and every array opens (a cut file does not)."""
    if not (output.properties.is_file() and output.data.is_file()) or (has_label and not output.seg.is_file()):
        return False
    try:
        for array_path in (output.data, output.seg) if has_label else (output.data,):
            open_array(array_path)
        return load_properties(output.properties).preprocessing_hash == expected_hash
    except MassError:
        return False


def _estimated_memory_bytes(case: CaseFiles, spacing_factor: float) -> int:
    """Peak bytes of one case: float32 raw copies plus the resampled array (a deliberately rough bound)."""
    voxels = int(np.prod(read_geometry(case.images[0]).size_xyz))
    return int(voxels * 4 * (len(case.images) * 3 + 2) * max(1.0, spacing_factor))


def preprocess_cases(cases: list[CaseFiles], plans: Plans, out_folders: dict[str, Path], num_processes: int = 1,
                     clean: bool = False, progress: bool = True, pool=None) -> list[dict]:
    """Preprocess every case into every configuration of `out_folders` (configuration -> folder), skipping
    cases already finished with the current plans unless `clean`. Per-case failures are collected and raised
    together at the end, after all other cases were done. Returns one summary dict per configuration."""
    for folder in out_folders.values():
        if clean and Path(folder).exists():
            shutil.rmtree(folder)
        Path(folder).mkdir(parents=True, exist_ok=True)
    hashes = {c: plans.preprocessing_hash(c) for c in out_folders}
    todo = {c: {case.case_id for case in cases
                if not is_case_done(CaseOutput(Path(f), case.case_id), hashes[c], case.label is not None)}
            for c, f in out_folders.items()}
    items = [(case, {c: Path(f) for c, f in out_folders.items() if case.case_id in todo[c]}) for case in cases]
    items = [(case, folders) for case, folders in items if folders]
    start = time.time()
    finest = min(np.prod(plans.configuration(c).target_spacing_zyx_mm) for c in out_folders)
    factor = float(np.prod(plans.median_spacing_zyx_mm) / finest)
    failures = []
    for index, result in run_per_item(_preprocess_item, [(case, plans, folders) for case, folders in items],
                                      num_processes, desc="preprocess",
                                      memory_bytes=[_estimated_memory_bytes(case, factor) for case, _ in items],
                                      progress=progress, pool=pool):
        if isinstance(result, Exception):
            failures.append(f"{items[index][0].case_id}: {result}")
    if failures:
        raise MassError(f"{len(failures)} case(s) failed to preprocess (the others are done; fix these and "
                        f"re-run):\n  " + "\n  ".join(failures))
    seconds = round(time.time() - start, 2)
    return [{"configuration": c, "cases": len(cases), "preprocessed": len(todo[c]),
             "skipped": len(cases) - len(todo[c]), "seconds": seconds} for c in out_folders]


def _preprocess_item(item) -> list[CaseProperties]:
    case, plans, folders = item
    return preprocess_case(case, plans, folders)
