"""Beyond the Cranial Vault (BCV, "Multi-Atlas Labeling Beyond the Cranial Vault", abdomen) -> raw dataset.

Expected layout (the Synapse download, folder `RawData/` or its parent):

    RawData/Training/img/img0001.nii.gz     RawData/Training/label/label0001.nii.gz
    RawData/Testing/img/img0061.nii.gz      (no labels)

Labels 0-13 are kept as they are; cases are named `bcv_<number>`.
"""
from __future__ import annotations

import re
from pathlib import Path

from dataset_conversion.common import RawDatasetWriter, require_file, visible_files
from mass_nn.errors import MassError

BCV_LABELS = {"background": 0, "spleen": 1, "right_kidney": 2, "left_kidney": 3, "gallbladder": 4,
              "esophagus": 5, "liver": 6, "stomach": 7, "aorta": 8, "inferior_vena_cava": 9,
              "portal_vein_and_splenic_vein": 10, "pancreas": 11, "right_adrenal_gland": 12,
              "left_adrenal_gland": 13}
_IMAGE_NAME = re.compile(r"^img(?P<number>\d+)\.nii\.gz$")


def _raw_data_folder(source_dir: Path) -> Path:
    """`RawData/` itself or the folder that holds it."""
    for candidate in (source_dir / "RawData", source_dir):
        if (candidate / "Training" / "img").is_dir():
            return candidate
    raise MassError(f"{source_dir}: no RawData/Training/img folder; point to the extracted BCV download "
                    f"(the folder RawData or its parent)")


def _numbered_images(folder: Path) -> list[tuple[str, Path]]:
    return [(m["number"], p) for p in visible_files(folder) if (m := _IMAGE_NAME.match(p.name))]


def convert_bcv(source_dir: Path, raw_root: Path, dataset_id: int) -> Path:
    """Convert BCV abdomen CT (30 labelled training, 20 unlabelled test scans) into `Dataset{id}_BCV`."""
    raw_data = _raw_data_folder(Path(source_dir))
    writer = RawDatasetWriter(raw_root, dataset_id, "BCV", ["CT"], BCV_LABELS,
                              description="Multi-Atlas Labeling Beyond the Cranial Vault, abdomen CT, 13 organs "
                                          "(Synapse syn3193805; see the challenge terms of use)")
    training = _numbered_images(raw_data / "Training" / "img")
    if not training:
        raise MassError(f"{raw_data / 'Training' / 'img'}: no imgNNNN.nii.gz file; the BCV download looks "
                        f"incomplete")
    for number, image in training:
        label = require_file(raw_data / "Training" / "label" / f"label{number}.nii.gz",
                             "every BCV training image needs its label file next to it in Training/label")
        writer.add_case(f"bcv_{number}", [image], label)
    for number, image in _numbered_images(raw_data / "Testing" / "img"):
        writer.add_case(f"bcv_{number}", [image], split="Ts")
    return writer.finish({"source": "BCV abdomen (MICCAI 2015)"})
