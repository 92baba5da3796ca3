"""What each run of the replication gets: the budgets, and how a budget in minutes is turned into each method's
epochs.

A budget in minutes gives every pretraining method the same wall-clock minutes of training, alone on all cores,
each at its own batch: MASS at the CPU recipe's (documentation/pretraining.md#the-cpu-recipe), the baselines at
their trainers' defaults. The lr schedule of a method is laid over the steps its step time fits in the minutes,
measured by a short probe run of the same command, and `mass_train --max-minutes` stops it by the clock should
the probe have read the steps too fast. A budget in steps (the custom `--pretrain-epochs`) gives every method the
same optimiser steps at batch 2.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, replace

from mass_nn.training.precision import cpu_has_native_bf16

# The CPU recipe's batch for MASS in a budget in minutes (the in-context curve's batch-8 hour): batch 8 at the
# unscaled lr. The baselines keep their defaults (batch 2 from the plans).
MASS_RECIPE_BATCH = 8
MASS_RECIPE_FLAGS = ("--batch-size", str(MASS_RECIPE_BATCH), "--lr-scaling", "none")
# Epochs a probe runs: one warm-up (allocation, the loader's start) and the timed rest, whose median is read.
PROBE_EPOCHS = 3
# The epoch length of a budget in minutes: every epoch ends with a checkpoint written and the clock read
# (--max-minutes stops after an epoch), so about a minute: a 40 ms step does not write a checkpoint every few
# seconds, and a 2.5 s step does not leave minutes of the budget unused.
EPOCH_SECONDS = 60.0


@dataclass(frozen=True)
class Budget:
    """What each run gets. Pretraining: the same minutes for every method (`pretrain_minutes`), or else the same
    number of optimiser steps (epochs x iters)."""

    name: str
    pretrain_epochs: int
    pretrain_iters_per_epoch: int
    finetune_epochs: int
    finetune_iters_per_epoch: int
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    classification_fractions: tuple[float, ...]
    classification_epochs: int
    parallel_jobs: int = 2
    threads_per_job: int = 1
    pretrain_minutes: float | None = None
    probe_iters: int = 10  # steps per probe epoch (budgets in minutes)
    bf16_where_native: bool = False  # pretrain every method in bf16 on CPUs that compute it natively

    @property
    def by_minutes(self) -> bool:
        return self.pretrain_minutes is not None

    @property
    def pretrain_steps(self) -> int:
        return self.pretrain_epochs * self.pretrain_iters_per_epoch

    @property
    def finetune_steps(self) -> int:
        return self.finetune_epochs * self.finetune_iters_per_epoch

    def pretrain_precision(self) -> str:
        """`mass_train --precision` of every pretraining run on this machine."""
        return "bf16" if self.bf16_where_native and cpu_has_native_bf16() else "fp32"


FULL = Budget("full", pretrain_epochs=5, pretrain_iters_per_epoch=60, finetune_epochs=2, finetune_iters_per_epoch=12,
              shots=(1, 5), seeds=(0, 1, 2), classification_fractions=(0.5, 1.0), classification_epochs=20,
              pretrain_minutes=15.0, bf16_where_native=True)
QUICK = Budget("quick", pretrain_epochs=1, pretrain_iters_per_epoch=4, finetune_epochs=1, finetune_iters_per_epoch=3,
               shots=(1,), seeds=(0,), classification_fractions=(1.0,), classification_epochs=3,
               pretrain_minutes=0.3, probe_iters=2, bf16_where_native=True)


def choose_budget(quick: bool, pretrain_epochs: int | None, pretrain_minutes: float | None,
                  finetune_epochs: int | None) -> Budget:
    """FULL or QUICK, or FULL with other pretraining minutes, pretraining epochs of the same length (the same
    steps for every method instead of the same minutes) or finetuning epochs: a `custom` budget."""
    if pretrain_epochs is None and pretrain_minutes is None and finetune_epochs is None:
        return QUICK if quick else FULL
    if quick:
        raise SystemExit("--quick has its own budget; leave out --pretrain-epochs/--pretrain-minutes/"
                         "--finetune-epochs, or --quick")
    if pretrain_epochs is not None and pretrain_minutes is not None:
        raise SystemExit("--pretrain-epochs gives every method the same steps, --pretrain-minutes the same minutes: "
                         "give one of them")
    for flag, value in (("--pretrain-epochs", pretrain_epochs), ("--pretrain-minutes", pretrain_minutes),
                        ("--finetune-epochs", finetune_epochs)):
        if value is not None and value <= 0:
            raise SystemExit(f"{flag} must be positive, got {value}")
    minutes = None if pretrain_epochs is not None else (pretrain_minutes or FULL.pretrain_minutes)
    return replace(FULL, name="custom", pretrain_epochs=pretrain_epochs or FULL.pretrain_epochs,
                   pretrain_minutes=minutes, finetune_epochs=finetune_epochs or FULL.finetune_epochs)


def pretrain_cores() -> int:
    """Torch threads of a pretraining run that has the machine to itself (budgets in minutes)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def probe_step_seconds(records: list[dict], iters_per_epoch: int) -> float:
    """Median seconds per step of a probe run's epochs after the warm-up one, from its metrics records."""
    timed = [r["epoch_seconds"] / iters_per_epoch for r in records[1:] if r.get("epoch_seconds")]
    if len(records) < 2 or not timed:
        raise SystemExit(f"the probe run wrote {len(records)} epoch record(s) with step times, expected "
                         f"{PROBE_EPOCHS}: read its log, fix the cause and re-run to resume")
    return float(statistics.median(timed))




def schedule_for_minutes(step_seconds: float, minutes: float) -> tuple[int, int]:
    """(epochs, steps per epoch) of a method in a budget in minutes: the steps of `step_seconds` that fit in
    `minutes`, in epochs of about EPOCH_SECONDS (a quarter of the minutes in a token budget)."""
    if step_seconds <= 0 or minutes <= 0:
        raise ValueError(f"schedule_for_minutes: step {step_seconds} s, {minutes} min: expected positive values")
    total = max(1, int(60 * minutes / step_seconds))
    iters = max(1, min(total, round(min(EPOCH_SECONDS, 15 * minutes) / step_seconds)))
    return max(1, round(total / iters)), iters
