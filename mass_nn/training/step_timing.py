"""Sizing a run to a time budget: the step time of this machine, measured by a throw-away run, and the whole
epochs that fit in the budget.

A run given in minutes rather than steps (`mass_demo`'s ten minutes) gets more steps on a faster processor; the
same number of steps would break the budget on a slower one. The throw-away run uses the real trainer, data and
batch, so the time includes the loader, the loss and the optimiser, not only the network. (A run that may stop
wherever its time runs out, on a fixed lr schedule, needs no timing: `mass_train --max-minutes`.)
"""
from __future__ import annotations

import statistics
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


# Epochs timed after the warm-up one: the median of their mean step times. One 4-step epoch alone read 0.33 and
# 0.44 s per step in two fresh clones on one idle machine (900 against 650 demo steps); a median of three is not
# moved by one disturbed epoch.
TIMED_EPOCHS = 3


def timing_steps(steps: int) -> int:
    """The steps a timing run of `steps`-step epochs trains: the warm-up epoch and TIMED_EPOCHS more."""
    return (1 + TIMED_EPOCHS) * steps


def timed_step_seconds(options: TrainingOptions, paths: MassPaths, steps: int) -> float:
    """Median over TIMED_EPOCHS epochs of `steps` steps of their mean seconds per step, after one warm-up epoch
    (allocation, the loader's start), of a run with `options` without in-context validation, in a temporary
    results folder under paths.results that is removed afterwards."""
    timing = replace(options, epochs=1 + TIMED_EPOCHS, iters_per_epoch=steps, val_dataset=None,
                     continue_training=False, val_every=1 + TIMED_EPOCHS, val_batches=1, extra=dict(options.extra))
    paths.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="step_timing_", dir=paths.results) as scratch:
        scratch_paths = MassPaths(raw=paths.raw, preprocessed=paths.preprocessed, results=Path(scratch))
        records = read_metrics(run_training(timing, scratch_paths)["output_folder"])
        return float(statistics.median(record["step_seconds"] for record in records[1:]))
