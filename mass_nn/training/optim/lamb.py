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
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lamb does not support sparse gradients")
            if params:
                self._update_group(params, group)
        return loss

    def _update_group(self, params: list[Tensor], group: dict) -> None:
        """The update of one parameter group, as multi-tensor (`torch._foreach_*`) operations: the same
        arithmetic as a loop over tensors, but a few kernel launches per step instead of a dozen per tensor
        (the in-context network has about 200 tensors, many of them tiny)."""
        beta1, beta2 = group["betas"]
        for param in params:
            state = self.state[param]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["step"] += 1
        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        # m + (1 - b1)(g - m) = b1 m + (1 - b1) g in one pass over m instead of two
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)

        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denominators, group["eps"])
        updates = torch._foreach_div(exp_avgs, denominators)
        if group["weight_decay"] != 0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        weight_norms = torch.stack(torch._foreach_norm(params)).clamp(0.0, group["max_weight_norm"])
        update_norms = torch.stack(torch._foreach_norm(updates))
        # tensor ops rather than .item() keep the step free of host-device synchronisation
        usable = (weight_norms > 0) & (update_norms > 0)
        trust_ratios = torch.where(usable, weight_norms / torch.where(usable, update_norms, 1.0), 1.0)
        # w - lr·trust·u in one pass: each 0-dim step size broadcasts over its tensor
        torch._foreach_addcmul_(params, updates, list((trust_ratios * -group["lr"]).unbind()))
