"""SAM2's three windows: quantile windows are percentiles of the foreground, not of the whole crop."""
import numpy as np
import pytest

from mass_nn.masks.windowing import quantile_foreground, windowed_channels
from mass_nn.planning.plans import ChannelPlan
from mass_nn.planning.windows import DEFAULT_QUANTILE_WINDOWS, quantile_windows


def _skull_stripped_mr(seed=0):
    """A 'brain' of intensities 200..1000 inside a zero background that fills 70 % of the crop, with the small
    errors the preprocessed storage leaves on the zeros."""
    rng = np.random.default_rng(seed)
    volume = np.zeros((30, 40, 40), np.float32)
    brain = np.zeros_like(volume, dtype=bool)
    zz, yy, xx = np.mgrid[:30, :40, :40]
    brain[((zz - 15) / 11) ** 2 + ((yy - 20) / 13) ** 2 + ((xx - 20) / 13) ** 2 < 1] = True
    volume[brain] = rng.uniform(200, 1000, brain.sum())
    volume[~brain] = rng.normal(0, 0.05, (~brain).sum())
    return volume, brain


def test_mr_quantiles_come_from_the_foreground():
    volume, brain = _skull_stripped_mr()
    assert brain.mean() < 0.35
    values = quantile_foreground(volume, "MR")
    assert values.size == brain.sum() and values.min() >= 200
    plan = ChannelPlan(index=0, name="T1", modality="MR", normalization="zscore_per_image",
                       foreground_definition="nonzero voxels", windows=quantile_windows(DEFAULT_QUANTILE_WINDOWS))
    windowed = windowed_channels(volume, plan)
    # the 5-95 % window spans the brain's intensities: 5 % of brain voxels at 0, the middle of the range mid-grey
    inside = windowed[0][brain]
    assert np.mean(inside == 0) == pytest.approx(0.05, abs=0.01)
    assert np.mean(inside == 255) == pytest.approx(0.05, abs=0.01)
    assert windowed[0][~brain].max() == 0


def test_an_image_without_background_uses_every_voxel():
    volume = np.random.default_rng(1).uniform(10, 20, (10, 12, 14)).astype(np.float32)
    assert quantile_foreground(volume, "MR").size >= 0.99 * volume.size  # only voxels at the faces' median drop
    assert quantile_foreground(np.zeros((5, 5, 5), np.float32), "PET").size == 125


def test_a_z_scored_export_keeps_its_constant_background_out_of_the_quantiles():
    volume, brain = _skull_stripped_mr(seed=2)
    z_scored = (volume - volume[brain].mean()) / volume[brain].std()  # background: one negative constant
    values = quantile_foreground(z_scored, "MR")
    assert values.size == brain.sum()
