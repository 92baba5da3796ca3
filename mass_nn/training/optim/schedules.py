"""Learning-rate schedules for MASS pretraining, stepped once per optimiser iteration.

"poly" (the paper): linear warm-up, then base_lr * (1 - progress)^power down to 0.
"onecycle" (the released MASS config): torch's OneCycleLR, cosine warm-up to the base lr and cosine decay.
"wsd" (warm-up, stable, decay): the same warm-up as "poly", the base lr held, then a linear decay to 0 over the
last WSD_DECAY_FRACTION of the steps, so that a short run still far from converged trains at its peak lr for
longer; in the CPU recipe's 600-step hour it did not beat poly (documentation/in_context_ablations.md, run 28).

Build the scheduler on the freshly built optimiser, then load the optimiser's and the scheduler's state dicts
to resume; every schedule then continues exactly where it stopped.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

LR_SCHEDULES = ("poly", "onecycle", "wsd")
DEFAULT_ONECYCLE_PCT_START = 0.05  # released MASS config: 5k warm-up steps of 100k
WSD_DECAY_FRACTION = 0.2


class LinearWarmup(ABC):
    """Multiplier of the base lr at iteration `step` (0-based): (step + 1) / (warmup_steps + 1) during warm-up,
    so the first iteration already moves a little, then what `after_warmup` gives.

    Classes rather than closures so LambdaLR stores their settings in state_dict() as plain values.
    """

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        return self.after_warmup(step)

    @abstractmethod
    def after_warmup(self, step: int) -> float:
        """The multiplier at a step after the warm-up."""


class PolyWithWarmup(LinearWarmup):
    """The warm-up, then (1 - progress)^power, reaching 0 at total_steps."""

    def __init__(self, total_steps: int, warmup_steps: int, power: float) -> None:
        super().__init__(total_steps, warmup_steps)
        self.power = power

    def after_warmup(self, step: int) -> float:
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return max(0.0, 1.0 - progress) ** self.power


class WarmupStableDecay(LinearWarmup):
    """The warm-up, then 1 until `decay_steps` before the end, then a straight line down to 0 at total_steps."""

    def __init__(self, total_steps: int, warmup_steps: int, decay_steps: int) -> None:
        super().__init__(total_steps, warmup_steps)
        self.decay_steps = decay_steps

    def after_warmup(self, step: int) -> float:
        return max(0.0, min(1.0, (self.total_steps - step) / self.decay_steps))


def _check_steps(total_steps: int, warmup_steps: int, power: float) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")


def build_lr_scheduler(optimizer: Optimizer, kind: str, total_steps: int, warmup_steps: int, power: float = 0.9,
                       div_factor: float = 25.0, final_div_factor: float = 1000.0) -> LRScheduler:
    """A scheduler to step once per iteration over `total_steps` iterations, starting from each param group's lr.

    kind "poly": LambdaLR with PolyWithWarmup(total_steps, warmup_steps, power).
    kind "wsd": LambdaLR with WarmupStableDecay, decaying over the last WSD_DECAY_FRACTION of the steps (at least
    one step, and never into the warm-up).
    kind "onecycle": OneCycleLR peaking at the group's lr after warmup_steps (5% of the run when warmup_steps
    is 0), starting at lr / div_factor and ending at lr / (div_factor * final_div_factor); momentum is not cycled.
    """
    _check_steps(total_steps, warmup_steps, power)
    if kind == "poly":
        return LambdaLR(optimizer, PolyWithWarmup(total_steps, warmup_steps, power))
    if kind == "wsd":
        decay_steps = min(max(1, round(WSD_DECAY_FRACTION * total_steps)), total_steps - warmup_steps)
        return LambdaLR(optimizer, WarmupStableDecay(total_steps, warmup_steps, decay_steps))
    if kind == "onecycle":
        pct_start = warmup_steps / total_steps if warmup_steps > 0 else DEFAULT_ONECYCLE_PCT_START
        if math.isclose(pct_start * total_steps, 1.0):
            raise ValueError(f"onecycle cannot warm up over exactly 1 step (torch's OneCycleLR divides by zero; "
                             f"total_steps={total_steps}, warmup_steps={warmup_steps}); use a warm-up of >= 2 steps")
        # a group that already went through OneCycleLR (optimiser state loaded first) keeps its peak in "max_lr"
        max_lrs = [group.get("max_lr", group["lr"]) for group in optimizer.param_groups]
        # cycle_momentum=False: with Adam-style optimisers OneCycleLR cycles betas[0], i.e. LAMB's beta1 would
        # swing between 0.85 and 0.95 instead of staying at the configured value
        return OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps, pct_start=pct_start,
                          anneal_strategy="cos", div_factor=div_factor, final_div_factor=final_div_factor,
                          cycle_momentum=False)
    raise ValueError(f"unknown lr schedule {kind!r}; options: {', '.join(LR_SCHEDULES)}")
