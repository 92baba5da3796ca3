"""Starting a downstream run from a pretrained checkpoint: plan compatibility first, then a weight transfer that
reports exactly which keys were loaded, which were missing and which were unexpected."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mass_nn.errors import MassError
from mass_nn.model.checkpoint import Checkpoint, load_checkpoint
from mass_nn.planning.plans import Plans
from mass_nn.planning.plans_compatibility import channel_layout, pooled_model_differences

logger = logging.getLogger(__name__)


def checkpoint_channel_layouts(checkpoint: Checkpoint) -> list[list[dict]]:
    """The channel layouts the checkpoint was trained on; for checkpoints that predate the record, the layout of
    the plans saved in it."""
    return checkpoint.meta.trained_channel_layouts or [channel_layout(Plans.from_dict(checkpoint.meta.plans))]


def load_pretrained_checkpoint(path: str | Path, plans: Plans, configuration: str, dataset_name: str) -> Checkpoint:
    """The checkpoint at `path`, after checking that it fits `plans`/`configuration` of `dataset_name`: same
    target spacing and channel count as the checkpoint's plans, and a channel layout (modality and normalisation
    scheme per channel; names are not compared) that is one of the layouts the checkpoint was trained on. A
    mismatch names every difference and the fix."""
    checkpoint = load_checkpoint(path)
    differences = pooled_model_differences(Plans.from_dict(checkpoint.meta.plans), checkpoint.meta.configuration,
                                           checkpoint_channel_layouts(checkpoint), plans, configuration)
    if differences:
        raise MassError(f"{path}: the checkpoint was trained with plans ({checkpoint.meta.configuration}) that do not "
                        f"fit {dataset_name} ({configuration}); checkpoint vs dataset:\n  " + "\n  ".join(differences)
                        + f"\nre-plan {dataset_name} with the checkpoint's target spacing and channel count, or use "
                          f"a checkpoint pretrained on data with {dataset_name}'s channel modalities")
    return checkpoint


@dataclass
class WeightTransfer:
    """What happened to each key when weights were loaded into a module."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the module, not in the weights: left as initialised
    unexpected: list[str] = field(default_factory=list)  # in the weights, not in the module: ignored
    mismatched: list[str] = field(default_factory=list)  # in both with different shapes: an error

    def summary(self) -> str:
        return (f"{len(self.loaded)} loaded, {len(self.missing)} missing (kept initialised), "
                f"{len(self.unexpected)} unexpected (ignored), {len(self.mismatched)} with other shapes")

    def to_dict(self) -> dict:
        return {"loaded": len(self.loaded), "missing": self.missing, "unexpected": self.unexpected,
                "mismatched": self.mismatched}


def transfer_weights(module: nn.Module, weights: dict[str, torch.Tensor], source: str,
                     allow_missing: bool = True, allow_unexpected: bool = True) -> WeightTransfer:
    """Copy every entry of `weights` whose key and shape match a parameter or buffer of `module`.

    Shape mismatches always raise; missing or unexpected keys raise unless allowed. `source` names the file in
    the messages.
    """
    own = module.state_dict()
    report = WeightTransfer()
    for key, value in weights.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append(f"{key}: {list(value.shape)} in the weights, {list(own[key].shape)} here")
        else:
            report.loaded.append(key)
    report.missing = [key for key in own if key not in weights]
    problems = [("with other shapes", report.mismatched, False),
                ("missing from the weights", report.missing, allow_missing),
                ("unexpected in the weights", report.unexpected, allow_unexpected)]
    for what, keys, allowed in problems:
        if keys and not allowed:
            listed = "\n  ".join(keys[:10]) + ("\n  ..." if len(keys) > 10 else "")
            raise MassError(f"{source}: {len(keys)} key(s) {what} for {type(module).__name__}:\n  {listed}\nthe "
                            f"checkpoint was made for another network configuration; use a matching checkpoint")
    module.load_state_dict({key: weights[key] for key in report.loaded}, strict=False)
    logger.info("weights from %s: %s", source, report.summary())
    return report
