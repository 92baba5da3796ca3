"""The real test volumes of a folder laid out like `../shared/data` (see its README.md) -> raw datasets.

One raw dataset per kind; dataset id = `first_dataset_id` + the offset below (600 + offset by default):

| kind             | id  | name                | source                                                        |
|------------------|-----|---------------------|---------------------------------------------------------------|
| sts_ct           | 601 | STS_CT              | ibsi_sts/STS_XXX/CT_image + CT_mask                           |
| sts_pet          | 602 | STS_PET             | ibsi_sts/STS_XXX/PET_image + PET_mask                         |
| sts_mr           | 603 | STS_MRT1            | ibsi_sts/STS_XXX/MR_T1_image + MR_T1_mask                     |
| brats            | 604 | BRATS_FlairT1c      | deepmedic_brats/brats2015TrainingData/*/brats_2013_patXXXX_1  |
| totalseg_ct      | 605 | TotalSegExamplesCT  | totalsegmentator/example_ct*, incl. the DICOM series          |
| totalseg_mr      | 606 | TotalSegExamplesMR  | totalsegmentator/example_mr_sm + example_seg_mr               |
| ct_tumour        | 607 | CTTumour            | STS CT cases + pyradiomics lung1/lung2                        |
| pyradiomics_mr   | 608 | PyradiomicsMR       | pyradiomics brain1, brain2, breast1                           |
| chaos_mr         | 609 | CHAOSMRT2SPIR       | chaos_mr_t2spir/image_<pid> + label_<pid> (organ_mr.py)       |
| mscmrseg         | 610 | MSCMRSegbSSFP       | mscmrseg_bssfp/image_<pid> + label_<pid> (organ_mr.py)        |

Cases whose files are absent (the folder is a subset of the collection) are skipped, so case counts follow
what is present.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from dataset_conversion.common import RawDatasetWriter, require_folder
from dataset_conversion.organ_mr import ORGAN_MR_SETS, OrganMRSet, add_organ_mr_cases
from mass_nn.errors import MassError
from mass_nn.io.atomic import read_json

logger = logging.getLogger(__name__)

TUMOUR_LABELS = {"background": 0, "tumour": 1}
BRATS_LABELS = {"background": 0, "necrosis": 1, "oedema": 2, "non_enhancing_tumour": 3, "enhancing_tumour": 4}
STS_LICENCE = ("Licence: CC BY 3.0 Unported. Source: theibsi/data_sets (IBSI validation set) from the TCIA "
               "Soft-tissue-Sarcoma collection; cite Vallieres M. et al., Phys. Med. Biol. 60(14):5471 (2015), "
               "DOI 10.7937/K9/TCIA.2015.7GO2GSKS, and Clark K. et al., J Digit Imaging 26(6) (2013).")
BRATS_LICENCE = ("Licence: CC BY-NC-SA 3.0 CH (non-commercial, share-alike). Source: deepmedic/deepmedic examples "
                 "(BRATS 2015); cite Menze B. H. et al., IEEE TMI 34(10):1993-2024 (2015).")
PYRADIOMICS_LICENCE = "Licence: BSD-3-Clause (repository AIM-Harvard/pyradiomics); provenance partly undocumented."
TOTALSEG_LICENCE = ("Licence: Apache-2.0 (repository wasserth/TotalSegmentator). Labels are TotalSegmentator "
                    "predictions (pseudo-labels), not manual annotations.")
# (case id, image, label, scan): example_ct_sm holds slices of example_ct, so both count as one scan.
TOTALSEG_CT_CASES = (("example_ct", "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "totalseg_scan_a"),
                     ("example_ct_sm", "example_ct_sm.nii.gz", "example_seg.nii.gz", "totalseg_scan_a"),
                     ("example_ct_dicom", "example_ct_dicom", "example_seg_dicom.nii.gz", "totalseg_scan_b"))
TOTALSEG_MR_CASES = (("example_mr_sm", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "totalseg_scan_mr"),)
PYRADIOMICS_LUNG = ("lung1", "lung2")
PYRADIOMICS_MR = ("brain1", "brain2", "breast1")


@dataclass(frozen=True)
class SharedKind:
    """One raw dataset made from the shared folder.

    `add_cases(source, writer)` adds the cases and returns extra dataset.json keys; `labels(source)` gives
    the label map.
    """

    offset: int
    name: str
    channel_names: tuple[str, ...]
    description: str
    licence: str
    subfolders: tuple[str, ...]
    add_cases: Callable[[Path, RawDatasetWriter], dict]
    labels: Callable[[Path], dict[str, int]]


def _add_sts_cases(source: Path, writer: RawDatasetWriter, prefix: str) -> None:
    """Add every STS_XXX patient that has `<prefix>_image.nii.gz` (the shared folder holds a subset)."""
    for patient in sorted(p for p in (source / "ibsi_sts").glob("STS_*") if p.is_dir()):
        image, mask = patient / f"{prefix}_image.nii.gz", patient / f"{prefix}_mask.nii.gz"
        if not image.is_file():
            logger.debug("%s: no %s image, skipped", patient, prefix)
            continue
        if not mask.is_file():
            raise MassError(f"{mask}: not found although {image.name} is there; restore the mask file")
        writer.add_case(patient.name, [image], mask, patient_id=patient.name)


def _sts(prefix: str) -> Callable[[Path, RawDatasetWriter], dict]:
    def convert(source: Path, writer: RawDatasetWriter) -> dict:
        _add_sts_cases(source, writer, prefix)
        return {}
    return convert


def _brats(source: Path, writer: RawDatasetWriter) -> dict:
    split_of_case = {}
    for case in sorted((source / "deepmedic_brats" / "brats2015TrainingData").glob("*/brats_2013_pat*_1")):
        images = [case / "Flair_subtrMeanDivStd.nii.gz", case / "T1c_subtrMeanDivStd.nii.gz"]
        writer.add_case(case.name, images, case / "OTMultiClass.nii.gz", patient_id=case.name.split("_")[2])
        split_of_case[case.name] = case.parent.name
    return {"deepmedic_split_of_case": split_of_case}


def totalsegmentator_labels(source: Path, task: str) -> dict[str, int]:
    """The full label map of TotalSegmentator task `task` ('total' or 'total_mr') from the class map file."""
    path = source / "totalsegmentator" / "class_map_total_and_total_mr.json"
    if not path.is_file():
        raise MassError(f"{path}: not found; the TotalSegmentator class map belongs next to the example files")
    class_map = read_json(path)[task]
    by_value = sorted((int(value), name) for value, name in class_map.items())
    return {"background": 0, **{name: value for value, name in by_value}}


def _totalseg(cases: tuple) -> Callable[[Path, RawDatasetWriter], dict]:
    def convert(source: Path, writer: RawDatasetWriter) -> dict:
        folder = source / "totalsegmentator"
        for case_id, image, label, scan in cases:
            # The DICOM label NIfTI stores the same grid with a flipped y axis; the writer resamples it onto the
            # image grid by physical position (nearest neighbour), which puts every voxel back in place.
            writer.add_case(case_id, [folder / image], folder / label, patient_id=scan)
        return {}
    return convert


def _add_pyradiomics_cases(source: Path, writer: RawDatasetWriter, names: Sequence[str]) -> None:
    for name in names:
        folder = source / "pyradiomics"
        writer.add_case(f"pyradiomics_{name}", [folder / f"{name}_image.nrrd"], folder / f"{name}_label.nrrd",
                        patient_id=f"pyradiomics_{name}")


def _ct_tumour(source: Path, writer: RawDatasetWriter) -> dict:
    _add_sts_cases(source, writer, "CT")
    _add_pyradiomics_cases(source, writer, PYRADIOMICS_LUNG)
    return {}


def _pyradiomics_mr(source: Path, writer: RawDatasetWriter) -> dict:
    _add_pyradiomics_cases(source, writer, PYRADIOMICS_MR)
    return {}


def _tumour_labels(source: Path) -> dict[str, int]:
    return dict(TUMOUR_LABELS)


def _brats_labels(source: Path) -> dict[str, int]:
    return dict(BRATS_LABELS)


def _totalseg_labels(task: str) -> Callable[[Path], dict[str, int]]:
    return lambda source: totalsegmentator_labels(source, task)


def _organ_mr(spec: OrganMRSet) -> Callable[[Path, RawDatasetWriter], dict]:
    def convert(source: Path, writer: RawDatasetWriter) -> dict:
        add_organ_mr_cases(source, spec, writer)
        return {}
    return convert


def _organ_mr_kind(offset: int, spec: OrganMRSet) -> SharedKind:
    return SharedKind(offset=offset, name=spec.name, channel_names=(spec.channel,), subfolders=(spec.folder,),
                      description=spec.description, licence=spec.licence, add_cases=_organ_mr(spec),
                      labels=lambda source: spec.labels)


SHARED_KINDS: dict[str, SharedKind] = {
    "sts_ct": SharedKind(
        offset=1, name="STS_CT", channel_names=("CT",), subfolders=("ibsi_sts",),
        description="Soft-tissue sarcoma CT (HU) with GTV masks, tumour-centred crops.",
        licence=STS_LICENCE, add_cases=_sts("CT"), labels=_tumour_labels),
    "sts_pet": SharedKind(
        offset=2, name="STS_PET", channel_names=("PET",), subfolders=("ibsi_sts",),
        description="Soft-tissue sarcoma FDG-PET (SUV) with GTV masks, tumour-centred crops.",
        licence=STS_LICENCE, add_cases=_sts("PET"), labels=_tumour_labels),
    "sts_mr": SharedKind(
        offset=3, name="STS_MRT1", channel_names=("T1",), subfolders=("ibsi_sts",),
        description="Soft-tissue sarcoma T1-weighted MR (fat-normalised) with GTV masks, tumour-centred crops.",
        licence=STS_LICENCE, add_cases=_sts("MR_T1"), labels=_tumour_labels),
    "brats": SharedKind(
        offset=4, name="BRATS_FlairT1c", channel_names=("FLAIR", "T1c"), subfolders=("deepmedic_brats",),
        description="BRATS 2013 patients (BRATS 2015 release), FLAIR + T1c z-scored in the brain; labels "
                    "1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing tumour.",
        licence=BRATS_LICENCE, add_cases=_brats, labels=_brats_labels),
    "totalseg_ct": SharedKind(
        offset=5, name="TotalSegExamplesCT", channel_names=("CT",), subfolders=("totalsegmentator",),
        description="TotalSegmentator test references: abdominal CT incl. one DICOM series, task 'total' classes.",
        licence=TOTALSEG_LICENCE, add_cases=_totalseg(TOTALSEG_CT_CASES), labels=_totalseg_labels("total")),
    "totalseg_mr": SharedKind(
        offset=6, name="TotalSegExamplesMR", channel_names=("MR",), subfolders=("totalsegmentator",),
        description="TotalSegmentator test reference: abdominal MR, task 'total_mr' classes.",
        licence=TOTALSEG_LICENCE, add_cases=_totalseg(TOTALSEG_MR_CASES), labels=_totalseg_labels("total_mr")),
    "ct_tumour": SharedKind(
        offset=7, name="CTTumour", channel_names=("CT",), subfolders=("ibsi_sts", "pyradiomics"),
        description="CT tumour cases: soft-tissue sarcoma (STS_*, from ibsi_sts) and lung tumour "
                    "(pyradiomics_lung1, pyradiomics_lung2).",
        licence=f"STS_* cases: {STS_LICENCE} pyradiomics_* cases: {PYRADIOMICS_LICENCE}",
        add_cases=_ct_tumour, labels=_tumour_labels),
    "pyradiomics_mr": SharedKind(
        offset=8, name="PyradiomicsMR", channel_names=("MR",), subfolders=("pyradiomics",),
        description="PyRadiomics MR test cases with one lesion class: brain1, brain2 (T1 post-Gd), breast1.",
        licence=PYRADIOMICS_LICENCE, add_cases=_pyradiomics_mr, labels=_tumour_labels),
    "chaos_mr": _organ_mr_kind(9, ORGAN_MR_SETS["chaos_mr"]),
    "mscmrseg": _organ_mr_kind(10, ORGAN_MR_SETS["mscmrseg"]),
}


def _selected_kinds(which: Sequence[str] | None) -> list[str]:
    kinds = list(dict.fromkeys(which)) if which else list(SHARED_KINDS)
    unknown = [k for k in kinds if k not in SHARED_KINDS]
    if unknown:
        raise MassError(f"unknown shared dataset kind(s) {unknown}; choose from {', '.join(SHARED_KINDS)}")
    return kinds


def convert_shared_data(source_dir: Path, raw_root: Path, which: Sequence[str] | None = None,
                        first_dataset_id: int = 600) -> dict[str, Path]:
    """Convert the kinds in `which` (default: all of SHARED_KINDS); return kind -> dataset folder.

    Each kind becomes `Dataset{first_dataset_id + offset}_{name}` (see the module table). A missing source
    subfolder of a selected kind raises MassError before anything is written.
    """
    source = require_folder(Path(source_dir), "point to the folder laid out like ../shared/data (see its README.md)")
    kinds = _selected_kinds(which)
    for kind in kinds:
        for subfolder in SHARED_KINDS[kind].subfolders:
            require_folder(source / subfolder, f"kind {kind!r} reads it; point to the folder laid out like "
                                               f"../shared/data, or leave {kind!r} out of the selection")
    converted = {}
    for kind in kinds:
        spec = SHARED_KINDS[kind]
        writer = RawDatasetWriter(raw_root, first_dataset_id + spec.offset, spec.name, spec.channel_names,
                                  spec.labels(source), description=f"{spec.description} {spec.licence}")
        extra = spec.add_cases(source, writer)
        converted[kind] = writer.finish({"source": f"shared data folder: {', '.join(spec.subfolders)}",
                                         "licence": spec.licence, **extra})
    return converted
