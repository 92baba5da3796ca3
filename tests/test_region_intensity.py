"""Region-wise intensity shifts of the reference view (training/data/region_intensity.py)."""
from __future__ import annotations

import numpy as np
import pytest

from mass_nn.training.data.augmentation import TwoViewSettings, build_two_view_transform
from mass_nn.training.data.region_intensity import MAX_REGION_FRACTION, ReferenceRegionShift


def _views(batch: int = 3, tasks: int = 4, size: int = 32):
    rng = np.random.default_rng(0)
    images = rng.normal(2.0, 3.0, size=(batch, 2, size, size, size)).astype(np.float32)
    masks = np.zeros((batch, tasks, size, size, size), np.uint8)
    masks[:, 0] = 1  # the "everything" task: the whole view
    masks[:, 1, 2:10, 2:10, 2:10] = 1
    masks[:, 2, 20:28, 20:28, 20:28] = 1
    return images, masks


def test_shifts_stay_inside_the_task_regions_and_fade_at_their_border():
    images, masks = _views()
    np.random.seed(3)
    out = ReferenceRegionShift(1.0, magnitude=1.0)(reference_image=images.copy(), reference_masks=masks)
    change = out["reference_image"] - images
    assert np.array_equal(out["reference_masks"], masks)
    # beyond the fade of both regions nothing moves (the "everything" channel covers the view and is skipped)
    assert np.abs(change[:, :, 14:16, 14:16, 14:16]).max() == 0.0
    assert np.abs(change[:, :, 0:1, 20:, 0:10]).max() == 0.0
    std = images.reshape(3, 2, -1).std(axis=2)
    for b in range(3):
        for centre in (6, 24):
            # one draw per region: the same number of standard deviations in both image channels, at most 1
            units = change[b, :, centre, centre, centre] / std[b]
            assert units[0] == pytest.approx(units[1], rel=1e-4)
            assert 0.0 < abs(units[0]) <= 1.0 + 1e-5
        # the voxel just outside a region gets part of the shift, not all of it
        edge, inside = change[b, :, 10, 6, 6], change[b, :, 6, 6, 6]
        assert np.all(np.abs(edge) < 0.7 * np.abs(inside))
    assert not np.allclose(change[0, :, 6, 6, 6], change[1, :, 6, 6, 6])  # drawn per sample


def test_probability_zero_and_large_regions_leave_the_image_alone():
    images, masks = _views()
    np.random.seed(0)
    same = ReferenceRegionShift(0.0)(reference_image=images.copy(), reference_masks=masks)["reference_image"]
    assert np.array_equal(same, images)
    masks[:, 1:] = 0
    masks[:, 1, :, :, : int(32 * MAX_REGION_FRACTION) + 2] = 1  # more than half the view
    np.random.seed(0)
    out = ReferenceRegionShift(1.0)(reference_image=images.copy(), reference_masks=masks)["reference_image"]
    assert np.array_equal(out, images)


def test_seeded_shifts_repeat_and_bad_arguments_fail():
    images, masks = _views()
    runs = []
    for _ in range(2):
        np.random.seed(7)
        runs.append(ReferenceRegionShift(0.5)(reference_image=images.copy(), reference_masks=masks)["reference_image"])
    assert np.array_equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="probability"):
        ReferenceRegionShift(1.2)
    with pytest.raises(ValueError, match="magnitude"):
        ReferenceRegionShift(0.5, magnitude=-1.0)
    with pytest.raises(ValueError, match="reference_region_shift"):
        TwoViewSettings(patch_size_zyx=(16, 16, 16), reference_region_shift=-0.1)


def test_the_two_view_transform_shifts_only_the_reference():
    settings = TwoViewSettings(patch_size_zyx=(16, 16, 16), reference_region_shift=1.0)
    names = [type(t).__name__ for t in build_two_view_transform(settings).transforms]
    assert names.count("ReferenceRegionShift") == 1
    assert names.index("ReferenceRegionShift") == 1  # right after the reference's warp, before its appearance
    plain = TwoViewSettings(patch_size_zyx=(16, 16, 16))
    assert "ReferenceRegionShift" not in [type(t).__name__ for t in build_two_view_transform(plain).transforms]
