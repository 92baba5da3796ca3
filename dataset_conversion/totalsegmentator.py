"""TotalSegmentator (v2 release, Zenodo) -> raw dataset with one multi-class label map per case.

Expected layout:

    meta.csv                            semicolon-separated; columns include image_id and split (train/val/test)
    s0000/ct.nii.gz                     (mri.nii.gz in the MR release)
    s0000/segmentations/liver.nii.gz    one binary mask per structure, same grid as the image

The per-structure masks are merged into one label map. Class values follow a fixed order: the sorted names
of all structures found, or the `structures` list given (which also restricts the classes). Where masks
overlap, the structure later in that order wins. train and val cases go to imagesTr, test cases (with their
labels) to imagesTs/labelsTs.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from dataset_conversion.common import FILE_ENDING, RawDatasetWriter, Volume, label_array_on_grid, \
    labels_from_names, require_file, strip_ending, visible_files
from mass_nn.errors import MassError
from mass_nn.io.image_io import ImageGeometry, read_geometry

logger = logging.getLogger(__name__)

IMAGE_FILE = {"CT": "ct.nii.gz", "MR": "mri.nii.gz"}
_SPLIT_OF_META = {"train": "Tr", "val": "Tr", "test": "Ts"}
_CASE_FOLDER = re.compile(r"^s\d{4}$")


def _case_folders(source_dir: Path) -> list[Path]:
    folders = sorted(p for p in source_dir.iterdir() if p.is_dir() and _CASE_FOLDER.match(p.name)) \
        if source_dir.is_dir() else []
    if not folders:
        raise MassError(f"{source_dir}: no sNNNN case folders; point to the extracted TotalSegmentator release "
                        f"(the folder that holds meta.csv and s0000/, s0001/, ...)")
    return folders


def read_meta_splits(meta_csv: Path) -> dict[str, str]:
    """image_id -> 'train' | 'val' | 'test' from meta.csv (empty when the file is absent)."""
    if not meta_csv.is_file():
        logger.warning("%s: not found; every case is treated as a training case", meta_csv)
        return {}
    with open(meta_csv, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    if rows and not {"image_id", "split"} <= set(rows[0]):
        raise MassError(f"{meta_csv}: needs the columns image_id and split (semicolon-separated), found "
                        f"{sorted(rows[0])}")
    splits = {row["image_id"].strip(): row["split"].strip() for row in rows}
    unknown = sorted({s for s in splits.values() if s not in _SPLIT_OF_META})
    if unknown:
        raise MassError(f"{meta_csv}: unknown split value(s) {unknown}; expected train, val or test")
    return splits


def structure_names(case_folders: Sequence[Path]) -> list[str]:
    """Sorted names of every structure mask found in any case's segmentations/ folder."""
    names = {strip_ending(p.name) for folder in case_folders for p in visible_files(folder / "segmentations")}
    if not names:
        raise MassError(f"{case_folders[0].parent}: no segmentations/<structure>.nii.gz masks in any case folder")
    return sorted(names)


def _choose_classes(available: list[str], structures: Sequence[str] | None) -> list[str]:
    if structures is None:
        return available
    unknown = [s for s in structures if s not in available]
    if unknown:
        raise MassError(f"structure(s) {unknown} are not in this release; available: {', '.join(available)}")
    return list(dict.fromkeys(structures))


def merge_structure_masks(mask_folder: Path, class_names: Sequence[str], geometry: ImageGeometry) -> Volume:
    """One label map on `geometry`: class i + 1 where the mask of class_names[i] is non-zero."""
    merged = np.zeros(geometry.shape_zyx, dtype=np.uint8 if len(class_names) < 256 else np.uint16)
    fix = "every case needs a mask per structure; download the case again or restrict the structures"
    for value, name in enumerate(class_names, start=1):
        mask_path = require_file(mask_folder / f"{name}{FILE_ENDING}", fix)
        merged[label_array_on_grid(mask_path, geometry, str(mask_path)) > 0] = value
    return Volume(merged, geometry)


def convert_totalsegmentator(source_dir: Path, raw_root: Path, dataset_id: int,
                             structures: Sequence[str] | None = None, modality: str = "CT",
                             name: str | None = None) -> Path:
    """Convert a TotalSegmentator release into `Dataset{id}_{name or 'TotalSegmentator'+modality}`."""
    if modality not in IMAGE_FILE:
        raise MassError(f"TotalSegmentator modality must be one of {sorted(IMAGE_FILE)}, got {modality!r}")
    source_dir = Path(source_dir)
    folders = _case_folders(source_dir)
    class_names = _choose_classes(structure_names(folders), structures)
    splits = read_meta_splits(source_dir / "meta.csv")
    writer = RawDatasetWriter(raw_root, dataset_id, name or f"TotalSegmentator{modality}", [modality],
                              labels_from_names(class_names),
                              description="TotalSegmentator v2 (CC BY 4.0; cite Wasserthal J. et al., Radiology: "
                                          "Artificial Intelligence 2023)")
    for folder in folders:
        image = require_file(folder / IMAGE_FILE[modality], f"each case folder needs {IMAGE_FILE[modality]}")
        label = merge_structure_masks(folder / "segmentations", class_names, read_geometry(image))
        writer.add_case(folder.name, [image], label, split=_SPLIT_OF_META[splits.get(folder.name, "train")])
    source_split_of_case = {f.name: splits.get(f.name, "train") for f in folders}
    return writer.finish({"source": "TotalSegmentator v2", "source_split_of_case": source_split_of_case})
