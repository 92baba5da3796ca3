"""The raw datasets of the replication (benchmarks/replication.py), built from a folder laid out like
`../shared/data`, with patient-level splits decided here so that no evaluation patient reaches pretraining.

Evaluation sets (labelled, one channel each, as the pooled single-channel models see them):

| id  | name            | cases | test split                                              |
|-----|-----------------|-------|---------------------------------------------------------|
| 701 | ReplSTSPET      | PET of every sarcoma patient | the held-out sarcoma patients (seeded)   |
| 702 | ReplSTSCT       | CT of the sarcoma patients that have one | the held-out patients among them |
| 703 | ReplBRATST1c    | T1c of the BRATS patients | the deepmedic `test` folder's patients          |
| 704 | ReplTotalSegCT  | the TotalSegmentator CT examples | scan b (the DICOM series); train = scan a |
| 705 | ReplCHAOSMR     | the 12 CHAOS T2-SPIR patients (4 organs) | 4 seeded patients; 2 more form the val split |
| 706 | ReplMSCMRSeg    | the 25 MS-CMRSeg bSSFP patients (3 cardiac structures) | 8 seeded patients; 3 val |

Pretraining pool (unlabelled, every split "train"): 711 ReplPoolCT, 712 ReplPoolMR, 713 ReplPoolPET: every image
of the folder whose patient is not in a test split (for CHAOS and MS-CMRSeg: only the train patients, so the
val patients that in-context validation segments stay unseen too). As in the paper's BraTS protocol, T1c is held out of
pretraining entirely (the pool has the BRATS FLAIR of the training patients), so 703 tests an unseen sequence.

Case-level task (labels.csv of 701): `size_class` = "gt10cm" when the tumour's largest extent (bounding box of
the PET GTV mask, physical mm) exceeds 100 mm, else "le10cm" — the size cut between the AJCC 8th edition T2 and
T3 stages of trunk and extremity soft-tissue sarcoma (the 50 mm T1/T2 cut leaves 2 of 30 patients on one side).
It is derived from the expert mask, which the classifier never sees. Caveat: the source crops every image to
5 cm around the tumour, so the image extent itself carries size information.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dataset_conversion.common import RawDatasetWriter, require_folder
from dataset_conversion.organ_mr import ORGAN_MR_SETS, add_organ_mr_cases, case_id_of, organ_mr_patients
from dataset_conversion.shared_data import (BRATS_LABELS, BRATS_LICENCE, PYRADIOMICS_LICENCE, STS_LICENCE,
                                            TOTALSEG_LICENCE, TUMOUR_LABELS, totalsegmentator_labels)
from mass_nn.io.atomic import write_json_atomic
from mass_nn.io.case_labels import CaseLabels, write_case_labels
from mass_nn.planning.plans import Plans

logger = logging.getLogger(__name__)

SPLIT_SEED = 7  # which sarcoma patients are held out; fixed so that every run evaluates the same patients
STS_TEST_PATIENTS_WITH_CT = 3
STS_TEST_FRACTION = 1 / 3
SIZE_CUT_MM = 100.0


@dataclass(frozen=True)
class ReplicationDataset:
    dataset_id: int
    name: str
    modality: str  # CT, MR or PET: the pool it belongs to, or the modality it evaluates
    labelled: bool
    splits: dict[str, list[str]] = field(default_factory=dict)

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"


EVALUATION_IDS = {"sts_pet": 701, "sts_ct": 702, "brats_t1c": 703, "totalseg_ct": 704, "chaos_mr": 705,
                  "mscmrseg": 706}
# organ MR sets: (raw name, test patients, val patients); the rest are train patients and join the MR pool
ORGAN_MR_SPLITS = {"chaos_mr": ("ReplCHAOSMR", 4, 2), "mscmrseg": ("ReplMSCMRSeg", 8, 3)}
POOL_IDS = {"CT": 711, "MR": 712, "PET": 713}


def sts_patients(source: Path) -> dict[str, set[str]]:
    """Patient -> the modalities present for it ({"CT", "MR_T1", "PET"})."""
    patients = {}
    for folder in sorted(p for p in (source / "ibsi_sts").glob("STS_*") if p.is_dir()):
        patients[folder.name] = {m for m in ("CT", "MR_T1", "PET") if (folder / f"{m}_image.nii.gz").is_file()}
    return patients


def sts_test_patients(patients: dict[str, set[str]]) -> list[str]:
    """Held-out sarcoma patients: a seeded choice among those with CT and among the PET-only ones, so both the CT
    and the PET evaluation sets have test patients."""
    rng = np.random.default_rng(SPLIT_SEED)
    with_ct = sorted(p for p, m in patients.items() if "CT" in m)
    pet_only = sorted(p for p, m in patients.items() if "CT" not in m and "PET" in m)
    chosen = list(rng.choice(with_ct, size=min(STS_TEST_PATIENTS_WITH_CT, max(len(with_ct) - 1, 0)), replace=False))
    count = int(round(len(pet_only) * STS_TEST_FRACTION))
    chosen += list(rng.choice(pet_only, size=count, replace=False)) if count else []
    return sorted(str(p) for p in chosen)


def _largest_extent_mm(mask_path: Path) -> float:
    image = sitk.ReadImage(str(mask_path))
    mask = sitk.GetArrayFromImage(image) > 0
    if not mask.any():
        return 0.0
    coords = np.argwhere(mask)
    extent_voxels = coords.max(axis=0) - coords.min(axis=0) + 1
    return float(np.max(extent_voxels * np.asarray(image.GetSpacing()[::-1])))


def _splits(cases: list[str], test: set[str]) -> dict[str, list[str]]:
    return {"train": sorted(c for c in cases if c not in test), "val": [],
            "test": sorted(c for c in cases if c in test)}


def _write_sts(source: Path, raw: Path, dataset_id: int, name: str, prefix: str, test: set[str]) -> ReplicationDataset:
    writer = RawDatasetWriter(raw, dataset_id, name, [prefix], TUMOUR_LABELS,
                              description=f"Soft-tissue sarcoma {prefix} with GTV masks. {STS_LICENCE}")
    cases = []
    for patient, modalities in sts_patients(source).items():
        if prefix in modalities:
            folder = source / "ibsi_sts" / patient
            writer.add_case(patient, [folder / f"{prefix}_image.nii.gz"], folder / f"{prefix}_mask.nii.gz",
                            patient_id=patient)
            cases.append(patient)
    writer.finish({"licence": STS_LICENCE})
    modality = "PET" if prefix == "PET" else "CT"
    return ReplicationDataset(dataset_id, name, modality, True, _splits(cases, test))


def _write_size_labels(source: Path, dataset: ReplicationDataset, raw: Path) -> dict[str, float]:
    """labels.csv of the PET set (see the module docstring); returns each case's largest extent in mm."""
    extents = {c: _largest_extent_mm(source / "ibsi_sts" / c / "PET_mask.nii.gz")
               for c in dataset.splits["train"] + dataset.splits["test"]}
    names = ["gt10cm", "le10cm"]
    targets = {c: names.index("gt10cm" if e > SIZE_CUT_MM else "le10cm") for c, e in sorted(extents.items())}
    write_case_labels(CaseLabels(kind="multiclass", class_names=names, targets=targets, target_name="size_class"),
                      raw / dataset.folder_name / "labels.csv")
    return extents


def _brats_cases(source: Path) -> list[tuple[Path, str]]:
    """(case folder, deepmedic split folder name) of every BRATS patient present."""
    root = source / "deepmedic_brats" / "brats2015TrainingData"
    return [(case, case.parent.name) for case in sorted(root.glob("*/brats_2013_pat*_1"))]


def _write_brats(source: Path, raw: Path) -> ReplicationDataset:
    writer = RawDatasetWriter(raw, EVALUATION_IDS["brats_t1c"], "ReplBRATST1c", ["T1c"], BRATS_LABELS,
                              description=f"BRATS T1c (held out of pretraining). {BRATS_LICENCE}")
    cases, test = [], set()
    for case, deepmedic_split in _brats_cases(source):
        writer.add_case(case.name, [case / "T1c_subtrMeanDivStd.nii.gz"], case / "OTMultiClass.nii.gz",
                        patient_id=case.name)
        cases.append(case.name)
        if deepmedic_split == "test":
            test.add(case.name)
    writer.finish({"licence": BRATS_LICENCE})
    return ReplicationDataset(EVALUATION_IDS["brats_t1c"], "ReplBRATST1c", "MR", True, _splits(cases, test))


TOTALSEG_CT = (("example_ct", "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "train"),
               ("example_ct_sm", "example_ct_sm.nii.gz", "example_seg.nii.gz", "train"),
               ("example_ct_dicom", "example_ct_dicom", "example_seg_dicom.nii.gz", "test"))


def _write_totalseg(source: Path, raw: Path) -> ReplicationDataset:
    writer = RawDatasetWriter(raw, EVALUATION_IDS["totalseg_ct"], "ReplTotalSegCT", ["CT"],
                              totalsegmentator_labels(source, "total"),
                              description=f"TotalSegmentator CT examples, task 'total'. {TOTALSEG_LICENCE}")
    folder = source / "totalsegmentator"
    for case_id, image, label, _ in TOTALSEG_CT:
        writer.add_case(case_id, [folder / image], folder / label, patient_id=case_id)
    writer.finish({"licence": TOTALSEG_LICENCE})
    test = {c for c, _, _, split in TOTALSEG_CT if split == "test"}
    return ReplicationDataset(EVALUATION_IDS["totalseg_ct"], "ReplTotalSegCT", "CT", True,
                              _splits([c[0] for c in TOTALSEG_CT], test))


def organ_mr_patient_splits(source: Path, key: str) -> dict[str, list[str]]:
    """split -> patient ids of organ MR set `key`: a seeded permutation, test patients first, then val."""
    _, num_test, num_val = ORGAN_MR_SPLITS[key]
    order = [str(p) for p in np.random.default_rng(SPLIT_SEED).permutation(
        sorted(organ_mr_patients(source, ORGAN_MR_SETS[key])))]
    return {"test": sorted(order[:num_test]), "val": sorted(order[num_test:num_test + num_val]),
            "train": sorted(order[num_test + num_val:])}


def write_organ_mr(source: Path, raw: Path, key: str) -> ReplicationDataset:
    spec, name = ORGAN_MR_SETS[key], ORGAN_MR_SPLITS[key][0]
    writer = RawDatasetWriter(raw, EVALUATION_IDS[key], name, [spec.channel], spec.labels,
                              description=f"{spec.description} {spec.licence}")
    add_organ_mr_cases(source, spec, writer)
    writer.finish({"licence": spec.licence})
    splits = {split: [case_id_of(spec, p) for p in patients]
              for split, patients in organ_mr_patient_splits(source, key).items()}
    return ReplicationDataset(EVALUATION_IDS[key], name, "MR", True, splits)


def pool_images(source: Path, sts_test: set[str]) -> dict[str, list[tuple[str, Path]]]:
    """Modality -> (case id, image) of every pretraining image: all of the folder except test patients and the
    BRATS T1c sequence; example_ct_sm is left out because it holds slices of example_ct."""
    pool = {"CT": [], "MR": [], "PET": []}
    for patient, modalities in sts_patients(source).items():
        if patient in sts_test:
            continue
        folder = source / "ibsi_sts" / patient
        for modality, prefix in (("CT", "CT"), ("MR", "MR_T1"), ("PET", "PET")):
            if prefix in modalities:
                pool[modality].append((f"{patient}_{prefix}", folder / f"{prefix}_image.nii.gz"))
    for case, deepmedic_split in _brats_cases(source):
        if deepmedic_split != "test":
            pool["MR"].append((f"{case.name}_FLAIR", case / "Flair_subtrMeanDivStd.nii.gz"))
    for name in ("lung1", "lung2"):
        pool["CT"].append((f"pyradiomics_{name}", source / "pyradiomics" / f"{name}_image.nrrd"))
    for name in ("brain1", "brain2", "breast1"):
        pool["MR"].append((f"pyradiomics_{name}", source / "pyradiomics" / f"{name}_image.nrrd"))
    totalseg = source / "totalsegmentator"
    pool["CT"].append(("totalseg_example_ct", totalseg / "example_ct.nii.gz"))
    pool["MR"].append(("totalseg_example_mr_sm", totalseg / "example_mr_sm.nii.gz"))
    for key in ORGAN_MR_SPLITS:
        spec = ORGAN_MR_SETS[key]
        if (source / spec.folder).is_dir():
            images = organ_mr_patients(source, spec)
            pool["MR"] += [(case_id_of(spec, p), images[p][0]) for p in organ_mr_patient_splits(source, key)["train"]]
    return {m: [(c, p) for c, p in images if p.exists()] for m, images in pool.items()}


def write_pool(raw: Path, modality: str, images: list[tuple[str, Path]]) -> ReplicationDataset:
    name = f"ReplPool{modality}"
    writer = RawDatasetWriter(raw, POOL_IDS[modality], name, [modality], None,
                              description=f"Unlabelled {modality} pretraining pool of the replication "
                                          f"({STS_LICENCE} {BRATS_LICENCE} {PYRADIOMICS_LICENCE} {TOTALSEG_LICENCE})")
    for case_id, image in images:
        writer.add_case(case_id, [image])
    writer.finish()
    cases = [c for c, _ in images]
    return ReplicationDataset(POOL_IDS[modality], name, modality, False, _splits(cases, set()))


def build_replication_datasets(source: Path, raw: Path) -> dict[str, ReplicationDataset]:
    """Write every raw dataset of the replication under `raw`; returns key -> dataset (keys: the evaluation kinds
    of EVALUATION_IDS and pool_CT / pool_MR / pool_PET). Re-running rewrites the same files."""
    source = require_folder(Path(source), "point --shared-data to the folder laid out like ../shared/data")
    for sub in ("ibsi_sts", "deepmedic_brats", "pyradiomics", "totalsegmentator", "chaos_mr_t2spir",
                "mscmrseg_bssfp"):
        require_folder(source / sub, "the replication reads every subfolder of ../shared/data")
    sts_test = set(sts_test_patients(sts_patients(source)))
    datasets = {"sts_pet": _write_sts(source, raw, EVALUATION_IDS["sts_pet"], "ReplSTSPET", "PET", sts_test),
                "sts_ct": _write_sts(source, raw, EVALUATION_IDS["sts_ct"], "ReplSTSCT", "CT", sts_test),
                "brats_t1c": _write_brats(source, raw), "totalseg_ct": _write_totalseg(source, raw),
                **{key: write_organ_mr(source, raw, key) for key in ORGAN_MR_SPLITS}}
    _write_size_labels(source, datasets["sts_pet"], raw)
    for modality, images in pool_images(source, sts_test).items():
        datasets[f"pool_{modality}"] = write_pool(raw, modality, images)
    return datasets


def write_splits(dataset: ReplicationDataset, preprocessed: Path, plans_seed: int = Plans.split_seed) -> None:
    """Put the replication's splits where mass_plan_and_preprocess keeps an existing splits.json."""
    splits = {"seed": plans_seed, "fractions": {}, "patient_level": True, **dataset.splits}
    write_json_atomic(splits, preprocessed / dataset.folder_name / "splits.json")
