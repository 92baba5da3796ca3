"""Case-level classification predictions (a CSV of probabilities) and their evaluation against labels.csv.

Predictions format (header required, comma-separated, one row per case):

    case_id,<class_1>,...,<class_C>     one probability column per class, named and ordered as the classes of the
                                        target in labels.csv (`CaseLabels.class_names`, see mass_nn.io.case_labels)

Multi-class targets: one column per class (rows typically sum to 1). Multi-label targets: one column per label,
each its own probability of "yes".
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mass_nn.errors import MassError
from mass_nn.evaluation.auc import classification_auc
from mass_nn.evaluation.tables import json_safe, markdown_table
from mass_nn.io.atomic import atomic_path, write_json_atomic
from mass_nn.io.case_labels import read_case_labels

CLASSIFICATION_SUMMARY_JSON = "classification_summary.json"
CLASSIFICATION_SUMMARY_MD = "classification_summary.md"
DECISION_THRESHOLD = 0.5  # multi-label accuracy: a label counts as predicted when its probability is >= this


@dataclass
class ClassificationPredictions:
    """The content of a predictions CSV: probabilities [N, C] of `case_ids` (rows) for `class_names` (columns)."""

    case_ids: list[str]
    probabilities: np.ndarray
    class_names: list[str]


def write_classification_predictions(path, case_ids: list[str], probabilities, class_names: list[str]) -> None:
    """Write a predictions CSV atomically; values are written exactly (shortest round-trip form).

    Raises ValueError (naming `path`) when the shape does not match the ids and names, a case id repeats, a name
    is empty or "case_id", or a probability is not finite.
    """
    path = Path(path)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    case_ids, class_names = [str(c) for c in case_ids], [str(n) for n in class_names]
    if probabilities.shape != (len(case_ids), len(class_names)):
        raise ValueError(f"{path}: probabilities {probabilities.shape} must be [cases {len(case_ids)}, classes "
                         f"{len(class_names)}]; pass one row per case and one column per class")
    if len(set(case_ids)) != len(case_ids) or any(not c for c in case_ids):
        raise ValueError(f"{path}: case ids must be unique and non-empty; got {case_ids[:10]}")
    if len(set(class_names)) != len(class_names) or any(n in ("", "case_id") for n in class_names):
        raise ValueError(f"{path}: class names {class_names} must be unique, non-empty and not 'case_id'")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError(f"{path}: probabilities hold NaN or infinite values; check the model output")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", *class_names])
        for case_id, row in zip(case_ids, probabilities):
            writer.writerow([case_id, *(repr(float(v)) for v in row)])


def _parse_row(path: Path, number: int, cells: list[str], width: int) -> list[float]:
    if len(cells) != width or not cells[0]:
        raise MassError(f"{path}, line {number}: expected {width} values (case_id and one probability per class), "
                        f"got {cells}; fix the row")
    try:
        values = [float(cell) for cell in cells[1:]]
    except ValueError as err:
        raise MassError(f"{path}, line {number}: {err}; probabilities must be numbers") from err
    if not all(math.isfinite(v) for v in values):
        raise MassError(f"{path}, line {number}: probabilities must be finite numbers, got {cells[1:]}")
    return values


def read_classification_predictions(path) -> ClassificationPredictions:
    """Parse a predictions CSV (module docstring); every problem raises MassError naming the file, line and fix."""
    path = Path(path)
    if not path.is_file():
        raise MassError(f"{path}: predictions file not found; pass the CSV written by the classification run "
                        f"(header 'case_id,<class_1>,...')")
    with open(path, newline="") as handle:
        rows = [[cell.strip() for cell in row] for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if len(rows) < 2 or rows[0][0] != "case_id" or len(rows[0]) < 2:
        raise MassError(f"{path}: needs a header 'case_id,<class_1>,...,<class_C>' and at least one case row")
    header = rows[0]
    if len(set(header[1:])) != len(header) - 1:
        raise MassError(f"{path}: class columns {header[1:]} repeat a name; give each class one column")
    case_ids, values, seen = [], [], set()
    for number, cells in enumerate(rows[1:], start=2):
        values.append(_parse_row(path, number, cells, len(header)))
        if cells[0] in seen:
            raise MassError(f"{path}, line {number}: case {cells[0]!r} appears twice; keep one row per case")
        seen.add(cells[0])
        case_ids.append(cells[0])
    return ClassificationPredictions(case_ids, np.asarray(values, dtype=np.float64), header[1:])


def _accuracy(probabilities: np.ndarray, targets: np.ndarray, kind: str) -> float:
    """Multi-class: share of cases whose most probable class is the target. Multi-label: share of (case, label)
    decisions right at DECISION_THRESHOLD."""
    if kind == "multiclass":
        return float(np.mean(np.argmax(probabilities, axis=1) == targets))
    return float(np.mean((probabilities >= DECISION_THRESHOLD) == (targets > 0.5)))


def _aligned(predictions: ClassificationPredictions, class_names: list[str], predictions_csv, labels_csv) -> np.ndarray:
    """The probability columns in the labels' class order; MassError when the column names differ."""
    if sorted(predictions.class_names) != sorted(class_names):
        raise MassError(f"{predictions_csv}: class columns {predictions.class_names} do not match the classes "
                        f"{class_names} of {labels_csv}; write one probability column per class, named as the "
                        f"classes of labels.csv")
    order = [predictions.class_names.index(name) for name in class_names]
    return predictions.probabilities[:, order]


def evaluate_classification(predictions_csv, labels_csv) -> dict:
    """Per-class AUC, mean AUC, accuracy and case count of a predictions CSV against a labels.csv.

    Returns {"predictions", "labels", "kind", "class_names", "num_cases", "auc": {class: AUC}, "mean_auc",
    "accuracy", "labelled_cases_without_prediction"}; an AUC is NaN when a class has no positive or no negative
    case (the mean leaves it out; with two classes the mean is the positive class's AUC). Raises MassError when a
    predicted case has no label or the class columns do not match the labels' classes.
    """
    labels = read_case_labels(labels_csv)
    predictions = read_classification_predictions(predictions_csv)
    unlabelled = [c for c in predictions.case_ids if c not in labels.targets]
    if unlabelled:
        raise MassError(f"{len(unlabelled)} case(s) of {predictions_csv} have no label in {labels_csv}: "
                        f"{unlabelled[:5]}; add them to {labels_csv} or remove their rows from the predictions")
    probabilities = _aligned(predictions, labels.class_names, predictions_csv, labels_csv)
    targets = labels.target_array(predictions.case_ids)
    auc = classification_auc(probabilities, targets, labels.kind, labels.class_names)
    return {"predictions": str(predictions_csv), "labels": str(labels_csv), "kind": labels.kind,
            "class_names": list(labels.class_names), "num_cases": len(predictions.case_ids),
            "auc": {name: auc[f"auc_{name}"] for name in labels.class_names}, "mean_auc": auc["mean_auc"],
            "accuracy": _accuracy(probabilities, targets, labels.kind),
            "labelled_cases_without_prediction": len(set(labels.targets) - set(predictions.case_ids))}


def _percent(value: float) -> str:
    return f"{100 * value:.1f}" if math.isfinite(value) else "n/a"


def auc_table(summary: dict) -> str:
    """Markdown table of the per-class AUC in % with the mean AUC as last row."""
    rows = [[name, _percent(value)] for name, value in summary["auc"].items()]
    return markdown_table(["class", "AUC"], rows + [["mean", _percent(summary["mean_auc"])]])


def classification_markdown(summary: dict) -> str:
    """The readable report written as classification_summary.md: inputs, per-class AUC table, mean AUC, accuracy."""
    return "\n".join([
        "# Classification evaluation", "",
        f"- predictions: `{summary['predictions']}`", f"- labels: `{summary['labels']}` ({summary['kind']})",
        f"- cases: {summary['num_cases']} (labelled cases without prediction: "
        f"{summary['labelled_cases_without_prediction']})",
        f"- accuracy: {_percent(summary['accuracy'])} %", "",
        "## AUC (%)", "", auc_table(summary)]) + "\n"


def write_classification_summary(summary: dict, out_folder) -> tuple[Path, Path]:
    """Write classification_summary.json (NaN as null) and classification_summary.md atomically; returns both."""
    out_folder = Path(out_folder)
    json_path, md_path = out_folder / CLASSIFICATION_SUMMARY_JSON, out_folder / CLASSIFICATION_SUMMARY_MD
    write_json_atomic(json_safe(summary), json_path)
    with atomic_path(md_path) as tmp:
        tmp.write_text(classification_markdown(summary))
    return json_path, md_path
