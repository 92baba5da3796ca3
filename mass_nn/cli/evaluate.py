"""mass_evaluate: score segmentation predictions (Dice, HD95) or classification predictions (AUC, accuracy).

Examples:
  mass_evaluate SEGMENTATION -pred PRED_FOLDER -ref RAW/Dataset991_X/labelsTs -d 991
  mass_evaluate SEGMENTATION -pred PRED_FOLDER -ref REF_FOLDER --labels dataset.json --no-hd95 -np 4
  mass_evaluate CLASSIFICATION -pred RUN/predictions.csv -ref RAW/Dataset992_Y/labels.csv
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from mass_nn.cli.common import add_common_arguments, add_path_arguments, paths_from_args, run_cli
from mass_nn.errors import MassError
from mass_nn.io.atomic import prepare_output_folder


def _add_segmentation_parser(subparsers) -> None:
    p = subparsers.add_parser("SEGMENTATION", help="Dice and HD95 of predicted label maps",
                              description="Per-case and mean Dice and HD95 of a folder of predicted label maps "
                                          "against a folder of references (documentation/evaluation.md).")
    p.add_argument("-pred", "--predictions", required=True, help="folder of predicted <case><ending> label maps")
    p.add_argument("-ref", "--references", required=True, help="folder of reference label maps, same file names")
    names = p.add_mutually_exclusive_group()
    names.add_argument("-d", "--dataset", help="dataset id or name whose dataset.json names the labels")
    names.add_argument("--labels", help="a dataset.json (or the folder holding it) that names the labels")
    p.add_argument("--no-hd95", action="store_true", help="Dice only (HD95 is the slow part)")
    p.add_argument("-o", "--output", help="folder for summary.json and summary.md (default: the -pred folder)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="cases evaluated in parallel (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_path_arguments(p)
    add_common_arguments(p)


def _add_classification_parser(subparsers) -> None:
    p = subparsers.add_parser("CLASSIFICATION", help="AUC and accuracy of case-level probabilities",
                              description="Per-class AUC, mean AUC and accuracy of a predictions CSV against a "
                                          "labels.csv (documentation/evaluation.md).")
    p.add_argument("-pred", "--predictions", required=True, help="predictions CSV: case_id,<class_1>,...")
    p.add_argument("-ref", "--references", required=True, help="labels.csv of the dataset")
    p.add_argument("-o", "--output", help="folder for classification_summary.json/.md (default: the CSV's folder)")
    add_common_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass_evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    _add_segmentation_parser(subparsers)
    _add_classification_parser(subparsers)
    return parser


def _labels_from_file(path: Path) -> dict[str, int]:
    """The "labels" of a dataset.json file or of the dataset.json inside a folder."""
    from mass_nn.io.atomic import read_json
    path = path / "dataset.json" if path.is_dir() else path
    if not path.is_file():
        raise MassError(f"{path}: not found; pass --labels the dataset.json that names the labels")
    labels = read_json(path).get("labels")
    if not isinstance(labels, dict) or not labels or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        raise MassError(f'{path}: has no "labels" mapping names to integers; add e.g. {{"background": 0, '
                        f'"tumour": 1}}, or leave out --labels to evaluate the values found in the references')
    return labels


def _labels_from_dataset(args) -> dict[str, int]:
    from mass_nn.io.dataset_json import find_dataset_name
    paths = paths_from_args(args)
    name = find_dataset_name(args.dataset, [paths.raw, paths.preprocessed])
    folder = next((root / name for root in (paths.raw, paths.preprocessed)
                   if (root / name / "dataset.json").is_file()), paths.raw / name)
    return _labels_from_file(folder)


def _report_problems(summary: dict) -> None:
    for error in summary["errors"]:
        print(f"error: case {error['case_id'] or '-'}: {error['message']}", file=sys.stderr)
    for key, text in (("predictions_without_reference", "prediction(s) without reference"),
                      ("references_without_prediction", "reference(s) without prediction")):
        if summary[key]:
            shown = ", ".join(summary[key][:10]) + (", ..." if len(summary[key]) > 10 else "")
            print(f"warning: {len(summary[key])} {text}, not evaluated: {shown}", file=sys.stderr)
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)


def _run_segmentation(args) -> int:
    from mass_nn.evaluation.segmentation_evaluation import (evaluate_segmentation_folders, metric_table,
                                                            write_summary)
    if args.num_processes < 1:
        raise MassError("-np must be at least 1")
    if args.output:
        prepare_output_folder(args.output)
    labels = (_labels_from_dataset(args) if args.dataset else
              _labels_from_file(Path(args.labels)) if args.labels else None)
    summary = evaluate_segmentation_folders(args.predictions, args.references, labels, hd95=not args.no_hd95,
                                            num_processes=args.num_processes, progress=not args.no_progress)
    json_path, _ = write_summary(summary, args.output or args.predictions)
    print(metric_table(summary, "dice"))
    _report_problems(summary)
    hd95 = f", mean HD95 {summary['mean_hd95']:.2f} mm" if math.isfinite(summary["mean_hd95"]) else ""
    dice = f"{100 * summary['mean_dice']:.1f} %" if math.isfinite(summary["mean_dice"]) else "n/a"
    print(f"{summary['num_cases']} case(s), {len(summary['labels'])} label(s): mean Dice {dice}{hd95} -> "
          f"{json_path} (and summary.md)")
    return 1 if summary["errors"] else 0


def _run_classification(args) -> int:
    from mass_nn.evaluation.classification_evaluation import (auc_table, evaluate_classification,
                                                              write_classification_summary)
    if args.output:
        prepare_output_folder(args.output)
    summary = evaluate_classification(args.predictions, args.references)
    json_path, _ = write_classification_summary(summary, args.output or Path(args.predictions).parent)
    print(auc_table(summary))
    auc = f"{100 * summary['mean_auc']:.1f} %" if math.isfinite(summary["mean_auc"]) else "n/a"
    print(f"{summary['num_cases']} case(s), {len(summary['class_names'])} class(es): mean AUC {auc}, accuracy "
          f"{100 * summary['accuracy']:.1f} % -> {json_path}")
    return 0


def _run(args) -> int:
    return _run_segmentation(args) if args.mode == "SEGMENTATION" else _run_classification(args)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
