"""Evaluation of a folder of predicted label maps against a folder of reference label maps.

Files pair up by case id: `<case><ending>` with ending .nii.gz, .nii, .nrrd or .mha (the two files of a pair may
use different endings). Every pair must agree in shape and spacing; a pair that does not, or that cannot be read,
becomes a per-case error and the other cases are still evaluated. Metrics and their conventions are those of
`mass_nn.evaluation.metrics`.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from mass_nn.errors import MassError
from mass_nn.evaluation.metrics import as_label_map, label_map_metrics, present_labels
from mass_nn.evaluation.tables import json_safe, markdown_table, mean_std
from mass_nn.io.atomic import atomic_path, write_json_atomic
from mass_nn.io.image_io import ImageGeometry, read_geometry, read_sitk_image, require_3d_scalar_image
from mass_nn.parallel import run_per_item

logger = logging.getLogger(__name__)

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


def split_ending(name: str) -> tuple[str, str] | None:
    """(case id, ending) of a label-map file name, or None when the name has none of IMAGE_ENDINGS."""
    for ending in IMAGE_ENDINGS:  # ".nii.gz" is tried before ".nii"
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], ending
    return None


def scan_label_folder(folder: Path, role: str) -> tuple[dict[str, Path], list[str]]:
    """Map case id -> file for every label map in `folder`, plus one message per case id found twice.

    Hidden files and other endings are ignored. `role` ("prediction"/"reference") only words the errors.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MassError(f"{folder}: {role} folder not found; pass the folder that holds the <case>.nii.gz files")
    found: dict[str, Path] = {}
    duplicates = []
    for entry in sorted(folder.iterdir()):
        parts = split_ending(entry.name)
        if entry.name.startswith(".") or not entry.is_file() or parts is None:
            continue
        if parts[0] in found:
            duplicates.append(f"{role} case {parts[0]!r} has two files, {found[parts[0]].name} and {entry.name}; "
                              f"keep one of them in {folder}")
            continue
        found[parts[0]] = entry
    return found, duplicates


def read_label_map(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """A label map in its stored integer type (reading as float would quadruple the memory of uint8 maps)."""
    image = read_sitk_image(path)
    require_3d_scalar_image(image, path)
    try:
        array = as_label_map(sitk.GetArrayFromImage(image))
    except ValueError as err:
        raise MassError(f"{path}: {err}") from err
    return array, ImageGeometry.from_sitk(image)


def _geometry_problems(prediction: Path, reference: Path) -> tuple[str | None, list[str]]:
    """(error, warnings) of a pair's headers: shape or spacing differences are an error, origin or direction
    differences only a warning (the voxels still correspond one to one)."""
    differences = read_geometry(prediction).differences(read_geometry(reference))
    fatal = [d for d in differences if d.startswith(("shape", "spacing"))]
    minor = [d for d in differences if d not in fatal]
    error = None
    if fatal:
        error = (f"prediction {prediction} and reference {reference} do not match ({'; '.join(fatal)}; prediction "
                 f"first, x, y, z order); predict in the reference's geometry (resample the prediction to the "
                 f"reference grid)")
    warnings = [f"{prediction.name} vs {reference.name}: {'; '.join(minor)} differ"] if minor else []
    return error, warnings


def _evaluate_case(item: tuple) -> dict:
    """Metrics of one pair; raises MassError for unreadable or mismatched files (runs in worker processes)."""
    case_id, prediction_path, reference_path, labels, with_hd95 = item
    error, warnings = _geometry_problems(prediction_path, reference_path)
    if error:
        raise MassError(error)
    prediction, geometry = read_label_map(prediction_path)
    reference, _ = read_label_map(reference_path)
    reference_values = present_labels(reference)
    if labels is None:  # every value present in either map; the caller keeps those found in references
        labels = {str(v): v for v in sorted(set(reference_values) | set(present_labels(prediction)))}
    metrics = label_map_metrics(prediction, reference, labels, geometry.spacing_zyx, hd95=with_hd95)
    return {"case_id": case_id, "prediction": str(prediction_path), "reference": str(reference_path),
            "metrics": metrics, "reference_values": reference_values, "warnings": warnings}


def _pair_cases(prediction_folder: Path, reference_folder: Path) -> tuple[list[tuple[str, Path, Path]], dict]:
    """Matched (case, prediction, reference) triples and the unmatched files and duplicate-name errors."""
    predictions, pred_duplicates = scan_label_folder(prediction_folder, "prediction")
    references, ref_duplicates = scan_label_folder(reference_folder, "reference")
    if not predictions:
        raise MassError(f"{prediction_folder}: no prediction files ({', '.join(IMAGE_ENDINGS)}); point -pred to the "
                        f"folder of predicted <case> label maps")
    pairs = [(case, predictions[case], references[case]) for case in sorted(predictions) if case in references]
    if not pairs:
        raise MassError(f"none of the {len(predictions)} predictions in {prediction_folder} has a reference with the "
                        f"same case id in {reference_folder}; check -ref (files must be named <case><ending> in both)")
    unmatched = {"predictions_without_reference": [predictions[c].name for c in sorted(predictions)
                                                   if c not in references],
                 "references_without_prediction": [references[c].name for c in sorted(references)
                                                   if c not in predictions],
                 "duplicates": pred_duplicates + ref_duplicates}
    return pairs, unmatched


def evaluate_segmentation_folders(prediction_folder, reference_folder, labels: dict[str, int] | None = None,
                                  hd95: bool = True, num_processes: int = 1, *, progress: bool = False) -> dict:
    """Evaluate every prediction that has a reference; returns the summary (see documentation/evaluation.md).

    `labels` maps names to values (background 0 is skipped); without it the non-zero values found in the
    references are evaluated, named by their value. Keys: per_case [{case_id, prediction, reference, metrics}],
    mean {label: {dice, hd95, dice_cases, hd95_cases}}, mean_dice, mean_hd95, num_cases, errors [{case_id,
    message}], predictions_without_reference, references_without_prediction, warnings, and the inputs. Undefined
    values are NaN. Raises MassError only when nothing can be evaluated (missing folders, no matching pairs).
    """
    prediction_folder, reference_folder = Path(prediction_folder), Path(reference_folder)
    pairs, unmatched = _pair_cases(prediction_folder, reference_folder)
    return evaluate_case_pairs(pairs, labels, hd95, num_processes, prediction_folder=prediction_folder,
                               reference_folder=reference_folder, unmatched=unmatched, progress=progress)


def evaluate_case_pairs(pairs: list[tuple[str, Path, Path]], labels: dict[str, int] | None = None,
                        hd95: bool = True, num_processes: int = 1, *, prediction_folder=None, reference_folder=None,
                        unmatched: dict | None = None, progress: bool = False) -> dict:
    """The summary of evaluate_segmentation_folders for explicit (case id, prediction file, reference file)
    pairs, e.g. the test split's predictions against their files in labelsTr.

    Each pair is checked and scored as in folder mode (a bad pair becomes an entry of "errors"); the folders only
    label the summary, and `unmatched` (the three lists of _pair_cases) is carried into it.
    """
    unmatched = dict(unmatched or {"predictions_without_reference": [], "references_without_prediction": [],
                                   "duplicates": []})
    wanted = None if labels is None else {str(k): int(v) for k, v in labels.items() if int(v) != 0}
    items = [(case, pred, ref, wanted, hd95) for case, pred, ref in pairs]
    results, errors = [], [{"case_id": None, "message": m} for m in unmatched.pop("duplicates")]
    for index, result in run_per_item(_evaluate_case, items, num_processes, desc="evaluate", progress=progress):
        if isinstance(result, Exception):
            kind = "" if isinstance(result, MassError) else f"{type(result).__name__}: "
            errors.append({"case_id": pairs[index][0], "message": f"{kind}{result}"})
            logger.debug("case %s not evaluated: %s%s", pairs[index][0], kind, result)
        else:
            results.append(result)
    results.sort(key=lambda r: r["case_id"])
    errors.sort(key=lambda e: e["case_id"] or "")
    final_labels, warnings = _final_labels(results, wanted)
    per_case = [_case_entry(r, final_labels) for r in results]
    # per_case goes last so that a reader of summary.json sees the means and problems first
    summary = {"prediction_folder": _absolute(prediction_folder), "reference_folder": _absolute(reference_folder),
               "labels": final_labels, "labels_source": "references" if labels is None else "given", "hd95": hd95,
               "num_cases": len(per_case), **_means(per_case, final_labels), "errors": errors, **unmatched,
               "warnings": warnings, "per_case": per_case}
    logger.debug("evaluated %d case(s) of %s: mean Dice %s", len(per_case), prediction_folder,
                 _text(summary["mean_dice"]))
    return summary


def _absolute(folder) -> str:
    return str(Path(folder).absolute()) if folder else ""


def _final_labels(results: list[dict], wanted: dict[str, int] | None) -> tuple[dict[str, int], list[str]]:
    """The labels of the summary and the warnings that go with them (per-case geometry notes, predicted-only
    label values when the labels come from the references)."""
    warnings = [w for r in results for w in r["warnings"]]
    if wanted is not None:
        return wanted, warnings
    found = sorted({v for r in results for v in r["reference_values"]})
    predicted_only = sorted({int(name) for r in results for name in r["metrics"]} - set(found))
    if predicted_only:
        warnings.append(f"label value(s) {predicted_only} occur in predictions but in no reference; not evaluated "
                        f"(pass the dataset's labels with -d or --labels to evaluate them)")
    return {str(v): v for v in found}, warnings


def _case_entry(result: dict, labels: dict[str, int]) -> dict:
    empty = {"dice": math.nan, "hd95": math.nan, "reference_voxels": 0, "predicted_voxels": 0}
    metrics = {name: result["metrics"].get(name, dict(empty)) for name in labels}
    return {"case_id": result["case_id"], "prediction": result["prediction"], "reference": result["reference"],
            "metrics": metrics}


def finite_mean(values) -> float:
    """Mean of the finite values; NaN when there is none (undefined metrics do not count)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _means(per_case: list[dict], labels: dict[str, int]) -> dict:
    """Per-label means over the cases where the value is defined, and their mean over labels."""
    mean = {}
    for name in labels:
        dice = [c["metrics"][name]["dice"] for c in per_case]
        distance = [c["metrics"][name]["hd95"] for c in per_case]
        mean[name] = {"dice": finite_mean(dice), "hd95": finite_mean(distance),
                      "dice_cases": sum(math.isfinite(v) for v in dice),
                      "hd95_cases": sum(math.isfinite(v) for v in distance)}
    return {"mean_dice": finite_mean([m["dice"] for m in mean.values()]),
            "mean_hd95": finite_mean([m["hd95"] for m in mean.values()]), "mean": mean}


def _text(value: float, scale: float = 100.0, digits: int = 1) -> str:
    return f"{value * scale:.{digits}f}" if math.isfinite(value) else "n/a"


def metric_table(summary: dict, metric: str = "dice") -> str:
    """Markdown table cases × labels of `metric` ("dice" in %, or "hd95" in mm) with a "mean (std)" last row."""
    scale, digits = (100.0, 1) if metric == "dice" else (1.0, 2)
    labels = list(summary["labels"])
    rows = [[case["case_id"], *(_text(case["metrics"][n][metric], scale, digits) for n in labels)]
            for case in summary["per_case"]]
    rows.append(["mean (std)", *(mean_std([c["metrics"][n][metric] for c in summary["per_case"]], scale, digits)
                                 for n in labels)])
    return markdown_table(["case", *labels], rows)


def _problem_lines(summary: dict) -> list[str]:
    lines = [f"- error ({e['case_id'] or 'files'}): {e['message']}" for e in summary["errors"]]
    lines += [f"- prediction without reference: {name}" for name in summary["predictions_without_reference"]]
    lines += [f"- reference without prediction: {name}" for name in summary["references_without_prediction"]]
    return lines + [f"- warning: {w}" for w in summary["warnings"]]


def summary_markdown(summary: dict) -> str:
    """The readable report written as summary.md: inputs, the Dice table, the HD95 table (when computed), and
    every error, unmatched file and warning."""
    parts = ["# Segmentation evaluation", "",
             f"- predictions: `{summary['prediction_folder']}`", f"- references: `{summary['reference_folder']}`",
             f"- cases evaluated: {summary['num_cases']}; mean Dice over labels: {_text(summary['mean_dice'])} %",
             "", "## Dice (%)", "", metric_table(summary, "dice")]
    if summary["hd95"]:
        parts += ["", "## HD95 (mm)", "", metric_table(summary, "hd95")]
    alone = summary.get("structures_alone")
    if alone:
        per_class = ", ".join(f"{name} {_text(value)}" for name, value in alone["mean"].items())
        parts += ["", "## Dice (%) of each structure's own claim", "",
                  f"Each structure's channel thresholded alone, overlapping claims kept (the release's in-context "
                  f"evaluator): mean {_text(alone['mean_dice'])} % ({per_class})."]
    problems = _problem_lines(summary)
    if problems:
        parts += ["", "## Problems", "", *problems]
    return "\n".join(parts) + "\n"


def write_summary(summary: dict, out_folder) -> tuple[Path, Path]:
    """Write summary.json (NaN written as null) and summary.md into `out_folder`, each atomically; returns both
    paths."""
    out_folder = Path(out_folder)
    json_path, md_path = out_folder / SUMMARY_JSON, out_folder / SUMMARY_MD
    write_json_atomic(json_safe(summary), json_path)
    with atomic_path(md_path) as tmp:
        tmp.write_text(summary_markdown(summary))
    return json_path, md_path
