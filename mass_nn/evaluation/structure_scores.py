"""Dice of each structure's own claim, the way the release's in-context evaluator scores: every structure's
channel is thresholded alone, so two structures may claim the same voxel and neither loses it to the other.

A label map cannot hold such overlaps; `mass_predict` resolves them (inference/label_maps.py) and the
label-map Dice of segmentation_evaluation.py scores that result. Both are reported side by side: the gap between
them is what the fusion of overlapping claims costs
(documentation/in_context_segmentation.md#scoring-each-structures-own-claim).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mass_nn.errors import MassError
from mass_nn.evaluation.metrics import dice_score
from mass_nn.evaluation.segmentation_evaluation import finite_mean, read_label_map
from mass_nn.io.dataset_json import CaseFiles


class StructureScores:
    """Collects, case by case, the Dice of each class's own mask against its raw label file (NaN when both are
    empty, as everywhere in mass_nn) and summarises them as segmentation_evaluation's means do."""

    def __init__(self, classes: dict[str, int]):
        self.classes = {name: int(value) for name, value in classes.items() if int(value) != 0}
        self.per_case: list[dict] = []

    def add(self, case: CaseFiles, masks: dict[int, np.ndarray]) -> None:
        """Score the masks {label value: bool (z, y, x) in the raw geometry} of `case` against case.label."""
        if case.label is None:
            raise MassError(f"case {case.case_id} has no label file to score its structures against")
        reference, _ = read_label_map(Path(case.label))
        dice = {}
        for name, value in self.classes.items():
            mask = masks.get(value, np.zeros(reference.shape, dtype=bool))
            if mask.shape != reference.shape:
                raise MassError(f"{case.label}: shape {reference.shape} (z, y, x), the prediction of structure "
                                f"{name} has {mask.shape}; the label must share its image's grid")
            dice[name] = dice_score(mask, reference == value)
        self.per_case.append({"case_id": case.case_id, "dice": dice})

    def summary(self) -> dict:
        """{"mean_dice": mean over classes, "mean": {class: mean over cases}, "per_case": [...]}; a class is
        averaged over the cases where its Dice is defined."""
        mean = {name: finite_mean([c["dice"][name] for c in self.per_case]) for name in self.classes}
        return {"mean_dice": finite_mean(list(mean.values())), "mean": mean, "per_case": self.per_case}
