"""The two organ-level MR sets of the few-shot segmentation literature -> raw datasets.

Both come as the preprocessed copies that SSL-ALPNet, ADNet and Q-Net train on (one folder per set, files
`image_<pid>.nii.gz` + `label_<pid>.nii.gz`, float64 arrays, labels integral-valued floats):

| set        | source folder (../shared/data) | structures (value in the source -> raw label)                   |
|------------|--------------------------------|------------------------------------------------------------------|
| `chaos_mr` | `chaos_mr_t2spir/`             | 1 liver, 2 right kidney, 3 left kidney, 4 spleen (kept as they are) |
| `mscmrseg` | `mscmrseg_bssfp/`              | 200 -> 1 LV myocardium, 500 -> 2 LV blood pool, 600 -> 3 RV blood pool |

Every patient is one case (`chaos_<pid>` / `mscmrseg_<pid>`, pid zero-padded to two digits) in imagesTr, with
its patient recorded in dataset.json, so the planner's splits are patient-level.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dataset_conversion.common import RawDatasetWriter, require_folder
from mass_nn.errors import MassError

_IMAGE_NAME = re.compile(r"^image_(?P<pid>\d+)\.nii\.gz$")
CHAOS_LICENCE = ("Licence: CC BY-NC-SA 4.0 (CHAOS challenge data, non-commercial). Cite Kavur A. E. et al., Med. "
                 "Image Anal. 69:101950 (2021), doi 10.5281/zenodo.3431873. Copy: shenqq377/Q-Net "
                 "data/CHAOST2/chaos_MR_T2_normalized (SSL-ALPNet preprocessing).")
MSCMRSEG_LICENCE = ("Licence: none stated, research use only (MS-CMRSeg 2019; cite Zhuang X., IEEE TPAMI 41(12) "
                    "(2019)). Copy: shenqq377/Q-Net data/CMR/cmr_MR_normalized (SSL-ALPNet preprocessing).")


@dataclass(frozen=True)
class OrganMRSet:
    """One of the two sets: where it lives, how its label values map to 1..n, and what the classes are called."""

    key: str
    folder: str  # subfolder of a ../shared/data-like root
    name: str  # raw dataset name
    channel: str
    case_prefix: str
    source_values: tuple[int, ...]  # source label value of class 1, 2, ...
    class_names: tuple[str, ...]
    description: str
    licence: str

    @property
    def labels(self) -> dict[str, int]:
        return {"background": 0, **{n: i for i, n in enumerate(self.class_names, start=1)}}

    @property
    def label_mapping(self) -> dict[int, int]:
        return {0: 0, **{v: i for i, v in enumerate(self.source_values, start=1)}}


ORGAN_MR_SETS = {
    "chaos_mr": OrganMRSet(
        key="chaos_mr", folder="chaos_mr_t2spir", name="CHAOSMRT2SPIR", channel="T2SPIR", case_prefix="chaos",
        source_values=(1, 2, 3, 4), class_names=("liver", "right_kidney", "left_kidney", "spleen"),
        description="CHAOS abdominal T2-SPIR MR with expert labels of liver, kidneys and spleen (intensities "
                    "clipped at the top 0.5 %, 1.25x1.25x7.7 mm).", licence=CHAOS_LICENCE),
    "mscmrseg": OrganMRSet(
        key="mscmrseg", folder="mscmrseg_bssfp", name="MSCMRSegbSSFP", channel="bSSFP", case_prefix="mscmrseg",
        source_values=(200, 500, 600), class_names=("lv_myocardium", "lv_blood_pool", "rv_blood_pool"),
        description="MS-CMRSeg 2019 cardiac cine bSSFP MR, one annotated phase, expert labels of LV myocardium, "
                    "LV blood pool and RV blood pool.", licence=MSCMRSEG_LICENCE),
}


def organ_mr_folder(source: Path, spec: OrganMRSet) -> Path:
    """The folder holding the image_/label_ files: `source` itself, or its subfolder named as in ../shared/data."""
    source = Path(source)
    if (source / spec.folder).is_dir():
        return source / spec.folder
    return require_folder(source, f"point to the {spec.folder} folder (or the folder that holds it)")


def organ_mr_patients(source: Path, spec: OrganMRSet) -> dict[str, tuple[Path, Path]]:
    """Patient id (zero-padded) -> (image, label) of every patient in the set's folder; refuses a missing label."""
    folder = organ_mr_folder(source, spec)
    patients = {}
    for image in sorted(folder.glob("image_*.nii.gz")):
        match = _IMAGE_NAME.match(image.name)
        if not match:
            continue
        label = folder / f"label_{match['pid']}.nii.gz"
        if not label.is_file():
            raise MassError(f"{label}: not found although {image.name} is there; restore the label file")
        patients[f"{int(match['pid']):02d}"] = (image, label)
    if not patients:
        raise MassError(f"{folder}: no image_<pid>.nii.gz files; point to the {spec.folder} folder of "
                        f"../shared/data (see its README.md)")
    return patients


def case_id_of(spec: OrganMRSet, patient: str) -> str:
    return f"{spec.case_prefix}_{patient}"


def add_organ_mr_cases(source: Path, spec: OrganMRSet, writer: RawDatasetWriter) -> list[str]:
    """Write every patient of the set as a training case; returns the case ids."""
    written = []
    for patient, (image, label) in organ_mr_patients(source, spec).items():
        case_id = case_id_of(spec, patient)
        writer.add_case(case_id, [image], label, patient_id=f"{spec.key}_{patient}",
                        label_mapping=spec.label_mapping)
        written.append(case_id)
    return written


def convert_organ_mr(source: Path, raw_root: Path, dataset_id: int, key: str) -> Path:
    """Convert set `key` ("chaos_mr" or "mscmrseg") into `Dataset{id}_{name}`; returns the dataset folder."""
    if key not in ORGAN_MR_SETS:
        raise MassError(f"unknown organ MR set {key!r}; choose from {', '.join(ORGAN_MR_SETS)}")
    spec = ORGAN_MR_SETS[key]
    writer = RawDatasetWriter(raw_root, dataset_id, spec.name, [spec.channel], spec.labels,
                              description=f"{spec.description} {spec.licence}")
    add_organ_mr_cases(source, spec, writer)
    return writer.finish({"source": f"shared data folder: {spec.folder}", "licence": spec.licence})
