"""Scores of a classifier's probabilities against case-level labels, and the test-split files of a run."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mass_nn.evaluation.auc import classification_auc
from mass_nn.evaluation.classification_evaluation import write_classification_predictions
from mass_nn.io.atomic import write_json_atomic
from mass_nn.io.case_labels import CaseLabels
from mass_nn.training.finetune.classification.loss import accuracy

TEST_PREDICTIONS_FILE = "test_predictions.csv"
TEST_SUMMARY_FILE = "test_summary.json"


def auc_defined(labels: CaseLabels, case_ids: list[str]) -> bool:
    """Whether these cases can give an AUC: two classes present (multi-class), or some column with both a positive
    and a negative case (multi-label)."""
    if not case_ids:
        return False
    targets = labels.target_array(case_ids)
    if labels.kind == "multiclass":
        return len(set(targets.tolist())) >= 2
    return bool(np.any((targets.max(axis=0) > 0.5) & (targets.min(axis=0) < 0.5)))


def score_probabilities(probabilities: np.ndarray, labels: CaseLabels, case_ids: list[str]) -> dict:
    """{"auc": {class: AUC}, "mean_auc", "accuracy", "num_cases"} of probabilities [N, C] for `case_ids`. An AUC
    is NaN where a class has no positive or no negative case; the mean leaves those out (binary: the positive
    class's AUC)."""
    if not case_ids:
        nan = float("nan")
        return {"auc": {name: nan for name in labels.class_names}, "mean_auc": nan, "accuracy": nan, "num_cases": 0}
    targets = labels.target_array(case_ids)
    scores = classification_auc(probabilities, targets, labels.kind, labels.class_names)
    return {"auc": {name: scores[f"auc_{name}"] for name in labels.class_names}, "mean_auc": scores["mean_auc"],
            "accuracy": accuracy(probabilities, targets, labels.kind), "num_cases": len(case_ids)}


def _finite_or_none(value):
    if isinstance(value, dict):
        return {key: _finite_or_none(v) for key, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_test_results(folder: Path, case_ids: list[str], probabilities: np.ndarray, labels: CaseLabels,
                       weights: str, epoch: int) -> dict:
    """Write test_predictions.csv (every test case, `case_id,<class>...`) and test_summary.json (scores over the
    labelled ones; undefined values as null) into `folder`; returns the summary with NaN for undefined values."""
    folder = Path(folder)
    write_classification_predictions(folder / TEST_PREDICTIONS_FILE, case_ids, probabilities, labels.class_names)
    labelled = [i for i, case in enumerate(case_ids) if case in labels.targets]
    scored = score_probabilities(probabilities[labelled], labels, [case_ids[i] for i in labelled])
    summary = {"weights": weights, "epoch": epoch, "kind": labels.kind, "class_names": list(labels.class_names),
               "num_test_cases": len(case_ids), "num_labelled": len(labelled), **scored}
    summary.pop("num_cases")
    if not math.isfinite(scored["mean_auc"]):
        summary["note"] = ("mean AUC undefined: the labelled test cases do not contain both a positive and a "
                           "negative case of any class")
    write_json_atomic(_finite_or_none(summary), folder / TEST_SUMMARY_FILE)
    return summary
