"""Sizing a run to a time budget: the step time of this machine, measured by a throw-away run, and the whole
epochs that fit in the budget.

A run given in minutes rather than steps (`mass_demo`'s ten minutes, the in-context learning curve's CPU hour)
gets more steps on a faster processor; the same number of steps would break the budget on a slower one. The
throw-away run uses the real trainer, data and batch, so the time includes the loader, the loss and the
optimiser, not only the network.
"""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from mass_nn.paths import MassPaths
from mass_nn.training.metrics_log import read_metrics
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_training import run_training


def epochs_that_fit(step_seconds: float, iters_per_epoch: int, budget_minutes: float, lowest: int,
                    highest: int) -> int:
    """The whole epochs of `iters_per_epoch` steps of `step_seconds` that fit in the budget, clamped to
    lowest..highest."""
    if step_seconds <= 0 or iters_per_epoch < 1 or lowest > highest:
        raise ValueError(f"epochs_that_fit: step {step_seconds} s, {iters_per_epoch} steps per epoch, bounds "
                         f"{lowest}..{highest}: expected a positive step time and steps, lowest <= highest")
    fitting = int(60 * budget_minutes // (step_seconds * iters_per_epoch))
    return max(lowest, min(highest, fitting))


def timed_step_seconds(options: TrainingOptions, paths: MassPaths, steps: int) -> float:
    """Mean seconds per step of the second of two `steps`-step epochs (the first is warm-up: allocation, the
    loader's start) of a run with `options`, without in-context validation, in a temporary results folder under
    paths.results that is removed afterwards."""
    timing = replace(options, epochs=2, iters_per_epoch=steps, val_dataset=None, continue_training=False,
                     val_every=2, val_batches=1, extra=dict(options.extra))
    paths.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="step_timing_", dir=paths.results) as scratch:
        scratch_paths = MassPaths(raw=paths.raw, preprocessed=paths.preprocessed, results=Path(scratch))
        return float(read_metrics(run_training(timing, scratch_paths)["output_folder"])[-1]["step_seconds"])
