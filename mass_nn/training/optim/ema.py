"""An exponential moving average (EMA) of a model's weights, updated after every optimiser step.

MASS validates with, and releases, the EMA weights (decay 0.99 per step). Float parameters and float buffers
(e.g. norm running statistics) are averaged; other buffers (integer counters) are copied.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel (`.module`) or torch.compile
    (`._orig_mod`) wrappers, so EMA keys never carry a wrapper prefix."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _paired_tensors(ema: nn.Module, model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """(ema tensor, model tensor) for every parameter and buffer, matched by name."""
    ema_tensors = dict(ema.named_parameters())
    ema_tensors.update(ema.named_buffers())
    model_tensors = dict(model.named_parameters())
    model_tensors.update(model.named_buffers())
    if ema_tensors.keys() != model_tensors.keys():
        missing = sorted(ema_tensors.keys() ^ model_tensors.keys())[:5]
        raise ValueError(f"model does not match the EMA copy; differing tensors include {missing}")
    return [(ema_tensors[name], model_tensors[name]) for name in ema_tensors]


class ModelEMA:
    """Keeps `self.module`, a frozen eval-mode copy of the model whose weights follow
    ema = decay * ema + (1 - decay) * weights at each update()."""

    def __init__(self, model: nn.Module, decay: float = 0.99, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        # warm-up: decay min(decay, (1 + n) / (10 + n)) at update n, so that a run of a few dozen steps (few-shot
        # finetuning on CPU) is not validated with weights that have barely moved from the initial ones
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
            param.grad = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the EMA weights towards `model`'s current ones (a DDP/compiled wrapper is unwrapped)."""
        averaged_ema, averaged_model = [], []
        for ema_tensor, tensor in _paired_tensors(self.module, unwrap_model(model)):
            if ema_tensor.is_floating_point():
                averaged_ema.append(ema_tensor)
                averaged_model.append(tensor.detach().to(device=ema_tensor.device, dtype=ema_tensor.dtype))
            else:
                ema_tensor.copy_(tensor)
        decay = self.current_decay()
        if averaged_ema:
            # decay·ema + (1 - decay)·model as one multi-tensor interpolation: one pass over the EMA weights
            torch._foreach_lerp_(averaged_ema, averaged_model, 1.0 - decay)
        self.num_updates += 1

    def current_decay(self) -> float:
        """The decay the next update() applies."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    def state_dict(self) -> dict[str, Any]:
        """{"module": the EMA model's state dict, "num_updates": int}; loadable with weights_only=True."""
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what state_dict() returned (strict key matching); the decay stays the constructor's."""
        self.module.load_state_dict(state_dict["module"])
        self.num_updates = int(state_dict["num_updates"])
