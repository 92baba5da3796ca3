"""Reference-calibrated thresholds and per-label thresholds in the label map."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mass_nn.inference.label_maps import probabilities_to_label_map
from mass_nn.inference.reference_calibration import (THRESHOLD_GRID, best_threshold, calibrate_thresholds,
                                                     dice_per_threshold)


def test_dice_per_threshold_counts_hard_dice_at_every_cut():
    probabilities = torch.tensor([0.9, 0.3, 0.3, 0.1])
    mask = torch.tensor([True, True, False, False])
    curve = dice_per_threshold(probabilities, mask, grid=(0.2, 0.5, 0.95))
    # t=0.2: predicted {0,1,2} -> 2*2/(3+2); t=0.5: {0} -> 2/(1+2); t=0.95: nothing -> 0
    np.testing.assert_allclose(curve, [0.8, 2 / 3, 0.0])


def test_best_threshold_averages_references_and_prefers_the_higher_on_ties():
    grid = (0.1, 0.2, 0.3)
    assert best_threshold([np.array([0.2, 0.6, 0.1]), np.array([0.4, 0.2, 0.1])], grid) == 0.2  # means .3 .4 .1
    assert best_threshold([np.array([0.5, 0.5, 0.1])], grid) == 0.2
    assert THRESHOLD_GRID[0] == 0.05 and THRESHOLD_GRID[-1] == 0.95 and len(THRESHOLD_GRID) == 19


class _Scaled(torch.nn.Module):
    """segment() returns, for task k, logit(p_k * image): probabilities proportional to the image."""

    def __init__(self, scales):
        super().__init__()
        self.scales = scales

    def segment(self, image, embedding):
        p = torch.stack([s * image[:, 0] for s in self.scales], dim=1).clamp(1e-4, 1 - 1e-4)
        return torch.log(p / (1 - p))


def test_calibration_finds_the_cut_that_separates_each_reference():
    image = np.zeros((1, 4, 4, 4), dtype=np.float32)
    image[0, :2] = 1.0  # structure: the first two slices
    mask = (image[0] > 0).astype(np.float32)
    network = _Scaled([0.32, 0.82])  # task 0 is 0.32 inside, task 1 0.82; 0 outside
    thresholds = calibrate_thresholds(network, None, [[(image, mask)], [(image, mask)]])
    assert thresholds == [0.3, 0.8]  # every cut up to the inside value is perfect; ties go to the highest


def test_label_map_with_one_threshold_per_label():
    probabilities = np.zeros((2, 1, 1, 3), dtype=np.float32)
    probabilities[0, 0, 0] = [0.35, 0.35, 0.1]
    probabilities[1, 0, 0] = [0.2, 0.6, 0.45]
    fixed = probabilities_to_label_map(probabilities, [3, 7], 0.5)
    assert fixed[0, 0].tolist() == [0, 7, 0]
    per_label = probabilities_to_label_map(probabilities, [3, 7], [0.3, 0.5])
    assert per_label[0, 0].tolist() == [3, 7, 0]  # voxel 1: label 7 (0.6) beats label 3 (0.35), both above
    # a more probable label under its own threshold does not hide one above its threshold
    assert probabilities_to_label_map(probabilities, [3, 7], [0.3, 0.65])[0, 0].tolist() == [3, 3, 0]
    with pytest.raises(ValueError, match="3 thresholds for 2 labels"):
        probabilities_to_label_map(probabilities, [3, 7], [0.1, 0.2, 0.3])
