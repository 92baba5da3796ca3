"""Checkpoints: everything needed to rebuild, reuse and resume a model, loadable without arbitrary pickles.

A checkpoint is a dict of tensors and plain containers saved with torch.save and read back with
`weights_only=True`. Its descriptive part (trainer, network class and configuration, plans, configuration name,
encoder key prefix, progress, channel layouts trained on) is one JSON string, so it can be inspected with any
tool and never runs code.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mass_nn import __version__
from mass_nn.errors import MassError
from mass_nn.io.atomic import atomic_path
from mass_nn.networks.build import build_network

CHECKPOINT_FORMAT = "mass_nn.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


@dataclass
class CheckpointMeta:
    """The JSON part of a checkpoint."""

    trainer: str
    network_class: str  # name in mass_nn.registry.NETWORKS
    network_config: dict
    plans: dict
    configuration: str
    encoder_key_prefix: str
    epoch: int  # epochs fully finished
    global_step: int  # optimiser steps taken
    run_config: dict = field(default_factory=dict)
    best_metric: float | None = None
    mass_nn_version: str = __version__
    # the (modality, normalization) of each channel, for every dataset the run trained on (all pooled datasets of
    # a pretraining run); empty in checkpoints written before it existed: read them with meta.plans' channels
    trained_channel_layouts: list[list[dict]] = field(default_factory=list)


@dataclass
class Checkpoint:
    """A loaded checkpoint: metadata plus the state dicts that were saved (None when absent)."""

    meta: CheckpointMeta
    model: dict
    ema: dict | None = None
    optimizer: dict | None = None
    scheduler: dict | None = None
    trainer_state: dict = field(default_factory=dict)  # e.g. RNG states, stopped mid-epoch


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write atomically: a crash while saving leaves the previous file intact."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
               "meta_json": json.dumps(checkpoint.meta.__dict__), "model": checkpoint.model,
               "ema": checkpoint.ema, "optimizer": checkpoint.optimizer, "scheduler": checkpoint.scheduler,
               "trainer_state": checkpoint.trainer_state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint; a missing, truncated or foreign file raises MassError naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise MassError(f"{path}: checkpoint not found; check the path (run folders hold checkpoint_latest.pt, "
                        f"checkpoint_best.pt and checkpoint_final.pt)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise MassError(f"{path}: checkpoint cannot be read ({type(err).__name__}: {str(err)[:200]}); the file is "
                        f"truncated or not a mass_nn checkpoint - use another checkpoint of the run "
                        f"(checkpoint_best.pt / checkpoint_final.pt) or train again") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise MassError(f"{path}: not a mass_nn checkpoint (no '{CHECKPOINT_FORMAT}' marker); checkpoints of other "
                        f"tools must be converted first")
    if payload.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise MassError(f"{path}: checkpoint format version {payload.get('format_version')}, this mass_nn reads "
                        f"{CHECKPOINT_FORMAT_VERSION}; use the mass_nn version that wrote it")
    meta = CheckpointMeta(**json.loads(payload["meta_json"]))
    return Checkpoint(meta=meta, model=payload["model"], ema=payload.get("ema"), optimizer=payload.get("optimizer"),
                      scheduler=payload.get("scheduler"), trainer_state=payload.get("trainer_state") or {})


def model_state_dict(checkpoint: Checkpoint, prefer_ema: bool = True) -> dict:
    """The network weights: the EMA copy when the checkpoint has one and it is preferred."""
    return checkpoint.ema["module"] if prefer_ema and checkpoint.ema is not None else checkpoint.model


def encoder_state_dict(checkpoint: Checkpoint, prefer_ema: bool = True) -> dict:
    """The encoder's weights (EMA when saved and preferred) with the encoder key prefix removed."""
    state = model_state_dict(checkpoint, prefer_ema)
    prefix = checkpoint.meta.encoder_key_prefix
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def network_of(checkpoint: Checkpoint, prefer_ema: bool = True):
    """The checkpoint's network in eval mode with its weights (the EMA copy when saved and preferred)."""
    network = build_network(checkpoint.meta.network_class, checkpoint.meta.network_config)
    network.load_state_dict(model_state_dict(checkpoint, prefer_ema))
    return network.eval()


def load_network(path: str | Path, prefer_ema: bool = True, map_location: str | torch.device = "cpu"):
    """(network in eval mode with the checkpoint's weights - the EMA copy when saved and preferred -, checkpoint)."""
    checkpoint = load_checkpoint(path, map_location=map_location)
    return network_of(checkpoint, prefer_ema), checkpoint


def save_untrained_copy(path: str | Path, target: str | Path, seed: int = 0) -> Path:
    """Write to `target` a checkpoint of the same network and plans as `path`, freshly initialised with `seed`
    (no optimiser state, epoch 0): the "untrained" baseline of a comparison."""
    checkpoint = load_checkpoint(path)
    torch.manual_seed(seed)
    network = build_network(checkpoint.meta.network_class, checkpoint.meta.network_config)
    meta = replace(checkpoint.meta, epoch=0, global_step=0, best_metric=None)
    save_checkpoint(Checkpoint(meta=meta, model=network.state_dict()), target)
    return Path(target)
