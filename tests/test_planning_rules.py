"""Axis / interval / modality / window rules with the exact numbers of documentation/planning.md."""
import pytest

from mass_nn.planning.fingerprint_records import ChannelIntensityStats, PERCENTILES, percentile_key
from mass_nn.planning.mask_slicing import (SliceSchedule, mask_generation_axis, on_every_axis, plan_slicing,
                                          seed_slice_interval)
from mass_nn.planning.plans import MaskGenerationPlan
from mass_nn.planning.modality import modality_of_channel
from mass_nn.planning.windows import derive_windows


@pytest.mark.parametrize("spacing_zyx, axis", [
    ((5.0, 0.7, 0.7), 0),      # classic axial CT: slices along z
    ((0.7, 5.0, 0.7), 1),      # coronal acquisition
    ((0.8, 0.8, 4.0), 2),      # sagittal acquisition
    ((1.0, 1.0, 1.0), 0),      # isotropic -> first axis
    ((1.0, 1.1, 1.3), 0),      # ratio 1.3 still counts as isotropic
    ((1.0, 1.0, 1.35), 2),     # ratio 1.35: finest in-plane is the plane of axes 0 and 1
    ((3.27, 0.98, 0.98), 0),
])
def test_mask_generation_axis(spacing_zyx, axis):
    assert mask_generation_axis(spacing_zyx) == axis


@pytest.mark.parametrize("spacing, interval", [(5.0, 3), (3.27, 4), (1.5, 10), (0.7, 21), (15.0, 1), (20.0, 1),
                                               (3.0, 5)])
def test_seed_slice_interval(spacing, interval):
    assert seed_slice_interval(spacing) == interval
    assert seed_slice_interval(spacing, 30.0) == max(1, int(30.0 // spacing))


@pytest.mark.parametrize("name, modality", [("CT", "CT"), ("ct", "CT"), ("PET", "PET"), ("PET (SUV)", "PET"),
                                            ("PT", "PET"), ("T1", "MR"), ("T1c", "MR"), ("MR_T1", "MR"),
                                            ("FLAIR", "MR"), ("ADC", "MR"), ("t2w", "MR"), ("bSSFP", "MR"),
                                            ("T2SPIR", "MR"), ("ultrasound", "OTHER")])
def test_modality_of_channel(name, modality):
    assert modality_of_channel(name) == modality


def _stats(modality, p005, p995):
    percentiles = {percentile_key(q): 0.0 for q in PERCENTILES}
    percentiles.update({"p00_5": p005, "p99_5": p995})
    return ChannelIntensityStats(name=modality, modality=modality, foreground_definition="", mean=0, std=1,
                                 min=p005, max=p995, percentiles=percentiles)


def test_ct_windows_default_when_range_covers_them():
    windows = derive_windows(_stats("CT", -1000.0, 2000.0))
    assert [(w.name, w.kind, w.lower, w.upper) for w in windows] == [
        ("soft_tissue", "fixed", -115.0, 235.0), ("contrast", "fixed", -110.0, 140.0), ("bone", "fixed", -450.0, 750.0)]


def test_ct_windows_are_clipped_to_the_foreground_range():
    windows = {w.name: w for w in derive_windows(_stats("CT", -300.0, 400.0))}
    assert (windows["bone"].lower, windows["bone"].upper) == (-300.0, 400.0)
    assert (windows["soft_tissue"].lower, windows["soft_tissue"].upper) == (-115.0, 235.0)


def test_ct_not_in_hu_falls_back_to_quantiles():
    windows = derive_windows(_stats("CT", 900.0, 3000.0))  # stored with +1024 offset: soft tissue window misses
    assert all(w.kind == "quantile" for w in windows)


@pytest.mark.parametrize("modality", ["MR", "PET", "OTHER"])
def test_quantile_windows_for_mr_and_pet(modality):
    windows = derive_windows(_stats(modality, 0.0, 100.0))
    assert [(w.kind, w.lower, w.upper) for w in windows] == [("quantile", 5.0, 95.0), ("quantile", 15.0, 85.0),
                                                            ("quantile", 1.0, 99.0)]


def test_one_slicing_rule_for_plans_cases_and_native_slices():
    """Axis from the original spacing, interval in slices of the grid SAM2 runs on: a 5 mm-thick axial series
    is cut axially; 15 mm is 3 raw slices or 5 slices of a 3 mm grid; the other axes keep the same distance."""
    original, grid = (5.0, 0.8, 0.8), (3.0, 3.0, 3.0)
    assert plan_slicing(original, original, 15.0) == SliceSchedule(0, 3)
    assert plan_slicing(original, grid, 15.0) == SliceSchedule(0, 5)
    plan = MaskGenerationPlan(axis=0, axis_spacing_mm=5.0, seed_slice_distance_mm=15.0, seed_slice_interval_native=3,
                              isotropy_ratio=1.3)
    assert plan.slicing(original, grid) == plan_slicing(original, grid, 15.0, 1.3)
    assert on_every_axis(SliceSchedule(0, 3), original) == [SliceSchedule(0, 3), SliceSchedule(1, 18),
                                                            SliceSchedule(2, 18)]
    assert plan_slicing((1.0, 1.1, 1.2), (1.0, 1.1, 1.2), 15.0).axis == 0  # isotropic: axis 0
