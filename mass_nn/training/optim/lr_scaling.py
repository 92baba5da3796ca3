"""Learning rate and global batch: a trainer's default lr holds for the global batch it was set for, and other
global batches scale it by a stated rule.

The paper's MASS lr (2e-3 with LAMB) is for a global batch of 32 (8 processes x 4). LAMB normalises each layer's
update by its weight norm, and its authors scale the lr with the square root of the batch (You et al., ICLR 2020),
so "sqrt" is the default: lr = base_lr * sqrt(global_batch / reference_batch). "linear" (Goyal et al., 2017) is
the SGD rule; "none" keeps the base lr at any batch. An lr given on the command line is used as it is.
"""
from __future__ import annotations

import math

from mass_nn.errors import MassError

LR_SCALING_RULES = ("sqrt", "linear", "none")


def scaled_learning_rate(base_lr: float, global_batch: int, reference_batch: int | None, rule: str) -> float:
    """`base_lr` (set for `reference_batch`) at `global_batch` under `rule`; unchanged without a reference."""
    if rule not in LR_SCALING_RULES:
        raise MassError(f"--lr-scaling {rule!r}: choose one of {', '.join(LR_SCALING_RULES)}")
    if global_batch < 1:
        raise MassError(f"the global batch must be at least 1 (got {global_batch})")
    if reference_batch is None or rule == "none":
        return float(base_lr)
    ratio = global_batch / reference_batch
    return float(base_lr * (math.sqrt(ratio) if rule == "sqrt" else ratio))
