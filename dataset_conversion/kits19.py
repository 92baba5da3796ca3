"""KiTS19 (kidney tumour segmentation challenge 2019) -> raw dataset.

Expected layout (the `kits19` repository after `get_imaging.py`, or its `data/` folder):

    data/case_00000/imaging.nii.gz   data/case_00000/segmentation.nii.gz   (labels 1 kidney, 2 tumour)
    data/case_00210/imaging.nii.gz                                         (test case: no segmentation)

KiTS19 affines put the slice axis first; the images are stored unchanged and labels are written with their
image's geometry, so every physical placement is kept.
"""
from __future__ import annotations

import re
from pathlib import Path

from dataset_conversion.common import RawDatasetWriter, require_file
from mass_nn.errors import MassError

KITS19_LABELS = {"background": 0, "kidney": 1, "tumour": 2}
_CASE_FOLDER = re.compile(r"^case_\d{5}$")


def _case_folders(source_dir: Path) -> list[Path]:
    data_dir = source_dir / "data" if (source_dir / "data").is_dir() else source_dir
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and _CASE_FOLDER.match(p.name)) \
        if data_dir.is_dir() else []
    if not folders:
        raise MassError(f"{data_dir}: no case_NNNNN folders; point to the kits19 repository (or its data/ "
                        f"folder) after downloading the imaging with get_imaging.py")
    return folders


def convert_kits19(source_dir: Path, raw_root: Path, dataset_id: int) -> Path:
    """Convert KiTS19 into `Dataset{id}_KiTS19`: cases with a segmentation train, the others test."""
    writer = RawDatasetWriter(raw_root, dataset_id, "KiTS19", ["CT"], KITS19_LABELS,
                              description="KiTS19 kidney and kidney tumour CT (CC BY-NC-SA 4.0; cite Heller N. "
                                          "et al., Medical Image Analysis 2021)")
    for folder in _case_folders(Path(source_dir)):
        image = require_file(folder / "imaging.nii.gz", "download the imaging with the repository's "
                                                        "get_imaging.py")
        segmentation = folder / "segmentation.nii.gz"
        if segmentation.is_file():
            writer.add_case(folder.name, [image], segmentation)
        else:
            writer.add_case(folder.name, [image], split="Ts")
    return writer.finish({"source": "KiTS19"})
