"""Inference building blocks: reference cropping, k-shot encoding, sliding-window blending, label maps,
export to the raw geometry, shot selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mass_nn.datasets.labelled_data import select_shots
from mass_nn.errors import MassError
from mass_nn.inference.label_maps import probabilities_to_label_map
from mass_nn.inference.reference_encoding import encode_reference_labels, label_box, reference_crop
from mass_nn.inference.sliding_window import sliding_window_probabilities, window_starts
from mass_nn.io.image_io import ImageGeometry, read_image


def test_reference_crop_near_the_border_keeps_the_label_and_pads_with_zeros():
    image = np.arange(40 * 40 * 40, dtype=np.float32).reshape(1, 40, 40, 40) + 1
    seg = np.zeros((40, 40, 40), np.int16)
    seg[0:3, 37:40, 0:2] = 4  # a structure in a corner
    crop_image, crop_mask = reference_crop(image, seg, 4, (32, 32, 32))
    assert crop_image.shape == (1, 32, 32, 32) and crop_mask.shape == (32, 32, 32)
    assert crop_mask.sum() == (seg == 4).sum()  # nothing of the label is cut off
    assert (crop_image[0][crop_mask > 0] > 0).all()  # the label lies on real image voxels
    assert (crop_image == 0).mean() > 0.5  # most of the window is padding at a corner
    with pytest.raises(ValueError, match="not in the reference"):
        reference_crop(image, seg, 5, (32, 32, 32))


def test_label_box_is_tight():
    seg = np.zeros((10, 12, 14), np.int16)
    seg[2:5, 3:4, 7:11] = 1
    assert label_box(seg, 1) == [[2, 5], [3, 4], [7, 11]]
    assert label_box(seg, 2) is None


def test_k_identical_references_equal_one_shot_and_missing_labels_are_named(tiny_network):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 40, 40, 40)).astype(np.float32)
    seg = np.zeros((40, 40, 40), np.int16)
    seg[5:15, 5:15, 5:15] = 1
    seg[20:30, 22:35, 10:20] = 2
    one = encode_reference_labels(tiny_network, [(image, seg)], [1, 2], (32, 32, 32))
    three = encode_reference_labels(tiny_network, [(image, seg)] * 3, [1, 2], (32, 32, 32))
    assert [list(t.shape) for t in one] == [[1, 2, 11, c] for c in tiny_network.config.prior_channels()]
    for a, b in zip(one, three):
        torch.testing.assert_close(a, b)
    # a label absent from one of two references is averaged over the reference that has it only
    other = np.zeros_like(seg)
    other[5:15, 5:15, 5:15] = 1
    mixed = encode_reference_labels(tiny_network, [(image, seg), (image, other)], [2], (32, 32, 32))
    alone = encode_reference_labels(tiny_network, [(image, seg)], [2], (32, 32, 32))
    for a, b in zip(mixed, alone):
        torch.testing.assert_close(a, b)
    with pytest.raises(MassError, match="'tumour'.*empty in every reference"):
        encode_reference_labels(tiny_network, [(image, other)], [3], (32, 32, 32), names=["tumour"])


@pytest.mark.parametrize("shape", [(37, 70, 51), (20, 33, 32), (64, 48, 80)])
def test_sliding_window_reconstructs_a_position_dependent_output_on_odd_shapes(shape):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    # logits equal the input channels: blending of any overlap and weights must give back sigmoid(image) exactly
    for blend in ("gaussian", "mean"):
        probabilities = sliding_window_probabilities(lambda x: x, image, (32, 32, 32), 2, overlap=0.5, blend=blend,
                                                     windows_per_batch=3)
        assert tuple(probabilities.shape) == (2, *shape)
        torch.testing.assert_close(probabilities, torch.sigmoid(torch.from_numpy(image)), atol=1e-5, rtol=1e-5)


def test_window_starts_cover_the_axis_with_the_last_window_flush():
    for size, window in [(100, 48), (49, 48), (48, 48), (10, 48), (333, 64)]:
        starts = window_starts(size, window, 0.5)
        covered = np.zeros(max(size, window), bool)
        for s in starts:
            covered[s:s + window] = True
        assert covered[:size].all() and starts[0] == 0
        assert starts[-1] == max(size - window, 0)


def test_label_map_takes_the_most_probable_label_above_threshold_and_largest_component():
    probabilities = torch.zeros(2, 4, 4, 12)
    probabilities[0, :, :, 0:4] = 0.9
    probabilities[1, :, :, 2:6] = 0.95  # wins where both are above 0.5
    probabilities[0, :, :, 9:10] = 0.8  # a small second component of label 3
    label_map = probabilities_to_label_map(probabilities, [3, 7])
    assert (label_map[..., 0:2] == 3).all() and (label_map[..., 2:6] == 7).all() and (label_map[..., 9] == 3).all()
    assert (label_map[..., 6:9] == 0).all()
    largest = probabilities_to_label_map(probabilities, [3, 7], keep_largest_component=True)
    assert (largest[..., 9] == 0).all() and (largest[..., 0:2] == 3).all()


def test_smallest_volume_fusion_keeps_labels_that_a_body_wide_claim_would_erase():
    probabilities = torch.zeros(3, 4, 4, 12)
    probabilities[0] = 0.9  # label 3 claims every voxel (a reference the network did not understand)
    probabilities[1, :, :, 2:8] = 0.6  # label 7: a block
    probabilities[2, :, :, 4:6] = 0.55  # label 9: nested inside label 7's block
    most_probable = probabilities_to_label_map(probabilities, [3, 7, 9], fusion="most_probable")
    assert (most_probable == 3).all()
    smallest = probabilities_to_label_map(probabilities, [3, 7, 9], fusion="smallest_volume")
    assert (smallest[..., 4:6] == 9).all() and (smallest[..., 2:4] == 7).all() and (smallest[..., 6:8] == 7).all()
    assert (smallest[..., :2] == 3).all() and (smallest[..., 8:] == 3).all()
    # unclaimed voxels stay background, equal claims go to the first label
    probabilities[0] = 0.1
    probabilities[2, :, :, 2:8] = 0.55  # now as large as label 7's claim
    tied = probabilities_to_label_map(probabilities, [3, 7, 9], fusion="smallest_volume")
    assert (tied[..., 2:8] == 7).all() and (tied[..., :2] == 0).all()
    with pytest.raises(ValueError, match="label fusion 'largest'"):
        probabilities_to_label_map(probabilities, [3, 7, 9], fusion="largest")


def test_predictor_fuses_by_smallest_volume_in_context_and_by_probability_with_fixed_classes(tiny_network):
    from types import SimpleNamespace
    from mass_nn.inference.predictor import InferenceSettings, SegmentationPredictor
    plans = SimpleNamespace(configuration=lambda name: SimpleNamespace(patch_size_zyx=[32, 32, 32]))
    embedding = [torch.randn(1, 2, 11, c) for c in tiny_network.config.prior_channels()]
    assert SegmentationPredictor(tiny_network, embedding, [1, 2], plans, "3d").label_fusion == "smallest_volume"
    assert SegmentationPredictor(tiny_network, None, [1, 2], plans, "3d").label_fusion == "most_probable"
    chosen = InferenceSettings(label_fusion="most_probable")
    assert SegmentationPredictor(tiny_network, embedding, [1, 2], plans, "3d", settings=chosen).label_fusion \
        == "most_probable"


def test_shot_selection_is_seeded_nested_and_checked():
    cases = [f"case_{i:02d}" for i in range(12)]
    assert select_shots(cases, 5, seed=3) == select_shots(list(reversed(cases)), 5, seed=3)
    assert select_shots(cases, 5, seed=3)[:1] == select_shots(cases, 1, seed=3)
    assert select_shots(cases, 5, seed=3) != select_shots(cases, 5, seed=4)
    assert select_shots(cases, None, seed=0) == cases
    with pytest.raises(MassError, match="choose 1 to 12"):
        select_shots(cases, 13, seed=0)


def test_prediction_is_written_in_the_input_geometry(tmp_path, tiny_network):
    """Anisotropic spacing and a rotated direction survive preprocessing, prediction and export."""
    from mass_nn.inference.predictor import SegmentationPredictor
    from mass_nn.io.dataset_json import CaseFiles
    from mass_nn.io.image_io import write_image
    from mass_nn.planning.plans import Plans
    from tests.conftest import smooth_volume
    plans = _cpu_plans(tmp_path)
    angle = np.deg2rad(20)
    direction = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0)
    geometry = ImageGeometry(spacing_xyz=(0.9, 1.1, 4.0), origin_xyz=(-10.0, 22.0, 5.0), direction=direction,
                             size_xyz=(61, 53, 17))
    image_path = tmp_path / "query_0000.nii.gz"
    write_image(smooth_volume(geometry.shape_zyx, seed=2), geometry, image_path)
    embedding = [torch.randn(1, 2, 11, c) for c in tiny_network.config.prior_channels()]
    configuration = next(iter(plans.configurations))
    predictor = SegmentationPredictor(tiny_network, embedding, [1, 5], Plans.from_dict(plans.to_dict()),
                                      configuration)
    out = tmp_path / "out" / "query.nii.gz"
    predictor.predict_case(CaseFiles("query", (image_path,)), out)
    label_map, written = read_image(out, dtype=np.int16)
    assert written.differences(geometry) == []
    assert set(np.unique(label_map)) <= {0, 1, 5}


def _cpu_plans(tmp_path):
    """Plans of a tiny CT dataset with a 32^3 patch (the tiny network's input size)."""
    from mass_nn.paths import MassPaths
    from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    from mass_nn.planning.plans import load_plans
    from tests.conftest import make_raw_dataset
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    make_raw_dataset(paths.raw, num_cases=3)
    plan_and_preprocess(900, paths, PlanAndPreprocessOptions(preset="cpu_only", num_processes=1, progress=False))
    plans = load_plans(next(paths.preprocessed.glob("Dataset900_*")) / "MassPlans.json")
    for config in plans.configurations.values():
        config.patch_size_zyx = [32, 32, 32]
    return plans
