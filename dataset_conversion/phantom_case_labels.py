"""Case-level classification targets for a phantom raw dataset, measured from its label maps -> labels.csv.

Targets (each a 0/1 property of the case's anatomy, so an encoder can in principle see it in the image):

    has_liver_lesion   1 when the label map holds any `liver_lesion` voxel. The phantom draws 0-3 lesions per
                       case (none in about a quarter of the cases; a lesion can also be painted away entirely), so
                       this target is imbalanced: mostly positive or mostly negative depending on the seed.
    large_liver        1 when the liver (liver, hepatic vessel and lesion voxels, in mL) is larger than the median
                       over the dataset's labelled cases: balanced by construction, and relative to the dataset.

One target gives a multi-class labels.csv (`case_id,<target>` with values 0/1); several give a multi-label one.
Usage: python -m dataset_conversion.phantom_case_labels RAW/Dataset990_PhantomCT [--targets has_liver_lesion ...]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from dataset_conversion.phantom_tissues import PHANTOM_LABELS
from mass_nn.errors import MassError
from mass_nn.io.case_labels import CASE_LABELS_FILE, CaseLabels, write_case_labels
from mass_nn.io.dataset_json import list_cases, load_dataset_json
from mass_nn.io.image_io import read_image

logger = logging.getLogger(__name__)

PHANTOM_TARGETS = ("has_liver_lesion", "large_liver")
LIVER_PARTS = tuple(PHANTOM_LABELS[name] for name in ("liver", "hepatic_vessels", "liver_lesion"))


def phantom_case_measurements(dataset_dir: Path) -> dict[str, dict[str, float]]:
    """{case id: {"lesion_voxels", "liver_ml"}} for every case of imagesTr and imagesTs that has a label map."""
    dataset_dir = Path(dataset_dir)
    dataset_json = load_dataset_json(dataset_dir)
    measurements = {}
    for split in ("Tr", "Ts"):
        for case in list_cases(dataset_dir, dataset_json, split):
            if case.label is None:
                continue
            label, geometry = read_image(case.label, dtype=np.uint8)
            voxel_ml = float(np.prod(geometry.spacing_xyz)) / 1000.0
            measurements[case.case_id] = {
                "lesion_voxels": float(np.count_nonzero(label == PHANTOM_LABELS["liver_lesion"])),
                "liver_ml": float(np.isin(label, LIVER_PARTS).sum()) * voxel_ml}
    if not measurements:
        raise MassError(f"{dataset_dir}: no label maps in labelsTr/labelsTs; case-level phantom targets are measured "
                        f"from them - write the phantom with dataset_conversion.phantom first")
    return measurements


def phantom_targets(measurements: dict[str, dict[str, float]], target: str) -> dict[str, int]:
    """The 0/1 value of `target` (one of PHANTOM_TARGETS) for every measured case."""
    if target == "has_liver_lesion":
        return {case: int(m["lesion_voxels"] > 0) for case, m in measurements.items()}
    if target == "large_liver":
        median = float(np.median([m["liver_ml"] for m in measurements.values()]))
        return {case: int(m["liver_ml"] > median) for case, m in measurements.items()}
    raise MassError(f"unknown phantom target {target!r}; known: {', '.join(PHANTOM_TARGETS)}")


def phantom_case_labels(dataset_dir: Path, targets=("has_liver_lesion",)) -> CaseLabels:
    """The case labels of `targets` (one: multi-class 0/1; several: multi-label). A target with one value in every
    case raises MassError: it cannot be learned or evaluated."""
    if not targets:
        raise MassError(f"choose at least one phantom target of {', '.join(PHANTOM_TARGETS)}")
    measurements = phantom_case_measurements(dataset_dir)
    values = {target: phantom_targets(measurements, target) for target in targets}
    for target, per_case in values.items():
        if len(set(per_case.values())) < 2:
            raise MassError(f"{dataset_dir}: {target} is {next(iter(per_case.values()))} in all {len(per_case)} "
                            f"cases; write more phantom cases or choose another target of {PHANTOM_TARGETS}")
    cases = sorted(measurements)
    if len(targets) == 1:
        return CaseLabels("multiclass", ["0", "1"], {c: values[targets[0]][c] for c in cases}, targets[0])
    return CaseLabels("multilabel", list(targets), {c: [values[t][c] for t in targets] for c in cases})


def write_phantom_case_labels(dataset_dir: Path, targets=("has_liver_lesion",)) -> Path:
    """Write labels.csv next to the phantom's dataset.json (atomically); returns its path."""
    path = Path(dataset_dir) / CASE_LABELS_FILE
    labels = phantom_case_labels(dataset_dir, tuple(targets))
    write_case_labels(labels, path)
    logger.info("wrote %s: %s for %d cases", path, ", ".join(targets), len(labels.targets))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", type=Path, help="the phantom's raw dataset folder (holds dataset.json)")
    parser.add_argument("--targets", nargs="+", default=["has_liver_lesion"], choices=PHANTOM_TARGETS,
                        help="one target (multi-class) or several (multi-label); default: %(default)s")
    args = parser.parse_args(argv)
    try:
        path = write_phantom_case_labels(args.dataset_dir, args.targets)
    except MassError as err:
        parser.exit(1, f"error: {err}\n")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
