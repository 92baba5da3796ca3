"""Patient-level train/val/test splits, seeded and saved as JSON.

Cases of one patient (dataset.json's optional "patient_of_case": {case: patient}) always land in the same
split, so no patient's scans leak from training into evaluation. Without that key every case is its own patient.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mass_nn.io.atomic import read_json, write_json_atomic

logger = logging.getLogger(__name__)
SPLIT_NAMES = ("train", "val", "test")


def make_splits(case_ids: list[str], seed: int, fractions: dict[str, float],
                patient_of_case: dict[str, str] | None = None) -> dict:
    """Assign patients to train/val/test in proportion to `fractions` (patients shuffled with `seed`).

    Val and test each get at least one patient whenever there are at least three patients and their
    fraction is positive.
    """
    patient_of_case = patient_of_case or {}
    patients = sorted({patient_of_case.get(c, c) for c in case_ids})
    order = np.random.default_rng(seed).permutation(len(patients))
    shuffled = [patients[i] for i in order]
    total = sum(fractions.get(n, 0.0) for n in SPLIT_NAMES)
    counts = {n: int(np.floor(len(patients) * fractions.get(n, 0.0) / total)) for n in ("val", "test")}
    for name in ("val", "test"):
        if counts[name] == 0 and fractions.get(name, 0.0) > 0 and len(patients) >= 3:
            counts[name] = 1
    n_test, n_val = counts["test"], counts["val"]
    groups = {"test": shuffled[:n_test], "val": shuffled[n_test:n_test + n_val], "train": shuffled[n_test + n_val:]}
    split_of_patient = {p: name for name, members in groups.items() for p in members}
    splits = {name: sorted(c for c in case_ids if split_of_patient[patient_of_case.get(c, c)] == name)
              for name in SPLIT_NAMES}
    return {"seed": seed, "fractions": dict(fractions), "patient_level": bool(patient_of_case), **splits}


def ensure_splits(path: Path, case_ids: list[str], seed: int, fractions: dict[str, float],
                  patient_of_case: dict[str, str] | None = None) -> dict:
    """Keep an existing splits file that covers exactly `case_ids` with the same seed; otherwise write anew."""
    path = Path(path)
    if path.is_file():
        existing = read_json(path)
        covered = sorted(c for n in SPLIT_NAMES for c in existing.get(n, []))
        if covered == sorted(case_ids) and existing.get("seed") == seed:
            return existing
        logger.warning("%s does not match the current cases or seed; writing new splits", path)
    splits = make_splits(case_ids, seed, fractions, patient_of_case)
    write_json_atomic(splits, path)
    return splits
