"""LAMB (layer-wise adaptive moments) as configured for MASS pretraining.

Per parameter tensor w with gradient g:
    m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2            (no bias correction)
    u = m / (sqrt(v) + eps) + weight_decay * w
    trust = min(||w||, max_weight_norm) / ||u||                  (1 when either norm is 0)
    w = w - lr * trust * u
The trust ratio makes each tensor's step proportional to its own size, which keeps large-batch training stable.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


def _check_hyperparameters(lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                           max_weight_norm: float) -> None:
    if lr < 0:
        raise ValueError(f"learning rate must be >= 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"betas must be two values in [0, 1), got {betas}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if max_weight_norm <= 0:
        raise ValueError(f"max_weight_norm must be > 0, got {max_weight_norm}")


class Lamb(Optimizer):
    """LAMB without bias correction; weight decay is added to the Adam direction before the trust ratio.

    Per-parameter state is `exp_avg`, `exp_avg_sq` and an integer `step`, so state_dict()/load_state_dict()
    round-trip exactly (and load with torch.load(weights_only=True)).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 1e-5,
                 max_weight_norm: float = 10.0) -> None:
        _check_hyperparameters(lr, tuple(betas), eps, weight_decay, max_weight_norm)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        max_weight_norm=max_weight_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; returns the closure's loss when one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                self._update_parameter(param, group)
        return loss

    def _update_parameter(self, param: Tensor, group: dict) -> None:
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        grad, exp_avg, exp_avg_sq = param.grad, state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)

        update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
        if group["weight_decay"] != 0:
            update.add_(param, alpha=group["weight_decay"])
        weight_norm = param.norm().clamp(0.0, group["max_weight_norm"])
        update_norm = update.norm()
        # tensor ops rather than .item() keep the step free of host-device synchronisation
        usable = (weight_norm > 0) & (update_norm > 0)
        trust_ratio = torch.where(usable, weight_norm / torch.where(usable, update_norm, 1.0), 1.0)
        param.sub_(update.mul_(trust_ratio * group["lr"]))
