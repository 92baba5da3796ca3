"""AMOS 2022 (multi-modality abdominal organs) -> one CT or one MR raw dataset.

Expected layout (the released `amos22/` folder):

    dataset.json   {"labels": {"0": "background", "1": "spleen", ..., "15": "prostate/uterus"}, ...}
    imagesTr/amos_0001.nii.gz   labelsTr/amos_0001.nii.gz      (training)
    imagesVa/amos_0008.nii.gz   labelsVa/amos_0008.nii.gz      (validation)
    imagesTs/amos_0002.nii.gz   [labelsTs/ in later releases]  (test)

Scans amos_0001..amos_0500 are CT, amos_0501 and above MR; one call converts one modality. Training and
validation cases (both labelled) go to imagesTr, test cases to imagesTs.
"""
from __future__ import annotations

import re
from pathlib import Path

from dataset_conversion.common import RawDatasetWriter, labels_from_value_names, visible_files
from mass_nn.errors import MassError
from mass_nn.io.atomic import read_json

MODALITIES = ("CT", "MR")
LAST_CT_SCAN = 500  # AMOS numbering: ids up to 500 are CT scans, higher ids MR scans
# (image folder, label folder, source split name, raw split, label required)
_SOURCE_SPLITS = (("imagesTr", "labelsTr", "train", "Tr", True),
                  ("imagesVa", "labelsVa", "validation", "Tr", True),
                  ("imagesTs", "labelsTs", "test", "Ts", False))
_CASE_NAME = re.compile(r"^amos_(?P<number>\d+)\.nii\.gz$")


def amos_modality(scan_number: int) -> str:
    """'CT' or 'MR' for an AMOS scan number."""
    return "CT" if scan_number <= LAST_CT_SCAN else "MR"


def _read_labels(amos_dir: Path) -> dict[str, int]:
    path = amos_dir / "dataset.json"
    if not path.is_file() or not (amos_dir / "imagesTr").is_dir():
        raise MassError(f"{amos_dir}: no dataset.json with imagesTr/ next to it; point to the extracted "
                        f"amos22 folder")
    meta = read_json(path)
    if not isinstance(meta.get("labels"), dict):
        raise MassError(f"{path}: no 'labels' map; this is not the AMOS dataset.json")
    return labels_from_value_names(meta["labels"], str(path))


def convert_amos(source_dir: Path, raw_root: Path, dataset_id: int, modality: str = "CT") -> Path:
    """Convert the AMOS scans of one `modality` ("CT" or "MR") into `Dataset{id}_AMOS22{modality}`."""
    if modality not in MODALITIES:
        raise MassError(f"AMOS modality must be one of {MODALITIES}, got {modality!r}")
    amos_dir = Path(source_dir)
    writer = RawDatasetWriter(raw_root, dataset_id, f"AMOS22{modality}", [modality], _read_labels(amos_dir),
                              description=f"AMOS 2022 abdominal {modality}, 15 organs (CC BY 4.0; cite Ji Y. et "
                                          f"al., NeurIPS 2022 Datasets and Benchmarks)")
    source_split_of_case = {}
    for image_folder, label_folder, source_split, split, label_required in _SOURCE_SPLITS:
        for image in visible_files(amos_dir / image_folder):
            match = _CASE_NAME.match(image.name)
            if not match or amos_modality(int(match["number"])) != modality:
                continue
            label = amos_dir / label_folder / image.name
            if label_required and not label.is_file():
                raise MassError(f"{label}: not found; every AMOS {source_split} image needs its label, "
                                f"extract the release again")
            case_id = image.name[: -len(".nii.gz")]
            writer.add_case(case_id, [image], label if label.is_file() else None, split=split)
            source_split_of_case[case_id] = source_split
    return writer.finish({"source": "AMOS 2022", "source_split_of_case": source_split_of_case})
