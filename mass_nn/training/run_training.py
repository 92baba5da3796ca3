"""The library entry point of mass_train: pick the trainer by name, check its mode, run it."""
from __future__ import annotations

from mass_nn.errors import MassError
from mass_nn.paths import MassPaths
from mass_nn.registry import TRAINERS
from mass_nn.training.distributed import shutdown_distributed
from mass_nn.training.options import TrainingOptions


def run_training(options: TrainingOptions, paths: MassPaths) -> dict:
    """Train with `options`; returns the trainer's summary (output folder, epochs, steps, best metric)."""
    trainer_class = TRAINERS.get(options.trainer)
    if trainer_class.mode != options.mode:
        same_mode = [n for n in TRAINERS.names() if TRAINERS.get(n).mode == options.mode]
        raise MassError(f"trainer {options.trainer!r} is a {trainer_class.mode} trainer, not {options.mode}; "
                        f"{options.mode} trainers: {', '.join(same_mode) or 'none yet'}")
    trainer = trainer_class(options, paths)
    try:
        return trainer.run()
    finally:
        shutdown_distributed()
