"""Scoring a fixed-class segmenter: validation Dice on preprocessed cases (cheap, every epoch) and the test
evaluation on raw cases (predicted through mass_predict's path, scored in the raw geometry)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mass_nn.datasets.labelled_data import LabelledCase
from mass_nn.evaluation.metrics import label_map_metrics
from mass_nn.evaluation.predict_and_score import predict_and_score
from mass_nn.evaluation.segmentation_evaluation import finite_mean
from mass_nn.inference.model_loading import predictor_from_checkpoint
from mass_nn.inference.predictor import SegmentationPredictor
from mass_nn.io.dataset_json import CaseFiles
from mass_nn.planning.plans import Plans
from mass_nn.preprocessing.blosc2_storage import open_array


@torch.no_grad()
def dice_on_preprocessed(network: torch.nn.Module, cases: list[LabelledCase], classes: dict[str, int],
                         plans: Plans, configuration: str, device) -> dict[str, float]:
    """{"val_dice": mean over classes of the per-class mean Dice, "val_dice_<class>": ...} of whole preprocessed
    cases segmented by sliding window (classes absent from a case and its prediction do not count)."""
    predictor = SegmentationPredictor(network, None, list(classes.values()), plans, configuration, device)
    spacing = plans.configuration(configuration).target_spacing_zyx_mm
    per_class: dict[str, list[float]] = {name: [] for name in classes}
    for case in cases:
        prediction = predictor.label_map(np.asarray(open_array(case.image_path)))
        reference = np.asarray(open_array(case.seg_path))[0]
        metrics = label_map_metrics(prediction, reference, classes, spacing, hd95=False)
        for name in classes:
            per_class[name].append(metrics[name]["dice"])
    means = {name: finite_mean(values) for name, values in per_class.items()}
    return {"val_dice": finite_mean(means.values()), **{f"val_dice_{n}": v for n, v in means.items()}}


def evaluate_on_raw_cases(checkpoint: Path, cases: list[CaseFiles], classes: dict[str, int], out_folder: Path,
                          device, hd95: bool = True) -> dict:
    """Predict `cases` (raw images) with a finetuned checkpoint and score them (see predict_and_score)."""
    predictor, _ = predictor_from_checkpoint(checkpoint, str(device))
    return predict_and_score(predictor, cases, classes, out_folder, hd95)
