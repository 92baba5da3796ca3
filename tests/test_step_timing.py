"""Sizing a run to a time budget: the epochs that fit, and the throw-away timing run on the phantom."""
from __future__ import annotations

import math

import pytest

from mass_nn.paths import MassPaths
from mass_nn.training import step_timing
from mass_nn.training.options import TrainingOptions
from mass_nn.training.step_timing import epochs_that_fit, timed_step_seconds


def test_epochs_that_fit_count_whole_epochs_inside_the_bounds():
    assert epochs_that_fit(2.8, 60, 50.0, 2, 20) == 17  # 17.9 fit
    assert epochs_that_fit(3.8, 60, 50.0, 2, 20) == 13
    assert epochs_that_fit(0.5, 60, 50.0, 2, 20) == 20  # capped
    assert epochs_that_fit(60.0, 60, 50.0, 2, 20) == 2  # a slow machine still gets the lowest
    assert epochs_that_fit(1.0, 30, 1.0, 1, 5) == 2  # exactly two epochs of 30 s
    with pytest.raises(ValueError, match="expected a positive step time"):
        epochs_that_fit(0.0, 60, 50.0, 2, 20)
    with pytest.raises(ValueError, match="lowest <= highest"):
        epochs_that_fit(1.0, 60, 50.0, 5, 2)


def test_timing_run_measures_a_real_step_and_leaves_nothing_behind(pretraining_roots):
    options = TrainingOptions(mode="PRETRAIN", datasets=["990"], trainer="MASSPretrainer", configuration="3d_cpu",
                              plans_name="MassPlans", epochs=50, iters_per_epoch=100, device="cpu", num_workers=0,
                              val_dataset=["990"], continue_training=True, extra={"num_tasks": 4})
    seconds = timed_step_seconds(options, pretraining_roots, steps=1)
    assert math.isfinite(seconds) and seconds > 0
    assert list(pretraining_roots.results.iterdir()) == []  # the throw-away run's folder is gone
    assert (options.epochs, options.iters_per_epoch, options.val_dataset, options.continue_training) == (
        50, 100, ["990"], True)  # the caller's options are untouched
    assert options.extra == {"num_tasks": 4}


def test_timing_is_the_median_of_the_epochs_after_the_warm_up(monkeypatch, tmp_path):
    seen = {}

    def fake_run(options, paths):
        seen.update(epochs=options.epochs, steps=options.iters_per_epoch)
        return {"output_folder": str(paths.results)}

    # the warm-up epoch (9 s) is never counted, one disturbed epoch (5 s) does not move the median
    monkeypatch.setattr(step_timing, "run_training", fake_run)
    records = [{"step_seconds": s} for s in (9.0, 1.0, 5.0, 2.0)]
    monkeypatch.setattr(step_timing, "read_metrics", lambda folder: records)
    options = TrainingOptions(mode="PRETRAIN", datasets=["990"], epochs=50, iters_per_epoch=100, extra={})
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "results")
    assert step_timing.timed_step_seconds(options, paths, steps=4) == 2.0
    assert seen == {"epochs": 1 + step_timing.TIMED_EPOCHS, "steps": 4}
    assert step_timing.timing_steps(4) == 16
