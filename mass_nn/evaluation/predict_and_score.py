"""Predict raw labelled cases with any SegmentationPredictor and score them in the raw geometry: the test step
shared by finetuned models and training-free in-context segmentation."""
from __future__ import annotations

from pathlib import Path

from mass_nn.evaluation.segmentation_evaluation import evaluate_case_pairs, write_summary
from mass_nn.evaluation.structure_scores import StructureScores
from mass_nn.inference.batch_prediction import image_ending, predict_cases
from mass_nn.io.dataset_json import CaseFiles


def predict_and_score(predictor, cases: list[CaseFiles], classes: dict[str, int], out_folder: Path,
                      hd95: bool = True) -> dict:
    """Predict `cases` into out_folder/predictions (kept for inspection), score each against its raw label,
    write out_folder/summary.json and summary.md, and return the summary (mass_evaluate's format, plus
    "prediction_failures" and "structures_alone": the Dice of each structure's own claim, structure_scores.py)."""
    predictions = Path(out_folder) / "predictions"
    with_endings = [(case, image_ending(case.images[0])) for case in cases]
    structures = StructureScores(classes)
    result = predict_cases(predictor, with_endings, predictions, progress=False, on_structure_masks=structures.add)
    failed = {f["case_id"] for f in result["failed"]}
    pairs = [(case.case_id, predictions / f"{case.case_id}{ending}", case.label) for case, ending in with_endings
             if case.case_id not in failed]
    summary = evaluate_case_pairs(pairs, classes, hd95=hd95, prediction_folder=predictions,
                                  reference_folder=cases[0].label.parent)
    summary["prediction_failures"] = result["failed"]
    summary["structures_alone"] = structures.summary()
    summary["seconds_per_case"] = [r["predict_seconds"] for r in result["predicted"]]
    write_summary(summary, out_folder)
    return summary
