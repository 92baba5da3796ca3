"""Each structure's own claim: the predictor's unfused claims, their export to the raw geometry, and their Dice
(the release's in-context evaluator) next to the label map's."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mass_nn.errors import MassError
from mass_nn.evaluation.structure_scores import StructureScores
from mass_nn.experiments.few_shot_protocol import results_table
from mass_nn.inference.predictor import SegmentationPredictor
from mass_nn.io.dataset_json import CaseFiles
from mass_nn.io.image_io import ImageGeometry, write_image


def _predictor(network, values):
    plans = SimpleNamespace(configuration=lambda name: SimpleNamespace(patch_size_zyx=[32, 32, 32]))
    embedding = [torch.randn(1, len(values), 11, c) for c in network.config.prior_channels()]
    return SegmentationPredictor(network, embedding, values, plans, "3d")


def test_structure_claims_keep_the_overlaps_that_the_label_map_resolves(tiny_network):
    predictor = _predictor(tiny_network, [2, 4])
    probabilities = torch.zeros(2, 3, 4, 10)
    probabilities[0, ..., :7] = 0.7  # label 2 claims columns 0-6
    probabilities[1, ..., 4:] = 0.6  # label 4 claims columns 4-9: both claim 4-6
    claims = predictor.structure_claims(probabilities)
    assert claims[0, ..., :7].all() and not claims[0, ..., 7:].any()
    assert claims[1, ..., 4:].all() and not claims[1, ..., :4].any()
    label_map = predictor.label_map_of(probabilities)  # smallest claim wins the shared columns in context
    assert (label_map[..., :4] == 2).all() and (label_map[..., 4:] == 4).all()
    predictor.thresholds = [0.8, 0.5]  # per-label thresholds apply to the claims too
    claims = predictor.structure_claims(probabilities)
    assert not claims[0].any() and claims[1, ..., 4:].all()


def test_predict_case_returns_each_structure_in_the_raw_geometry(tmp_path, tiny_network):
    from mass_nn.io.image_io import read_image
    from mass_nn.planning.plans import Plans
    from tests.conftest import smooth_volume
    from tests.test_inference import _cpu_plans
    plans = _cpu_plans(tmp_path)
    geometry = ImageGeometry(spacing_xyz=(0.9, 1.1, 4.0), origin_xyz=(0.0, 0.0, 0.0),
                             direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size_xyz=(41, 37, 11))
    image_path = tmp_path / "query_0000.nii.gz"
    write_image(smooth_volume(geometry.shape_zyx, seed=4), geometry, image_path)
    predictor = _predictor(tiny_network, [1, 5])
    predictor.plans, predictor.configuration = Plans.from_dict(plans.to_dict()), next(iter(plans.configurations))
    predictor.window = [32, 32, 32]
    predictor.thresholds = [0.3, 0.3]  # random weights: low enough that both labels claim voxels
    out = tmp_path / "query.nii.gz"
    handed = []

    def take(masks):  # the label map is written after the masks are handed over
        handed.append(masks)
        assert not out.exists()

    predictor.predict_case(CaseFiles("query", (image_path,)), out, on_structure_masks=take)
    label_map, _ = read_image(out, dtype=np.int16)
    masks = handed[0]
    assert sorted(masks) == [1, 5]
    for value, mask in masks.items():
        assert mask.dtype == bool and mask.shape == geometry.shape_zyx
        assert not ((label_map == value) & ~mask).any()  # fusion only ever takes claimed voxels away
    assert (masks[1] | masks[5]).sum() == (label_map > 0).sum()  # and never leaves a claimed voxel unlabelled


def _label_file(tmp_path, array, name="case.nii.gz"):
    geometry = ImageGeometry(spacing_xyz=(1.0, 1.0, 1.0), origin_xyz=(0.0, 0.0, 0.0),
                             direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size_xyz=array.shape[::-1])
    path = tmp_path / name
    write_image(array.astype(np.uint8), geometry, path)
    return path


def test_structure_scores_count_overlapping_claims_for_both_structures(tmp_path):
    reference = np.zeros((2, 4, 10), dtype=np.uint8)
    reference[..., :4] = 1
    reference[..., 6:] = 2
    label = _label_file(tmp_path, reference)
    scores = StructureScores({"background": 0, "kidney": 1, "spleen": 2, "absent": 3})
    first = np.zeros(reference.shape, dtype=bool)
    first[..., :6] = True  # kidney claims its 4 columns and 2 more
    second = np.zeros(reference.shape, dtype=bool)
    second[..., 4:] = True  # spleen claims its 4 columns and the same 2 more
    scores.add(CaseFiles("case", (label,), label), {1: first, 2: second})
    summary = scores.summary()
    assert summary["mean"]["kidney"] == pytest.approx(2 * 4 / (6 + 4))
    assert summary["mean"]["spleen"] == pytest.approx(2 * 4 / (6 + 4))
    assert math.isnan(summary["mean"]["absent"])  # neither predicted nor present: not counted
    assert summary["mean_dice"] == pytest.approx(0.8)
    assert set(summary["mean"]) == {"kidney", "spleen", "absent"}
    empty = np.zeros(reference.shape, dtype=bool)
    scores.add(CaseFiles("missed", (label,), label), {1: empty})  # a structure without a mask scores 0
    assert scores.summary()["mean"]["kidney"] == pytest.approx(0.4)
    assert scores.per_case[1]["dice"]["spleen"] == 0.0


def test_structure_scores_name_the_label_file_on_bad_input(tmp_path):
    label = _label_file(tmp_path, np.ones((2, 3, 4)))
    scores = StructureScores({"organ": 1})
    with pytest.raises(MassError, match=r"case\.nii\.gz: shape \(2, 3, 4\).*organ has \(2, 3, 5\)"):
        scores.add(CaseFiles("case", (label,), label), {1: np.ones((2, 3, 5), dtype=bool)})
    with pytest.raises(MassError, match="case nolabel has no label file"):
        scores.add(CaseFiles("nolabel", (label,)), {1: np.ones((2, 3, 4), dtype=bool)})


def test_few_shot_table_shows_structure_scores_and_marks_runs_without_them():
    runs = [{"method": "in_context", "shots": 1, "seed": s, "mean_dice": 0.4, "structures_alone_dice": v}
            for s, v in ((0, 0.5), (1, 0.7))]
    runs += [{"method": "finetune", "shots": 1, "seed": 0, "mean_dice": 0.6}]  # scored before the score existed
    results = {"shots": [1], "methods": ["in_context", "finetune"], "runs": runs, "checkpoint_trainer": "MASSPretrainer"}
    table = results_table(results, "structures_alone_dice")
    assert "| MASS in-context | 60.0 (10.0) |" in table
    assert "| MASS finetuned  | n/a         |" in table
    assert "| MASS in-context | 40.0 (0.0) |" in results_table(results)
